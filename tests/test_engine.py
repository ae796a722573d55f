"""The distributed engine on CPU: FSDP2 over 2 gloo ranks from a seed checkpoint, bit-exact
kill-and-restart under torchrun, resharding to another world size, SIGTERM, non-finite
policies, HSDP over two rendezvous "nodes", per-block compile."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import recipe_from_dict
from imdm.run_loading import load_run
from imdm.parallel.checkpoint import latest_checkpoint, load_checkpoint
from imdm.train.faults import NonFiniteLoss, NonFinitePolicy
from imdm.train.step_report import StepReport
from imdm.train.trainer import Trainer

TINY = ["model.size=custom", "model.d_model=32", "model.n_blocks=2", "model.n_heads=2", "model.dropout=0.1",
        "algorithm.noise_dim=8", "data.vocab_size=16", "data.seq_len=6", "data.num_sequences=500",
        "train.global_batch=8", "train.micro_batch=2", "train.eval_batches=1", "schedule.warmup_steps=2",
        "optimizer.lr=3e-3", "logging.every_steps=1", "logging.progress=false"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args, nproc=1, extra_launcher=(), env=None, check=True):
    if nproc == 1 and not extra_launcher:
        cmd = [sys.executable, "-m", "imdm", "train", "builtin:quickstart", *TINY, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", *(extra_launcher or ["--standalone"]),
               f"--nproc_per_node={nproc}", "-m", "imdm", "train", "builtin:quickstart", *TINY, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path) -> dict:
    return {m["step"]: m["loss"] for m in _metrics(run_dir) if "loss" in m}


def _weights(run_dir: Path) -> dict:
    return load_run(run_dir, torch.device("cpu")).model.state_dict()


@pytest.mark.timeout(400)
def test_fsdp_seed_checkpoint_and_kill_restart_are_exact(tmp_path):
    out = [f"run.output_dir={tmp_path}", "train.steps=20", "checkpoint.every_steps=5", "checkpoint.seed_checkpoint=true",
           "checkpoint.keep_last=10"]
    _train([*out, "run.name=single"])
    _train([*out, "run.name=straight"], nproc=2)
    env = {**ENV, "IMDM_FAIL_AT_STEP": "13:1"}
    _train([*out, "run.name=killed"], nproc=2, extra_launcher=["--standalone", "--max-restarts=1"], env=env)
    # the seed checkpoint is the same model for 1 and 2 ranks
    zero = {"model": _weights(tmp_path / "single")}
    seeds = []
    for name in ("single", "straight"):
        state = {"model": {k: torch.zeros_like(v) for k, v in zero["model"].items()}}
        seeds.append(load_checkpoint(tmp_path / name / "checkpoints" / "step_00000000", state)["model"])
    assert all(torch.equal(seeds[0][k], seeds[1][k]) for k in seeds[0])
    single, straight, killed = (_losses(tmp_path / n) for n in ("single", "straight", "killed"))
    assert sorted(straight) == list(range(1, 21))
    assert straight == killed                                 # bit for bit through the crash at step 13
    assert any("resumed from step_00000010" in m.get("event", "") for m in _metrics(tmp_path / "killed"))
    for step in straight:                                     # FSDP over 2 ranks == one process
        assert straight[step] == pytest.approx(single[step], rel=1e-4)    # summation order differs
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.timeout(300)
def test_resume_with_another_world_size_reshards(tmp_path):
    out = [f"run.output_dir={tmp_path}", "checkpoint.every_steps=4"]
    _train([*out, "run.name=grow", "train.steps=4"])
    _train([*out, "run.name=grow", "train.steps=8"], nproc=2)
    _train([*out, "run.name=ref", "train.steps=8"])
    events = [m.get("event", "") for m in _metrics(tmp_path / "grow")]
    assert any("resharded from 1 ranks x micro-batch 2 x 0 loader workers to 2 x 2 x 0" in e for e in events)
    grow, ref = _losses(tmp_path / "grow"), _losses(tmp_path / "ref")
    for step in range(5, 9):
        assert grow[step] == pytest.approx(ref[step], rel=1e-4)


@pytest.mark.timeout(300)
def test_sigterm_saves_a_loadable_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "imdm", "train", "builtin:quickstart", *TINY, f"run.output_dir={tmp_path}",
           "run.name=term", "train.steps=100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = tmp_path / "term" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]   # saved, then the status tools expect
    ckpt = latest_checkpoint(tmp_path / "term" / "checkpoints")
    run = load_run(tmp_path / "term", torch.device("cpu"))
    assert ckpt is not None and 3 <= run.step < 100000
    assert _metrics(tmp_path / "term")[-1]["event"] == "stopped by signal after saving"


@pytest.mark.timeout(400)
def test_hsdp_two_nodes_train_and_resume(tmp_path):
    port = _free_port()
    args = [f"run.output_dir={tmp_path}", "run.name=hsdp", "parallelism.replicate=2", "checkpoint.every_steps=3"]

    def launch(steps):
        procs = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
             "--nproc_per_node=2", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=hsdp",
             "-m", "imdm", "train", "builtin:quickstart", *TINY, *args, f"train.steps={steps}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for node in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-4000:]

    launch(3)
    launch(6)
    losses = _losses(tmp_path / "hsdp")
    assert sorted(losses) == list(range(1, 7))
    assert any("resumed from step_00000003" in m.get("event", "") for m in _metrics(tmp_path / "hsdp"))
    _train([f"run.output_dir={tmp_path}", "run.name=ref", "train.steps=6"])
    ref = _losses(tmp_path / "ref")
    for step in losses:
        assert losses[step] == pytest.approx(ref[step], rel=1e-4)


def test_nonfinite_policy_unit():
    skip = NonFinitePolicy("skip", 2)
    assert [skip.observe(f, i) for i, f in enumerate([True, False, False, False, True])] == \
        [True, False, False, False, True]
    assert skip.total == 3
    stop = NonFinitePolicy("stop", 2)
    assert stop.observe(False, 0) is False and stop.observe(True, 1) is True and stop.observe(False, 2) is False
    with pytest.raises(NonFiniteLoss, match="2 non-finite losses in a row"):
        stop.observe(False, 3)


def _tiny_recipe(tmp_path, name, **train):
    return recipe_from_dict({
        "run": {"output_dir": str(tmp_path), "name": name},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 2, "n_heads": 2, "dropout": 0.0},
        "algorithm": {"noise_dim": 8}, "data": {"vocab_size": 16, "seq_len": 6, "num_sequences": 500},
        "train": {"steps": 6, "global_batch": 4, "micro_batch": 4, "eval_batches": 1, **train},
        "logging": {"every_steps": 1, "progress": False}})


def test_nonfinite_loss_is_skipped_then_stops(tmp_path, monkeypatch):
    trainer = Trainer(_tiny_recipe(tmp_path, "nan", nonfinite="skip"), init_distributed("cpu"))
    real = trainer.objective.loss
    monkeypatch.setattr(trainer.objective, "loss",
                        lambda *a, **k: real(*a, **k) * (float("nan") if trainer.step in (2, 3) else 1.0))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    assert trainer.nonfinite.total == 2 and all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    stopper = Trainer(_tiny_recipe(tmp_path, "nan-stop", nonfinite="stop", max_nonfinite=2), init_distributed("cpu"))
    real_stop = stopper.objective.loss
    monkeypatch.setattr(stopper.objective, "loss", lambda *a, **k: real_stop(*a, **k) * float("nan"))
    with pytest.raises(NonFiniteLoss, match="step 1: 2 non-finite losses in a row"):
        stopper.fit()


def test_gradient_norm_without_gradients_is_zero_on_the_parameters_device():
    from imdm.parallel.grad_norm import clip_grad_norm
    norm = clip_grad_norm(torch.nn.Linear(3, 2, device="meta").parameters(), 1.0)
    assert norm.shape == () and norm.device.type == "meta"


def test_step_report_is_read_once():
    report = StepReport(torch.device("cpu"), 2)
    assert report.read() is None
    report.write(7, torch.tensor([1.5, 0.0]))
    with pytest.raises(RuntimeError, match="step 7 was never read"):
        report.write(8, torch.tensor([2.0, 1.0]))
    assert report.read() == (7, [1.5, 0.0]) and report.read() is None


def test_nonfinite_step_is_skipped_at_once_and_counted_a_step_late(tmp_path, monkeypatch):
    """The optimizer skips the step on the device (no host read of its gradient norm); the
    policy counts it, and the EMA leaves it out, when the next step settles it."""
    trainer = Trainer(_tiny_recipe(tmp_path, "late", nonfinite="skip"), init_distributed("cpu"))
    real = trainer.objective.loss
    monkeypatch.setattr(trainer.objective, "loss",
                        lambda *a, **k: real(*a, **k) * (float("nan") if trainer.step == 1 else 1.0))
    trainer.train_step()
    params = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    assert all(torch.equal(params[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.nonfinite.total == 0 and trainer.ema.num_updates == 1
    ema = {k: v.clone() for k, v in trainer.ema.shadow.items()}
    trainer.settle()
    assert trainer.nonfinite.total == 1 and math.isnan(trainer.grad_norm)
    assert trainer.ema.num_updates == 1 and all(torch.equal(ema[k], v) for k, v in trainer.ema.shadow.items())
    trainer.train_step()
    trainer.settle()
    assert trainer.ema.num_updates == 2 and trainer.nonfinite.in_a_row == 0


def test_restore_drops_the_unsettled_step(tmp_path):
    trainer = Trainer(_tiny_recipe(tmp_path, "drop"), init_distributed("cpu"))
    trainer.save()
    trainer.checkpoints.wait()
    trainer.train_step()
    trainer.restore(latest_checkpoint(trainer.run_dir / "checkpoints"))
    trainer.settle()
    assert trainer.step == 0 and trainer.ema.num_updates == 0


@pytest.mark.timeout(400)
def test_per_block_compile_matches_eager(tmp_path):
    eager = Trainer(_tiny_recipe(tmp_path, "eager", steps=2), init_distributed("cpu"))
    eager.fit()
    recipe = _tiny_recipe(tmp_path, "compiled", steps=2)
    recipe.parallelism.compile = "on"
    compiled = Trainer(recipe, init_distributed("cpu"))
    compiled.fit()
    assert compiled.model.blocks[0]._compiled_call_impl is not None
    a, b = eager.model.state_dict(), compiled.model.state_dict()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reshard_after_forward", [False, True])
def test_gathered_parameters_across_gradient_accumulation(tmp_path, reshard_after_forward):
    """With reshard_after_forward off (the default), a block's parameters are gathered once per
    step: they stay gathered through every micro-batch's forward and backward (the trainer's
    set_reshard_after_backward(last)) and are resharded only after the last backward. With it
    on, every forward frees them again, so every backward gathers them anew."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from imdm.models.dit import DiT, DiTConfig
    from imdm.parallel.fsdp import apply_fsdp
    from imdm.parallel.mesh import data_parallel_mesh
    from imdm.recipe.schema import ParallelismSection

    assert ParallelismSection().reshard_after_forward is False
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = DiT(DiTConfig(vocab_size=17, mask_id=16, d_model=32, n_blocks=2, n_heads=2, dropout=0.0))
        apply_fsdp(model, data_parallel_mesh("cpu", 1, 1), None, reshard_after_forward)
        gathered = lambda: not isinstance(next(model.blocks[0].parameters()), DTensor)  # noqa: E731
        tokens = torch.randint(0, 17, (2, 5))
        for i in range(3):
            last = i == 2
            model.set_requires_gradient_sync(last)
            model.set_reshard_after_backward(last)
            loss = model(tokens).float().logsumexp(-1).mean()
            assert gathered() is not reshard_after_forward
            loss.backward()
            assert gathered() is not last
    finally:
        dist.destroy_process_group()


