"""Data parallelism under torchrun: 2 gloo processes train the same trajectory as one process
with the same micro-batch (same t, masks, mask states and dropout masks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imdm.run_loading import load_run

OVERRIDES = ["model.size=custom", "model.d_model=32", "model.n_blocks=2", "model.n_heads=2", "model.dropout=0.1",
             "algorithm.noise_dim=8", "data.vocab_size=16", "data.seq_len=6", "data.num_sequences=500",
             "train.steps=5", "train.global_batch=8", "train.micro_batch=2", "train.eval_batches=1",
             "schedule.warmup_steps=2", "optimizer.lr=3e-3", "logging.every_steps=1", "logging.progress=false"]


def _logged(run_dir: Path, key: str = "loss") -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)[key] for x in lines if '"loss"' in x]


@pytest.mark.timeout(300)
def test_two_gloo_ranks_match_one_process(tmp_path, repo_root):
    recipe = os.path.join(repo_root, "recipes", "quickstart.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "imdm", "train", recipe, *OVERRIDES,
                             f"run.output_dir={tmp_path}", "run.name=single"], capture_output=True, text=True, env=env)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "imdm", "train", recipe, *OVERRIDES, f"run.output_dir={tmp_path}", "run.name=multi"],
                           capture_output=True, text=True, env=env)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a, b = _logged(tmp_path / "single"), _logged(tmp_path / "multi")
    assert len(a) == len(b) == 5
    for x, y in zip(a, b):
        assert x == pytest.approx(y, rel=1e-5)
    # the sharded gradient norm (local shards + one all-reduce) equals the unsharded one, and clipping is active
    norms_a, norms_b = _logged(tmp_path / "single", "grad_norm"), _logged(tmp_path / "multi", "grad_norm")
    assert norms_a == pytest.approx(norms_b, rel=1e-4) and max(norms_a) > 1.0
    ma = load_run(tmp_path / "single", torch.device("cpu")).model.state_dict()
    mb = load_run(tmp_path / "multi", torch.device("cpu")).model.state_dict()
    for k in ma:
        torch.testing.assert_close(ma[k], mb[k], rtol=1e-3, atol=2e-5)  # Adam amplifies summation-order noise
    bad = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "imdm", "train", recipe, *OVERRIDES, "train.micro_batch=8",
                          f"run.output_dir={tmp_path}", "run.name=bad"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0
    assert "train.global_batch: 8 is not divisible by train.micro_batch (8) x data-parallel size (2)" in bad.stderr


@pytest.mark.timeout(300)
def test_checkpoint_after_validation_off_a_logging_step(tmp_path, repo_root):
    """Step 3 validates (a forward without backward leaves FSDP's root unit unsharded) and then
    saves, with no metrics line before: the step's deferred EMA update must still see shards."""
    recipe = os.path.join(repo_root, "recipes", "quickstart.toml")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "imdm", "train", recipe, *OVERRIDES, "logging.every_steps=4", "train.eval_every=3",
                          "checkpoint.every_steps=3", f"run.output_dir={tmp_path}", "run.name=evalsave"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "evalsave" / "checkpoints").glob("step_*")) == \
        ["step_00000003", "step_00000005"]
