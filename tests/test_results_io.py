"""benchmarks/results_io.py: a result file is whole or absent."""

import json
from pathlib import Path

import pytest

from benchmarks.results_io import write_result


def test_result_is_written_whole(tmp_path):
    path = write_result("demo", "recipes/x.toml", {"a": 1}, {"m": 2.0}, out_dir=tmp_path)
    record = json.loads(path.read_text())
    assert record["config"] == {"a": 1} and record["metrics"] == {"m": 2.0} and record["benchmark"] == "demo"
    assert [p.name for p in (tmp_path / "demo").iterdir()] == [path.name]


def test_interrupted_write_leaves_no_result(tmp_path, monkeypatch):
    def half_then_fail(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError):
        write_result("demo", "recipes/x.toml", {"a": 1}, {"m": 2.0}, out_dir=tmp_path)
    assert not list((tmp_path / "demo").glob("*.json"))