def test_bf16_gathering_keeps_the_embedding_and_the_head_float32(tmp_path):
    """With blocks gathered in bf16, a one-rank FSDP2 model computes what the unsharded model
    computes under autocast when the blocks' parameters are bf16 numbers: the token embedding,
    the mask states and the head are used in float32 (their values here are not bf16 numbers),
    and the fused loss's float32 head gradient is not rounded to bf16."""
    import torch.distributed as dist

    from imdm.models.dit import DiT, DiTConfig
    from imdm.models.mask_state import MaskStateConfig
    from imdm.parallel.fsdp import apply_fsdp
    from imdm.parallel.mesh import data_parallel_mesh

    def model():
        torch.manual_seed(0)
        dit = DiT(DiTConfig(vocab_size=17, mask_id=16, d_model=32, n_blocks=2, n_heads=2, dropout=0.0,
                            mask_state=MaskStateConfig(noise_dim=8)))
        with torch.no_grad():
            for name, p in dit.named_parameters():
                p.normal_(0.0, 0.3 if "norm" not in name else 1.0)
                if name.startswith("blocks."):
                    p.copy_(p.bfloat16())
        return dit

    tokens = torch.randint(0, 17, (2, 5), generator=torch.Generator().manual_seed(1))
    tokens[:, 1:3] = 16
    noise = torch.rand(2, 5, 8, generator=torch.Generator().manual_seed(2))
    select = (tokens == 16).nonzero(as_tuple=True)
    targets = torch.tensor([3, 5, 7, 9])

    def run(dit):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = dit(tokens, noise).float()
            loss = dit(tokens, noise, select=select, targets=targets, row_weight=torch.full((4,), 0.7))
        loss.backward()
        grad = dit.head.linear.weight.grad
        return logits, grad.full_tensor() if hasattr(grad, "full_tensor") else grad

    plain_logits, plain_grad = run(model())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        sharded = model()
        apply_fsdp(sharded, data_parallel_mesh("cpu", 1, 1), torch.bfloat16, reshard_after_forward=False)
        seen = {}
        sharded.blocks[0].register_forward_pre_hook(lambda m, _: seen.update(block=m.mlp[0].weight.dtype))
        sharded_logits, sharded_grad = run(sharded)
    finally:
        dist.destroy_process_group()
    assert seen["block"] == torch.bfloat16
    assert plain_logits.abs().max() > 0.1 and plain_grad.abs().max() > 1e-3
    torch.testing.assert_close(sharded_logits, plain_logits, rtol=0, atol=0)
    torch.testing.assert_close(sharded_grad, plain_grad, rtol=1e-6, atol=0)
