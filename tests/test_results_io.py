"""benchmarks/results_io.py: a result file is whole or absent."""

import json
from pathlib import Path

import pytest

from benchmarks.results_io import short_device, write_result


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


@pytest.mark.parametrize("name, short", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                         ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                         ("NVIDIA RTX A6000", "rtxa6000"), ("NVIDIA L40S", "l40s"),
                                         ("AMD Instinct MI300X", "mi300x"), ("CPU x86_64 x2 threads", "cpu")])
def test_short_device_names_any_card(name, short):
    assert short_device(name) == short


def test_record_holds_the_design_keys(tmp_path):
    record = json.loads(write_result("demo", "", {}, {}, world_size=2, out_dir=tmp_path).read_text())
    for key in ("benchmark", "device", "world_size", "torch", "triton", "git_sha", "git_dirty", "recipe", "config",
                "metrics"):
        assert key in record
    assert record["world_size"] == 2
