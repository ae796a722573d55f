"""Every benchmark runs as `python -m benchmarks.NAME` (--help anywhere; a GPU-only one exits 2
with a clear message where there is no GPU); benchmarks.suite's plans and table lines;
benchmarks.prune_results keeps the newest code's result per benchmark, card and configuration."""

import json
import pkgutil
import runpy
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks import prune_results, suite

REPO = Path(__file__).resolve().parent.parent
HELPERS = {"gpu_timing", "results_io", "stage_scheduler"}
MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in HELPERS)
GPU_ONLY = ["block_breakdown", "cublaslt_epilogues", "gelu_mlp", "generative_eval", "kernel_masked_loss", "kernel_masking",
            "kernel_residual_norm", "kernel_sampler", "sampling_latency", "weight_copies_identity",
            "wgrad_accumulation"]


def _run_module(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    return exit_.value.code


def test_suite_help_runs_as_a_module_from_the_repository_root():
    done = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kernels" in done.stdout and "scaling" in done.stdout


RERUN = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")   # runpy of an imported module


@RERUN
@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_parses_help(name, monkeypatch, capsys):
    assert _run_module(name, ["--help"], monkeypatch) in (0, None)
    assert "usage" in capsys.readouterr().out


@RERUN
@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_benchmarks_say_so_without_a_gpu(name, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _run_module(name, [], monkeypatch) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_no_benchmark_edits_sys_path():
    for path in (REPO / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text and "noqa: E402" not in text, path.name


def _opts(**kw):
    base = dict(results_dir="/r", quick=False, data="synthetic", cache_dir="/c", models="small,large",
                algorithm="imdm", set=[], nproc=None)
    return Namespace(**{**base, **kw})


def test_suites_plan_their_benchmarks():
    kernels, _ = suite.plan("kernels", _opts(), gpus=1)
    assert [r.module.split(".")[1] for r in kernels] == ["kernel_masking", "kernel_masked_loss", "kernel_sampler",
                                                        "kernel_residual_norm", "kernel_residual_norm", "gelu_mlp"]
    assert all(r.args[:2] == ["--results-dir", "/r"] and r.nproc == 1 for r in kernels)
    sampling, _ = suite.plan("sampling", _opts(), gpus=1)
    assert [r.module for r in sampling] == ["benchmarks.sampling_latency", "benchmarks.kernel_sampler",
                                            "benchmarks.generative_eval"]
    train, notes = suite.plan("train", _opts(), gpus=8)
    assert [r.args[1] for r in train] == ["recipes/owt.toml", "recipes/owt_large.toml"] and train[0].nproc == 1
    assert "data.source=synthetic" in train[0].args and "synthetic" in notes[0]
    assert not any(a.startswith("train.global_batch") for a in train[0].args)   # the recipe's batch


def test_scaling_uses_every_gpu_and_skips_on_one():
    runs, notes = suite.plan("scaling", _opts(quick=True, models="small"), gpus=4)
    assert len(runs) == 1 and runs[0].nproc == 4 and "train.global_batch=128" in runs[0].args   # 32 per GPU
    assert runs[0].command()[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    runs, notes = suite.plan("scaling", _opts(), gpus=1)
    assert runs == [] and "skipped" in notes[0] and "2 GPUs" in notes[0]


def test_data_folder_missing(tmp_path):
    with pytest.raises(SystemExit, match="tokenizers/gpt2"):
        suite.data_overrides(str(tmp_path), "/c")
    corpus = tmp_path / "data"
    for pattern in suite.CORPUS_GLOBS:
        (corpus / pattern.replace("*", "x")).parent.mkdir(parents=True, exist_ok=True)
        (corpus / pattern.replace("*", "x")).write_text("text")
    (corpus / suite.TOKENIZER).mkdir(parents=True)
    overrides, line = suite.data_overrides(str(corpus), "/c")
    assert "data.source=local" in overrides and f"tokenizer.path={corpus / suite.TOKENIZER}" in overrides
    paths = json.loads(next(o for o in overrides if o.startswith("data.paths=")).split("=", 1)[1])
    assert paths[0] == str(corpus / suite.CORPUS_GLOBS[0])


@pytest.mark.parametrize("bench, metrics, expect", [
    ("train_throughput", {"tokens_per_s_per_gpu": 105148.0, "mfu": 0.563, "peak_mem_gib": 70.8,
                          "data_wait_share": 0.001}, "105,148 tokens/s/GPU"),
    ("kernel_masked_loss", {"fwd_bwd_ms": 7.52, "extra_mem_gib": 0.5, "baseline_fwd_bwd_ms": 32.5}, "7.52 ms"),
    ("kernel_sampler", {"step_ms": 1.061, "hbm_fraction": 0.32, "baseline_step_ms": 34.7}, "1.061 ms"),
    ("kernel_masking", {"ms": 0.0417, "hbm_fraction": 0.68, "baseline_compiled_ms": 0.05}, "41.7 us"),
    ("sampling_latency", {"seconds_per_batch": 0.052, "baseline_seconds_per_batch": 0.118}, "0.052 s"),
    ("gelu_mlp", {"large": {"epilogue_gelu": {"forward_backward_ms": 2.71},
                            "inductor_gelu": {"forward_backward_ms": 2.84}}}, "large 2.710 ms"),
    ("generative_eval", {"total_s": 171.26}, "whole protocol 171.3 s"),
    ("something_new", {"x_ms": 1.5, "rows": [1]}, "x_ms 1.5"),
])
def test_headline(bench, metrics, expect):
    assert expect in suite.headline({"benchmark": bench, "config": {"steps": 1}, "metrics": metrics})


def _result(folder, name, sha, device="NVIDIA H200", **config):
    path = folder / "train_throughput" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "train_throughput", "device": device, "world_size": 1, "git_sha": sha,
                                "recipe": "", "config": config, "metrics": {}}))
    return path


def test_prune_keeps_the_newest_code_per_model_and_card(tmp_path):
    ranks = {"b" * 40: 0, "a" * 40: 1}   # bbbbbbb is HEAD, aaaaaaa its parent
    new = _result(tmp_path, "20260101T000000Z-h200-bbbbbbbb.json", "b" * 8, model="small", label="new")
    old_later = _result(tmp_path, "20260101T000100Z-h200-aaaaaaaa.json", "a" * 8, model="small", label="prev")
    older = _result(tmp_path, "20251231T000000Z-h200-bbbbbbbb.json", "b" * 8, model="small")
    large = _result(tmp_path, "20250101T000000Z-h200-aaaaaaaa.json", "a" * 8, model="large")
    h100 = _result(tmp_path, "20250101T000000Z-h100-aaaaaaaa.json", "a" * 8, device="NVIDIA H100", model="small")
    reverted = _result(tmp_path, "20260202T000000Z-h200-cccccccc.json", "c" * 8, model="medium")
    plot = new.with_suffix(".svg")
    plot.write_text("<svg/>")
    log = tmp_path / "train_throughput" / "notes.log"
    log.write_text("x")
    kept, dropped, other = prune_results.plan(tmp_path, exclude=("ccccccc",), ranks=ranks)
    assert kept == sorted([new, plot, large, h100])
    assert dropped == sorted([old_later, older, reverted])
    assert other == [log]


def test_suite_refuses_another_checkouts_imdm(monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "REPO", tmp_path)   # as if imdm were installed from elsewhere
    assert "not from this checkout" in suite.foreign_code()
