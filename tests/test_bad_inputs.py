"""A table of bad inputs (recipes, overrides, flags, files, checkpoints) through the command line:
each must end with a non-zero exit status, no traceback, a message naming the key, file or flag,
and nothing left behind in the folder it ran in. The cases run in one process
(tests/bad_input_driver.py), beside one tiny run trained once for the module; a few behaviours
that need their own process (signals, a finished run run again) have their own tests."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

DRIVER = Path(__file__).with_name("bad_input_driver.py")
TINY = ["model.size=custom", "model.d_model=32", "model.n_blocks=1", "model.n_heads=2", "model.cond_dim=16",
        "algorithm.noise_dim=8", "data.num_sequences=64", "train.global_batch=8", "train.micro_batch=8",
        "train.eval_batches=1", "schedule.warmup_steps=0", "logging.progress=false"]
TRAIN = ["train", "builtin:quickstart", *TINY, "train.steps=2"]


def _imdm(*args, cwd, **kwargs):
    return subprocess.run([sys.executable, "-m", "imdm", *args], capture_output=True, text=True, cwd=cwd, **kwargs)


def _copy_run(work: Path, name: str) -> Path:
    """A copy of runs/tiny under another run name (its recipe says so, so that it resumes as itself)."""
    run = work / "runs" / name
    shutil.copytree(work / "runs" / "tiny", run)
    recipe = run / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('name = "tiny"', f'name = "{name}"'))
    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder holding runs/tiny (checkpoints at steps 1 and 2), damaged copies of it, and bad files."""
    work = tmp_path_factory.mktemp("bad_inputs")
    trained = _imdm(*TRAIN, "run.name=tiny", "checkpoint.every_steps=1", cwd=work)
    assert trained.returncode == 0, trained.stderr[-3000:]
    step2 = Path("checkpoints") / "step_00000002"
    (_copy_run(work, "bad-metadata") / step2 / ".metadata").write_text("garbage")
    only = _copy_run(work, "only-bad")
    shutil.rmtree(only / "checkpoints" / "step_00000001")
    (only / step2 / ".metadata").write_bytes(b"")
    truncated = _copy_run(work, "truncated")
    for data in (truncated / step2).glob("*.distcp"):
        data.write_bytes(data.read_bytes()[:100])
    (_copy_run(work, "bad-meta") / step2 / "meta.json").write_text("{not json")
    shutil.rmtree(_copy_run(work, "no-checkpoint") / "checkpoints")
    (work / "latin1.toml").write_bytes('[run]\nname = "café"\n[algorithm]\nname = "mdlm"\n'.encode("latin-1"))
    (work / "utf16.toml").write_text('[run]\nname = "x"\n[algorithm]\nname = "mdlm"\n', encoding="utf-16")
    (work / "empty.toml").write_text("")
    (work / "comments.toml").write_text("# a recipe\n# to come\n")
    (work / "broken.toml").write_text("[train\nsteps = 3\n")
    (work / "noname.toml").write_text('[algorithm]\nname = "mdlm"\n')
    (work / "noalgo.toml").write_text('[run]\nname = "x"\n')
    (work / "folder.toml").mkdir()
    (work / "corpus.txt").write_text("some text\n\nmore text\n")
    (work / "empty-tokenizer").mkdir()
    (work / "no-stage.toml").write_text('[pipeline]\noutput_dir = "runs"\n[[stage]]\ncommand = "train"\n')
    return work


def _text(*more):
    return ["data.source=local", "data.seq_len=16", 'data.paths=["corpus.txt"]', *more]


NO_TENSORBOARD = importlib.util.find_spec("tensorboard") is None
NO_GPU = not torch.cuda.is_available()

