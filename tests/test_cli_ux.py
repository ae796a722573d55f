"""The command line as a person meets it: pipelines in `imdm check`, help with examples and the
packaged names, readable samples, progress on stderr, where files went, and their permissions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imdm.cli import build_parser, main
from imdm.recipe.loader import tomllib
from imdm.sample_output import format_samples

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))
PIPELINES = sorted(p.stem for p in (REPO / "recipes" / "pipelines").glob("*.toml"))


def _imdm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "imdm", *args], capture_output=True, text=True, cwd=cwd)


TWO_STAGES = """
[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=base", "algorithm.name=mdlm"]
[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=student", "init.from_run=base"]
"""


def test_check_takes_a_pipeline_and_checks_every_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "two.toml"
    path.write_text(TWO_STAGES)
    assert main(["check", str(path), "train.steps=30"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok (pipeline of 2 stages, runs under runs)" in out
    assert "stage 1/2 train base: mdlm, model synthetic" in out and "stage 2/2 train student: imdm," in out
    assert "30 steps" in out
    path.write_text(TWO_STAGES.replace('"run.name=base"', '"run.name=base", "train.stpes=3"')
                    .replace('"run.name=student"', '"run.name=student", "optimizer.lr=-1"'))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stage[0] (builtin:quickstart): train.stpes: unknown key; did you mean 'train.steps'?" in err
    assert "stage[1] (builtin:quickstart): optimizer.lr: must be > 0.0" in err     # the second stage too


def test_check_of_a_packaged_pipeline_lists_its_stages(capsys):
    stages = tomllib.loads((REPO / "recipes" / "pipelines" / "quickstart.toml").read_text())["stage"]
    assert main(["check", "builtin:pipelines/quickstart"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  stage ")]
    n = len(stages)
    assert [line.split()[1:3] for line in lines] == [[f"{i}/{n}", s.get("command", "train")]
                                                     for i, s in enumerate(stages, 1)]


@pytest.mark.parametrize("command", ["check", "pipeline"])
def test_an_unknown_packaged_pipeline_lists_pipeline_names(command, capsys):
    assert main([command, "builtin:pipelines/quickstrat"]) == 2
    err = capsys.readouterr().err
    assert "no packaged pipeline 'quickstrat'; did you mean 'quickstart'?" in err
    known = err.split("(known: ")[1].rstrip().rstrip(")").split(", ")
    assert known == PIPELINES and "lm1b_couplings" not in err


def _subcommands() -> dict:
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_help_describes_each_argument_and_shows_an_example(command, capsys):
    parser = _subcommands()[command]
    for action in parser._actions:
        assert action.help and "\n" not in action.help, f"imdm {command}: {action.dest} has no one-line help"
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    examples = text.split("examples:\n")[1].split("\n\n")[0].splitlines()
    assert examples and all(f" imdm {command}" in line or f"-m imdm {command}" in line for line in examples)
    if command in ("check", "train", "couplings", "pipeline"):
        listed = " ".join(text.split("packaged recipes (builtin:NAME):")[1].split())
        recipes, pipelines = listed.split(" packaged pipelines (builtin:pipelines/NAME): ")
        assert recipes.split(", ") == RECIPES and pipelines.split(", ") == PIPELINES


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"imdm {version}"


PAYLOAD = {"run_dir": "runs/x", "step": 40, "steps": 4, "nfe": 3, "samples": [[5, 5, 5], [1, 2, 1], [7, 7, 7],
                                                                            [5, 5, 5]]}


def test_synthetic_samples_show_as_compact_rows_with_their_validity():
    lines = format_samples(PAYLOAD, "text", synthetic=True).splitlines()
    assert lines[0] == "runs/x (checkpoint step 40): 4 samples, 4 steps, 3 network calls"
    assert lines[1:5] == ["   1  valid    5 5 5", "   2  invalid  1 2 1", "   3  valid    7 7 7",
                          "   4  valid    5 5 5"]
    assert lines[5] == "valid (all tokens equal): 3 of 4, 2 distinct tokens among them"


def test_text_samples_show_as_one_block_each_and_jsonl_as_one_line_each():
    payload = {**PAYLOAD, "samples": PAYLOAD["samples"][:2], "text": ["the cat\nsat", "a dog"], "prefix": [0, 9]}
    text = format_samples(payload, "text", synthetic=False)
    assert text.split("\n", 1)[1] == "--- sample 1 of 2 ---\nthe cat\nsat\n\n--- sample 2 of 2 ---\na dog\n"
    assert "continuing a prompt of 2 tokens" in text.split("\n", 1)[0]
    records = [json.loads(line) for line in format_samples(payload, "jsonl", synthetic=False).splitlines()]
    assert [(r["index"], r["tokens"], r["text"]) for r in records] == [(0, [5, 5, 5], "the cat\nsat"),
                                                                       (1, [1, 2, 1], "a dog")]
    assert all(r["prefix"] == [0, 9] and r["steps"] == 4 and "samples" not in r for r in records)
    assert json.loads(format_samples(payload, "json", synthetic=False)) == payload


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ux")
    result = _imdm("train", "builtin:quickstart", "train.steps=2", "schedule.warmup_steps=1", "run.name=tiny",
                   "model.size=custom", "model.d_model=32", "model.n_blocks=1", "model.n_heads=2",
                   "logging.progress=false", f"run.output_dir={root / 'runs'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, root / "runs" / "tiny"


@pytest.mark.timeout(300)
def test_sample_prints_a_readable_view_by_default_and_json_on_request(tiny_run):
    root, run = tiny_run
    shown = _imdm("sample", str(run), "logging.progress=true", "--steps", "2", "--num-samples", "3", cwd=root)
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"{run} (checkpoint step 2): 3 samples, 2 steps")
    assert len(lines) == 5 and lines[-1].startswith("valid (all tokens equal): ")
    assert "sampling 3 x 2 steps" in shown.stderr                         # progress, on stderr
    as_json = _imdm("sample", str(run), "sampling.batch=2", "--steps", "2", "--num-samples", "3",
                    "--format", "json", cwd=root)
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    assert "sampling 3 x" not in as_json.stderr                          # the run's logging.progress=false
    samples = json.loads(as_json.stdout)["samples"]
    rows = [line.split()[2:] for line in lines[1:4]]
    assert [[str(t) for t in s] for s in samples] == rows                # batches of 2 draw the same samples
    assert [line.split()[1] for line in lines[1:4]] == ["valid" if len(set(s)) == 1 else "invalid"
                                                       for s in samples]


@pytest.mark.timeout(300)
def test_eval_says_where_it_wrote_its_file(tiny_run):
    root, run = tiny_run
    ev = _imdm("eval", str(run), "sampling.steps=[1]", "sampling.num_samples=8", "sampling.batch=8", cwd=root)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"wrote {run / 'eval.json'}" in ev.stderr and (run / "eval.json").is_file()


def _store(tmp_path, progress):
    from imdm.data.token_store import StoreKey, build_store
    key = StoreKey("chars", "h", f"s{int(progress)}", "train", "line", "none", "wrap", 4)
    return build_store(tmp_path, key, lambda: ["abcdef", "ghijkl", "mnop"], lambda b: [[ord(c) for c in d] for d in b],
                       lambda d: d, {"bos": 1, "eos": 2, "pad": 0}, 256, batch_docs=2, progress=progress)


def test_token_store_building_counts_documents_on_stderr(tmp_path, capsys):
    _store(tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "token store s1 (train)" in err and "3doc" in err and "16 tokens" in err    # 6 + 6 + 4 characters
    _store(tmp_path, progress=False)
    assert capsys.readouterr().err == ""


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_an_export_gets_the_users_permissions_not_owner_only(tiny_run, tmp_path, umask_022):
    from imdm.tools.atomic_folder import atomic_folder
    from imdm.tools.export_run import export_run
    out = export_run(tiny_run[1], tmp_path / "exported")
    assert (out.stat().st_mode & 0o777) == 0o755                     # 0o777 less the umask 0o022
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "model.safetensors": 0o644, "config.json": 0o644, "recipe.toml": 0o644}
    os.umask(0o027)
    with atomic_folder(tmp_path / "imported") as staging:
        (staging / "f").write_text("x")
    assert ((tmp_path / "imported").stat().st_mode & 0o777) == 0o750


def test_gitignore_covers_the_folders_the_commands_write_by_default(repo_root):
    from imdm.recipe import Recipe
    if not (Path(repo_root) / ".git").exists():
        pytest.skip("not a git checkout")
    quickstart_dir = next(a.default for a in _subcommands()["quickstart"]._actions if a.dest == "output_dir")
    readme_export = "exported"      # the README's export_run example
    folders = {Recipe().run.output_dir, quickstart_dir, Recipe().data.store_dir, readme_export}
    paths = [f"{folder}/some-run/file" for folder in sorted(folders)]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=repo_root, capture_output=True,
                             text=True).stdout.split()
    assert ignored == paths
    tracked = subprocess.run(["git", "ls-files", *sorted(folders)], cwd=repo_root, capture_output=True, text=True)
    assert tracked.stdout == ""


def test_quickstart_numbers_its_phases_and_reports_a_failed_stage_without_a_traceback(tmp_path):
    result = _imdm("quickstart", "--output-dir", str(tmp_path / "qs"), "data.num_sequences=8", "logging.progress=false",
                   cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("quickstart: 4 stages (train quickstart-mdlm, train quickstart-imdm, couplings "
                               "quickstart-couplings, train quickstart-imredi)")
    assert lines[1].startswith("[1/7 0:") and lines[1].endswith("] stage 1/4 train quickstart-mdlm: running "
                                                                 "(builtin:quickstart)")
    assert "stopped at stage 1/4 train quickstart-mdlm: ValueError: the dataset has 8 sequences" in result.stderr
