"""Training throughput: tokens/s per GPU, MFU, peak memory and data-wait share of the real
training step (loader, loss, backward, clipping, AdamW, EMA) for a recipe, timed after warm-up;
optionally the loop's stall for an asynchronous checkpoint. Launch with torchrun for several GPUs.

    python -m benchmarks.train_throughput --recipe recipes/owt.toml [--steps 20] [key=value ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

from benchmarks.results_io import write_result
from benchmarks.trace_summary import format_summary, load_trace, summarize
from imdm.build import build_model
from imdm.parallel.distributed import init_distributed, launcher_world_size, shutdown
from imdm.algorithms.registry import load_recipe
from imdm.train.flops import device_peak_flops, flops_per_token
from imdm.train.parallelize import compile_enabled
from imdm.train.trainer import Trainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profile(trainer: Trainer, steps: int, is_main: bool, trace: str | None) -> str | None:
    """The table of top operators by device time (CPU time on CPU) over `steps` training steps,
    printed and returned on rank 0; with `trace`, rank 0's Chrome trace (read it for host-bound
    gaps between kernels)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        _sync(trainer.dist.device)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=70)
    if is_main:
        print(table)
        if trace:
            prof.export_chrome_trace(trace)
    return table if is_main else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/owt.toml")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--checkpoint-stall", action="store_true", help="also time an async checkpoint")
    parser.add_argument("--label", default="", help="free-form label stored in the config")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many steps; rank 0 prints the op table and stores it with the results")
    parser.add_argument("--trace", default=None, help="with --profile: rank 0 also writes a Chrome trace here, "
                        "and on a GPU stores where its time goes (benchmarks/trace_summary.py) with the results")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="cap PyTorch's CUDA allocator at this many GiB (a smaller card's memory, emulated)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="imdm-bench-run-")
    recipe = load_recipe(args.recipe, [*args.overrides, f"run.output_dir={scratch}", "checkpoint.async_save=true",
                                       "logging.progress=false"], world_size=launcher_world_size())
    dist = init_distributed(recipe.train.device)
    device = dist.device
    if args.memory_cap_gib is not None:
        if device.type != "cuda":
            raise SystemExit("--memory-cap-gib caps the CUDA allocator: it needs a CUDA device")
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2 ** 30 / total), device)
    trainer = Trainer(recipe, dist)
    for _ in range(args.warmup):
        trainer.train_step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, waited = time.perf_counter(), 0.0
    for _ in range(args.steps):
        loss, wait = trainer.train_step()
        waited += wait
    _sync(device)
    seconds = time.perf_counter() - start
    seq_len = trainer.dataset.seq_len
    tokens_per_s = args.steps * recipe.train.global_batch * seq_len / seconds / dist.world_size
    flops = flops_per_token(build_model(recipe, trainer.dataset.model_vocab, trainer.dataset.mask_id, "meta"), seq_len)
    peak = device_peak_flops(device)
    metrics = {"tokens_per_s_per_gpu": tokens_per_s, "mfu": tokens_per_s * flops / peak if peak else None,
               "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
               "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2 ** 30 if device.type == "cuda" else None,
               "data_wait_share": waited / seconds, "step_s": seconds / args.steps, "final_loss": float(loss),
               "flops_per_token": flops}
    if args.checkpoint_stall:
        # the loop's stall: launching the save, plus waiting for the copy to host memory before
        # the next optimizer step; the first save also allocates the pinned buffers
        for label in ("first", "steady"):
            launch = trainer.save()
            trainer.train_step()
            _sync(device)
            metrics[f"checkpoint_stall_{label}_s"] = launch + trainer.staging_wait_s
            start = time.perf_counter()
            trainer.checkpoints.wait()
            metrics[f"checkpoint_background_write_{label}_s"] = time.perf_counter() - start
        metrics["checkpoint_stall_s"] = metrics["checkpoint_stall_steady_s"]
    d, b, h = recipe.model.dims()
    config = {"model": recipe.model.size, "algorithm": recipe.algorithm.name, "noise_dim": recipe.algorithm.noise_dim,
              "global_batch": recipe.train.global_batch, "micro_batch": recipe.train.micro_batch, "seq_len": seq_len,
              "vocab": trainer.dataset.model_vocab, "compile": compile_enabled(recipe, device),
              "activation_checkpointing": recipe.parallelism.activation_checkpointing,
              "replicate": recipe.parallelism.replicate, "data_source": recipe.data.source,
              "num_workers": recipe.data.num_workers, "dims": [d, b, h], "label": args.label,
              "overrides": args.overrides, "timed_steps": args.steps, "memory_cap_gib": args.memory_cap_gib,
              "inductor_env": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_")}}
    if args.profile:
        metrics["profile_table"] = _profile(trainer, args.profile, dist.is_main, args.trace)
        if args.trace and dist.is_main and device.type == "cuda":
            try:
                summary = summarize(load_trace(args.trace))
            except (OSError, ValueError, KeyError) as err:   # the timed result is still written
                summary = {"error": f"{type(err).__name__}: {err}"}
            else:
                print(format_summary(summary))
            metrics["trace_summary"] = summary
    if dist.is_main:
        path = write_result("train_throughput", args.recipe, config, metrics, world_size=dist.world_size,
                            out_dir=args.results_dir)
        if args.checkpoint_stall:   # DESIGN.md's checkpoint_stall result, beside the throughput it came with
            write_result("checkpoint_stall", args.recipe,
                         {"model": recipe.model.size, "async": True, "algorithm": recipe.algorithm.name,
                          "global_batch": recipe.train.global_batch, "source_result": f"{path.parent.name}/{path.name}"},
                         {"stall_s": metrics["checkpoint_stall_steady_s"],
                          "stall_first_save_s": metrics["checkpoint_stall_first_s"],
                          "background_write_s": metrics["checkpoint_background_write_steady_s"]},
                         world_size=dist.world_size, out_dir=args.results_dir)
        print(f"{args.label or recipe.model.size}: {tokens_per_s:,.0f} tokens/s/GPU, mfu "
              f"{metrics['mfu'] if metrics['mfu'] is None else round(metrics['mfu'], 3)}, peak "
              f"{metrics['peak_mem_gib']} GiB, data wait {metrics['data_wait_share']:.4f}"
              + (f", ckpt stall {metrics['checkpoint_stall_s']:.3f}s" if args.checkpoint_stall else "") + f" -> {path}")
    shutdown()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