# (command line, what the message must name)
CASES = [
    # recipe files
    (["check", "missing.toml"], "missing.toml: file not found"),
    (["check", "folder.toml"], "folder.toml: is a folder"),
    (["check", "latin1.toml"], "latin1.toml: not UTF-8 text"),
    (["check", "utf16.toml"], "utf16.toml: UTF-16 text"),
    (["check", "empty.toml"], "empty.toml: the recipe is empty"),
    (["check", "comments.toml"], "comments.toml: the recipe is empty"),
    (["check", "broken.toml"], "broken.toml: not valid TOML"),
    (["check", "noname.toml"], "noname.toml: run.name: missing"),
    (["check", "noalgo.toml"], "noalgo.toml: algorithm.name: missing"),
    (["check", "builtin:quickstrat"], "no packaged recipe 'quickstrat'"),
    (["train", "latin1.toml"], "latin1.toml: not UTF-8 text"),
    (["train", "empty.toml"], "empty.toml: the recipe is empty"),
    # overrides: keys, types, values
    (["check", "optimizer.lrr=1"], "optimizer.lrr: unknown key; did you mean 'optimizer.lr'"),
    (["check", "optimizer.lr=-1"], "optimizer.lr: must be > 0.0"),
    (["check", "optimizer.lr=fast"], "optimizer.lr: expected a number"),
    (["check", "train.steps=0"], "train.steps: must be > 0"),
    (["check", "train.steps=1.5"], "train.steps: expected an integer"),
    (["check", "model.size=huge"], "model.size: 'huge' is not one of"),
    (["check", "model.attention=flash"], "model.attention: 'flash' is not one of"),
    (["check", "train.device=gpu"], "train.device: 'gpu' is not one of"),
    (["check", "schedule.decay=linear"], "schedule.decay: 'linear' is not one of"),
    (["check", "checkpoint.keep_last=0"], "checkpoint.keep_last: must be > 0"),
    (["check", "sampling.top_p=1.5"], "sampling.top_p: must be <= 1.0"),
    (["check", "sampling.steps=[0]"], "sampling.steps"),
    (["check", "sampling.num_samples=100", "sampling.batch=64"], "sampling.num_samples: 100 is not a multiple"),
    (["check", "sampling.prefix_len=3"], "sampling.prefix_len: removed"),
    (["check", "algorithm.name=imdn"], "algorithm.name: 'imdn' is not a registered algorithm"),
    (["check", "algorithm.objective=nelbow"], "algorithm.objective: 'nelbow'"),
    (["check", "nosection.key=1"], "[nosection]: unknown section"),
    (["check", "builtin:quickstart", "optimizer.lr"], "override 'optimizer.lr' must look like section.key=value"),
    (["check", "builtin:quickstart", "a.b.c=1"], "override 'a.b.c=1': use section.key=value"),
    (["check", "model.n_heads=3"], "model.n_heads: d_model 128 must split into 3 heads"),
    (["check", "model.size=custom"], "model.size: 'custom' needs model.d_model"),
    (["check", "model.softcap=5"], "model.softcap"),
    (["check", "train.global_batch=100"], "train.global_batch: 100 is not divisible"),
    (["check", "init.from_run=quickstart"], "init.from_run: run 'quickstart' cannot start from itself"),
    (["check", "data.source=couplings"], "data.couplings: a couplings source needs the run name"),
    (["check", "eval.sets=[\"nope\"]"], "eval.sets: unknown ['nope']"),
    (["check", "conditional.enabled=true"], "conditional.enabled"),
    (["check", "parallelism.data_parallel=2", "--world-size", "4"], "parallelism.data_parallel: recipe says 2"),
    (["check", "--world-size", "3"], "train.global_batch: 64 is not divisible"),
    # paths that do not exist from the folder the command runs in
    (["check", "data.source=local", "data.seq_len=16"], "data.paths: a local source needs at least one file"),
    (["check", "data.source=local", "data.seq_len=16", 'data.paths=["nope.txt"]'],
     "data.paths: 'nope.txt' matches no file"),
    (["check", *_text("tokenizer.path=./no-tokenizer")], "tokenizer.path: './no-tokenizer' does not exist"),
    (["check", *_text("tokenizer.path=empty-tokenizer")], "tokenizer.path: folder 'empty-tokenizer' lacks vocab.json"),
    (["check", "data.source=store", "data.seq_len=16", "data.store=no-store"],
     "data.store: 'no-store' is not a prepared"),
    (["check", "data.source=hub", "data.seq_len=16", "data.hub_location=./no-copy"], "data.hub_location: './no-copy'"),
    (["train", *TINY, "data.source=local", "data.seq_len=16", 'data.paths=["nope.txt"]', "tokenizer.path=./nope"],
     "data.paths: 'nope.txt' matches no file (looked in"),
    (["train", *TINY, *_text("tokenizer.path=./nope")], "tokenizer.path: './nope' does not exist"),
    # flags and commands
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["check", "--bogus"], "unrecognized arguments: --bogus"),
    (["check", "--world-size", "0"], "argument --world-size: must be an integer >= 1"),
    (["sample", "runs/tiny", "--steps", "-3"], "argument --steps: must be an integer >= 1"),
    (["sample", "runs/tiny", "--steps", "0"], "argument --steps: must be an integer >= 1"),
    (["sample", "runs/tiny", "--steps", "many"], "argument --steps: must be an integer >= 1"),
    (["sample", "runs/tiny", "--num-samples", "0"], "argument --num-samples: must be an integer >= 1"),
    (["sample", "runs/tiny", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["sample", "runs/tiny", "--out", "nowhere/samples.json"],
     "--out: nowhere/samples.json: its folder does not exist"),
    (["sample", "runs/tiny", "--out", "runs"], "--out: runs: is a folder"),
    (["sample", "runs/tiny", "--prefix-ids", "a,b"], "--prefix-ids"),
    (["sample", "runs/tiny", "--prefix", "hello"], "--prefix: the run has no tokenizer"),
    (["sample", "runs/tiny", "train.lr=3"], "not ['train.lr=3']"),
    (["sample", "runs/tiny", "sampling.stepz=[2]"], "sampling.stepz: unknown key"),
    (["sample", "runs/tiny", "sampling.temperature=0"], "sampling.temperature: must be > 0.0"),
    (["eval", "runs/tiny", "optimizer.lr=3"], "not ['optimizer.lr=3']"),
    (["plot", "runs/tiny", "--out", "nowhere/plot.png"], "--out: nowhere/plot.png: its folder does not exist"),
    (["plot", "runs/tiny", "--out", "plot.gif"], "--out plot.gif: give a .png or .svg file"),
    # runs and checkpoints
    (["sample", "runs/ghost"], "runs/ghost is not a run directory"),
    (["eval", "runs/ghost"], "runs/ghost is not a run directory"),
    (["sample", "runs/no-checkpoint"], "runs/no-checkpoint has no complete checkpoint"),
    (["sample", "runs/bad-metadata"], "step_00000002 is damaged (its .metadata cannot be read"),
    (["eval", "runs/bad-metadata"], "go back to the previous complete checkpoint step_00000001"),
    (["sample", "runs/only-bad"], "there is no earlier complete checkpoint: use a new run.name"),
    (["sample", "runs/truncated"], "cannot load checkpoint runs/truncated/checkpoints/step_00000002"),
    (["sample", "runs/bad-meta"], "meta.json has no step"),
    (["train", "runs/bad-metadata/recipe.toml"], "go back to the previous complete checkpoint step_00000001"),
    (["train", "runs/only-bad/recipe.toml"], "use a new run.name"),
    (["train", "runs/tiny/recipe.toml", "optimizer.lr=1e-3"], "optimizer.lr: differs from the run directory's recipe"),
    (["train", *TINY, "run.name=child", "init.from_run=ghost"], "init.from_run: no run named 'ghost'"),
    (["train", *TINY, "run.name=child", "run.output_dir=fresh/runs", "init.from_run=ghost"], "init.from_run"),
    (["couplings", "builtin:quickstart_couplings", "couplings.teacher_run=ghost"],
     "couplings.teacher_run: no run named 'ghost'"),
    (["pipeline", "missing.toml"], "missing.toml: file not found"),
    (["pipeline", "no-stage.toml"], "stage[0].recipe"),
    (["pipeline", "builtin:pipelines/nope"], "pipelines/nope"),
    (["quickstart", "train.stepz=3", "--output-dir", "qs"], "train.stepz: unknown key"),
]
if NO_TENSORBOARD:
    CASES += [(["check", "logging.tensorboard=true"], "logging.tensorboard: true needs the tensorboard package"),
              (["train", *TINY, "run.name=tb", "logging.tensorboard=true"], "logging.tensorboard: true needs")]
