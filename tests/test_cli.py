"""End to end through the command line: quickstart (shortened), sample, eval, and clean
errors for bad input."""

import json
import subprocess
import sys

import pytest


def _imdm(*args, cwd):
    return subprocess.run([sys.executable, "-m", "imdm", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.timeout(300)
def test_quickstart_sample_and_eval(tmp_path):
    out = tmp_path / "qs"
    result = _imdm("quickstart", "--output-dir", str(out), "train.steps=40", "schedule.warmup_steps=10",
                   "couplings.num=256", "couplings.chunk=256", "sampling.steps=[1, 64]", "sampling.num_samples=64",
                   "sampling.batch=64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "V^-(L-1) = 2.3e-13" in result.stdout
    assert "stage 3/4 couplings quickstart-couplings: running" in result.stdout
    phases = [line for line in result.stdout.splitlines() if line.startswith("[")]   # [k/N m:ss] what
    assert [line.split()[0] for line in phases] == [f"[{k}/7" for k in range(1, 8)]     # 4 stages, 3 evaluations
    assert [line.split("] ")[1].split(":")[0] for line in phases] == [
        "stage 1/4 train quickstart-mdlm", "stage 2/4 train quickstart-imdm",
        "stage 3/4 couplings quickstart-couplings", "stage 4/4 train quickstart-imredi",
        "evaluating quickstart-mdlm (MDLM)", "evaluating quickstart-imdm (IMDM)",
        "evaluating quickstart-imredi (IMDM + IM-ReDi)"]
    elapsed = [int(m) * 60 + int(s) for m, s in (line.split()[1].rstrip("]").split(":") for line in phases)]
    assert elapsed == sorted(elapsed)
    rows = json.loads((out / "quickstart.json").read_text())
    methods = ("MDLM", "IMDM", "IMDM + IM-ReDi")
    assert [(r["method"], r["steps"]) for r in rows] == [(m, s) for m in methods for s in (1, 64)]
    for r in rows:
        assert 0.0 <= r["validity"] <= 1.0 and r["nfe"] <= r["steps"]
        if r["steps"] == 1 and r["method"] != "IMDM + IM-ReDi":
            assert r["validity"] == 0.0      # the factorised one-step failure (2.3e-13 expected)
    for name in ("quickstart-mdlm", "quickstart-imdm", "quickstart-imredi"):
        assert (out / name / "recipe.toml").is_file()
        assert (out / name / "checkpoints" / "step_00000040" / "meta.json").is_file()
    assert (out / "quickstart-couplings" / "couplings" / "manifest.json").is_file()

    sample = _imdm("sample", str(out / "quickstart-imdm"), "--steps", "4", "--num-samples", "3", "--format", "json",
                   cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    payload = json.loads(sample.stdout)
    assert payload["nfe"] <= 4 and len(payload["samples"]) == 3 and all(len(s) == 8 for s in payload["samples"])
    assert all(0 <= tok < 64 for s in payload["samples"] for tok in s)

    ev = _imdm("eval", str(out / "quickstart-mdlm"), "sampling.steps=[2]", "sampling.num_samples=32",
               "sampling.batch=32", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    assert json.loads((out / "quickstart-mdlm" / "eval.json").read_text())["rows"][0]["steps"] == 2

    bad = _imdm("eval", str(out / "quickstart-mdlm"), "train.lr=3", cwd=tmp_path)
    assert bad.returncode == 2 and "only sampling.*, eval.*, conditional.* and logging.* may be overridden" in bad.stderr


def test_train_rejects_bad_override_without_traceback(tmp_path):
    result = _imdm("train", "optimizer.lr=-1", "run.output_dir=x", cwd=tmp_path)
    assert result.returncode == 2
    assert "builtin:quickstart (with overrides optimizer.lr=-1 run.output_dir=x): optimizer.lr: must be > 0.0" \
        in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()
    missing = _imdm("sample", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


TINY_TEXT = ["model.size=custom", "model.d_model=32", "model.n_blocks=1", "model.n_heads=2",
             "data.paths=[\"../shared/data/corpus/tinyshakespeare/input.txt\"]", "data.documents=paragraph",
             "data.holdout_documents=50", "data.seq_len=64", "data.num_workers=0", "train.steps=3",
             "train.global_batch=4", "train.micro_batch=2", "train.eval_every=0", "train.eval_batches=1",
             "eval.max_batches=1", "eval.batch=4", "checkpoint.every_steps=0", "logging.progress=false"]


@pytest.mark.timeout(300)
def test_text_run_trains_evaluates_and_samples(tmp_path, repo_root):
    import os
    if not os.path.isdir(os.path.join(repo_root, "..", "shared", "data")):
        pytest.skip("needs ../shared/data beside the checkout")
    common = [*TINY_TEXT, f"run.output_dir={tmp_path}", f"data.store_dir={tmp_path / 'cache'}"]
    train = _imdm("train", "recipes/local_gpt2.toml", *common, cwd=repo_root)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = tmp_path / "local-gpt2-imdm"
    ev = _imdm("eval", str(run_dir), "eval.judge=", cwd=repo_root)    # generative metrics: test_generative_eval.py
    assert ev.returncode == 0, ev.stderr[-3000:]
    rows = {r["set"]: r for r in json.loads((run_dir / "eval.json").read_text())["zero_shot"]}
    assert set(rows) == {"validation", "wikitext2", "ptb", "lambada"}
    for r in rows.values():
        assert r["tokens"] > 0 and 1.0 < r["ppl"] < 1e6     # an untrained bound sits near V = 50258
    sample = _imdm("sample", str(run_dir), "--steps", "2", "--num-samples", "2", "--format", "json", cwd=repo_root)
    assert sample.returncode == 0, sample.stderr
    payload = json.loads(sample.stdout)
    assert len(payload["text"]) == 2 and all(isinstance(t, str) for t in payload["text"])
    shown = _imdm("sample", str(run_dir), "--steps", "2", "--num-samples", "2", cwd=repo_root)   # the same seeds
    assert shown.returncode == 0, shown.stderr
    blocks = [f"--- sample {i} of 2 ---\n{text}\n" for i, text in enumerate(payload["text"], 1)]
    assert shown.stdout.split("\n", 1)[1] == "\n".join(blocks) + "\n"       # one block each, then print's newline
