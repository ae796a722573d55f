"""Fused sampler step (imdm.kernels.sampler_step) against the eager float64 step, on CUDA:
[batch, seq_len, vocab] bf16 logits (random), IMDM posterior at a mid-grid step, every position
masked and then half of them. Each case first checks that the kernel draws what the float64
reference draws (all but a few boundary rows), then times both with CUDA events and reports the
bytes the kernel must move (logits of masked rows once, tokens in and out), GB/s and the fraction
of the device's HBM bandwidth. The fused step with top_p = 0.9 is timed too.

    python -m benchmarks.kernel_sampler [--batch 16 --seq-len 1024 --vocab 50258] [--results-dir DIR]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_timing import bandwidth, hbm_peak, require_cuda, time_ms
from benchmarks.results_io import device_name, write_result
from imdm import rng
from imdm.diffusion.posterior import step_weights
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.kernels.sampler_step import sampler_step
from imdm.sampling.ancestral import time_grid

STEPS, STEP = 16, 8           # the step timed: j = 8 of a 16-step grid


def run_case(logits: torch.Tensor, masked_fraction: float, args, peak: float | None) -> dict:
    batch, seq_len, vocab = logits.shape
    mask_id = vocab - 1
    gen = torch.Generator(device="cuda").manual_seed(1)
    z = torch.randint(0, mask_id, (batch, seq_len), device="cuda", generator=gen)
    z[torch.rand(batch, seq_len, device="cuda", generator=gen) < masked_fraction] = mask_id
    seeds = rng.derive_seed(3, torch.arange(batch), rng.STREAM_SAMPLE_SEED).cuda()
    grid, sched = time_grid(STEPS), LogLinearSchedule()
    w = step_weights(float(sched.alpha(grid[STEP])), float(sched.alpha(grid[STEP + 1])), "imdm")
    step = dict(seeds=seeds, step_index=STEP, unmask=w.unmask, stay_keep=w.stay_keep, stay_redraw=w.stay_redraw,
                mask_id=mask_id)

    def fused(top_p=1.0):
        return sampler_step(logits, z, top_p=top_p, backend="triton", **step)

    def eager():
        return sampler_step(logits, z, backend="eager", **step)

    new_z, redrawn = fused()
    ref_z, ref_redrawn = eager()
    masked = z == mask_id
    mismatch = float(((new_z != ref_z) | (redrawn != ref_redrawn))[masked].float().mean())
    assert torch.equal(new_z[~masked], z[~masked]), "clean positions must be copied"
    assert mismatch < 1e-3, f"fused and float64 steps disagree on {mismatch:.2e} of the masked rows"
    n_masked = int(masked.sum())
    nbytes = n_masked * vocab * logits.element_size() + batch * seq_len * (8 + 8 + 1) + seeds.numel() * 8
    ms = time_ms(fused, args.iters)
    row = {"masked_fraction": masked_fraction, "step_ms": ms, **bandwidth(nbytes, ms, peak),
           "baseline_step_ms": time_ms(eager, args.baseline_iters, warmup=1),
           "top_p_0.9_step_ms": time_ms(lambda: fused(0.9), max(1, args.iters // 10), warmup=1),
           "mismatch_fraction": mismatch}
    print(f"masked {masked_fraction:.2f}: fused {ms:.3f} ms ({row['gb_per_s']:.0f} GB/s, "
          f"hbm {row['hbm_fraction'] or 0:.2f}), eager float64 {row['baseline_step_ms']:.2f} ms, "
          f"top-p 0.9 {row['top_p_0.9_step_ms']:.2f} ms, mismatch {mismatch:.1e}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50258)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--baseline-iters", type=int, default=5)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("kernel_sampler")
    name = device_name()
    peak = hbm_peak(name)
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (3 * torch.randn(args.batch, args.seq_len, args.vocab, device="cuda", generator=gen)).bfloat16()
    full, half = run_case(logits, 1.0, args, peak), run_case(logits, 0.5, args, peak)
    config = {"batch": args.batch, "seq_len": args.seq_len, "vocab": args.vocab, "dtype": "bfloat16",
              "posterior": "imdm", "masked_fraction": 1.0, "step": f"{STEP} of {STEPS}"}
    metrics = {**{k: v for k, v in full.items() if k != "masked_fraction"}, "half_masked": half,
               "hbm_bytes_per_s": peak}
    print(write_result("kernel_sampler", "", config, metrics, out_dir=args.results_dir))


if __name__ == "__main__":
    main()