if NO_GPU:
    CASES += [(["train", *TINY, "run.name=gpu", "train.device=cuda"], "train.device: 'cuda' but no CUDA device"),
              (["sample", "runs/tiny", "--device", "cuda"], "--device: 'cuda' but no CUDA device is visible"),
              (["eval", "runs/tiny", "--device", "cuda"], "--device: 'cuda' but no CUDA device is visible")]


@pytest.mark.timeout(300)
def test_every_bad_input_fails_cleanly(work):
    assert len(CASES) >= 60
    cases = [{"argv": argv, "cwd": str(work)} for argv, _ in CASES]
    ran = subprocess.run([sys.executable, str(DRIVER)], input=json.dumps(cases), capture_output=True, text=True,
                         cwd=work)
    assert ran.returncode == 0, ran.stderr[-3000:]
    failures = []
    for (argv, named), result in zip(CASES, json.loads(ran.stdout), strict=True):
        wrong = [why for why, bad in (("exit status 0", result["status"] == 0),
                                      ("a traceback", "Traceback" in result["stderr"]),
                                      (f"no {named!r}", named not in result["stderr"]),
                                      (f"left {result['added']}", result["added"]),
                                      (f"removed {result['removed']}", result["removed"])) if bad]
        if wrong:
            failures.append(f"imdm {' '.join(argv)}: {', '.join(wrong)}\n{result['stderr'][-1500:]}")
    assert not failures, "\n".join(failures)


