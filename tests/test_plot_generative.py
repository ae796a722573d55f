"""`imdm plot`: the data behind each line of the two panels, read from hand-made eval.json
files, the log axes, the human reference, the written files, and the errors (exit status 2)."""

import json
import sys

import pytest

pytest.importorskip("matplotlib")

from imdm.cli import main  # noqa: E402
from imdm.tools.plot_generative import generative_figure  # noqa: E402


def _row(steps, temperature, gen_ppl, entropy):
    return {"steps": steps, "nfe": float(steps), "temperature": temperature, "gen_ppl": gen_ppl, "entropy": entropy,
            "num_samples": 8, "tokens": 512, "tc_nats": None}


def _run(tmp_path, name, method, rows, human=None):
    run = tmp_path / name
    run.mkdir()
    report = {"run_dir": str(run), "step": 100, "method": method, "judge": "gpt2-large", "rows": rows,
              "human": human, "zero_shot": [], "mauve": None}
    (run / "eval.json").write_text(json.dumps(report))
    return run


HUMAN = {"gen_ppl": 40.0, "entropy": 5.6, "num_samples": 8}


@pytest.fixture
def two_runs(tmp_path):
    # written out of order: the plot sorts by steps and by temperature
    mdlm = _run(tmp_path, "run-a", "mdlm", [_row(16, 1.0, 100.0, 5.3), _row(1, 1.0, 900.0, 5.5),
                                             _row(4, 1.0, 300.0, 5.4), _row(16, 0.9, 80.0, 5.2),
                                             _row(16, 0.8, 60.0, 5.0), _row(4, 0.8, 200.0, 5.1)], HUMAN)
    imdm = _run(tmp_path, "run-b", "imdm", [_row(16, 0.9, 90.0, 5.0), _row(1, 0.9, 500.0, 5.1)], HUMAN)
    return mdlm, imdm


def _data(line):
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def test_steps_panel_has_a_line_per_run_at_temperature_one_and_the_human_level(two_runs):
    left, _ = generative_figure(list(two_runs)).axes
    mdlm, imdm, human = left.get_lines()
    assert _data(mdlm) == ([1, 4, 16], [900, 300, 100])         # temperature 1 only
    assert _data(imdm) == ([1, 16], [500, 90])                  # the run's only temperature, 0.9
    assert human.get_linestyle() == "--" and set(_data(human)[1]) == {40.0}
    assert (mdlm.get_label(), imdm.get_label(), human.get_label()) == ("mdlm", "imdm", "human")
    assert left.get_xscale() == "log" and left.get_yscale() == "log"


def test_frontier_panel_follows_temperatures_at_the_largest_step_count(two_runs):
    left, right = generative_figure(list(two_runs)).axes
    mdlm, imdm, human = right.get_lines()
    assert _data(mdlm) == ([5.0, 5.2, 5.3], [60, 80, 100])      # T 0.8, 0.9, 1 at 16 steps; 4 steps left out
    assert _data(imdm) == ([5.0], [90])
    assert _data(human) == ([5.6], [40]) and human.get_marker() == "*"
    assert mdlm.get_label() == "mdlm (16 steps)" and right.get_yscale() == "log" and right.get_xscale() == "linear"
    assert [line.get_color() for line in (mdlm, imdm)] == [line.get_color() for line in left.get_lines()[:2]]
    assert mdlm.get_color() != imdm.get_color()


def test_shared_methods_fall_back_to_directory_names_and_distinct_humans_are_drawn_apart(tmp_path):
    a = _run(tmp_path, "mdlm-small", "mdlm", [_row(1, 1.0, 50.0, 5.0)], HUMAN)
    b = _run(tmp_path, "mdlm-large", "mdlm", [_row(1, 1.0, 40.0, 5.0)], {**HUMAN, "gen_ppl": 30.0})
    c = _run(tmp_path, "no-human", "", [_row(2, 1.0, 45.0, 5.0)])
    left, _ = generative_figure([a, b, c]).axes
    labels = [line.get_label() for line in left.get_lines()]
    assert labels == ["mdlm-small", "mdlm-large", "no-human", "human (mdlm-small)", "human (mdlm-large)"]


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_cli_writes_the_figure(two_runs, tmp_path, capsys, suffix, magic):
    out = tmp_path / f"gen{suffix}"
    assert main(["plot", *map(str, two_runs), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(magic) and capsys.readouterr().out.strip() == str(out)
    assert main(["plot", *map(str, two_runs), "--out", str(tmp_path / "missing" / f"gen{suffix}")]) == 2
    assert "--out" in capsys.readouterr().err        # a folder that does not exist is refused before drawing


def _error(args, capsys):
    assert main(["plot", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_errors_name_the_run_and_exit_2(two_runs, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    empty = tmp_path / "never-evaluated"
    empty.mkdir()
    assert f"{empty}: no eval.json" in _error([two_runs[0], empty, "--out", out], capsys)
    synthetic = tmp_path / "synthetic"
    synthetic.mkdir()
    (synthetic / "eval.json").write_text(json.dumps({"step": 5, "rows": [{"method": "mdlm", "steps": 1,
                                                                           "validity": 0.9}]}))
    assert f"{synthetic}: eval.json has no text rows" in _error([synthetic, "--out", out], capsys)
    cold = _run(tmp_path, "cold", "mdlm", [_row(1, 0.8, 50.0, 5.0), _row(1, 0.9, 60.0, 5.1)])
    assert f"{cold}: no temperature-1 rows" in _error([cold, "--out", out], capsys)
    assert "give a .png or .svg file" in _error([two_runs[0], "--out", str(tmp_path / "x.pdf")], capsys)
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_says_how_to_install_it(two_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert "pip install 'imdm[eval]'" in _error([two_runs[0], "--out", str(tmp_path / "x.png")], capsys)