def test_recipe_file_errors_through_python_m_imdm(work):
    """The same clean line and status 2 from the real entry point."""
    result = _imdm("check", "utf16.toml", cwd=work)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: utf16.toml: UTF-16 text; TOML files are UTF-8: save it again as UTF-8"


def test_a_warmup_longer_than_the_run_is_said(work):
    result = _imdm("check", "schedule.warmup_steps=400", cwd=work)   # quickstart: 300 steps
    assert result.returncode == 0
    assert "warning: schedule.warmup_steps: 400 is more than train.steps (300): the learning rate peaks at 75% " \
           "of optimizer.lr" in result.stderr


def _strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_a_finished_run_run_again_logs_no_second_evaluation(work):
    metrics = work / "runs" / "tiny" / "metrics.jsonl"
    first = [_strict_json(line) for line in metrics.read_text().splitlines()]
    again = _imdm(*TRAIN, "run.name=tiny", "checkpoint.every_steps=1", cwd=work)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = _strict_json(again.stdout.strip().splitlines()[-1])
    records = [_strict_json(line) for line in metrics.read_text().splitlines()]
    evaluations = [r for r in records if "val_nelbo_ema" in r]
    assert len(evaluations) == 1 and evaluations == [r for r in first if "val_nelbo_ema" in r]
    assert summary["val_nelbo_ema"] == evaluations[0]["val_nelbo_ema"]
    assert summary["loss"] is None       # no step ran: NaN would not be JSON
    assert records[len(first):] == [{"step": 2, "event": "resumed from step_00000002"}]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_then_exits_with_its_status(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "imdm", *TRAIN, "run.name=stop", "train.steps=100000",
                             "logging.every_steps=1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "runs" / "stop" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and _strict_json(out.strip().splitlines()[-1])["stopped_early"] is True
    last = _strict_json(metrics.read_text().splitlines()[-1])
    assert last["event"] == "stopped by signal after saving"
    assert (tmp_path / "runs" / "stop" / "checkpoints" / f"step_{last['step']:08d}" / "meta.json").is_file()


def test_metrics_lines_write_null_for_non_finite_numbers(tmp_path):
    from imdm.train.metrics import MetricsLog
    log = MetricsLog(tmp_path, console=False)
    log.write({"step": 3, "loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5})
    assert [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [{"step": 3, "loss": None, "grad_norm": None, "lr": 0.5}]
    assert log.logged("loss", 3) == {"step": 3, "loss": None, "grad_norm": None, "lr": 0.5}
    assert log.logged("loss", 4) is None
