"""Unconditional sampling latency of the OpenWebText-shaped small IMDM model (recipes/owt.toml,
algorithm imdm; random weights, perturbed so x_theta is not uniform): `batch` sequences of
`seq_len` tokens at several step counts, bf16 autocast, with the fused Triton sampler step
against the eager float64 step. One JSON per step count.

Before timing, the two samplers' draws are compared (1 step: per token; 4 steps: whole
sequences, since a boundary-row difference changes that sequence's later logits). The eager
baseline at many steps (>= --estimate-from, default 1024) is estimated, not run to the end:
the mean time of `--subset` sampler steps (network + eager step) from a half-masked batch at
t = 0.5 of that grid, times the step count; the masked fraction averages 0.5 over the grid,
and the eager step's cost is linear in the masked rows. The fused runs are timed in full.

    python -m benchmarks.sampling_latency [--steps 1 4 16 1024] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from benchmarks.gpu_timing import require_cuda
from benchmarks.results_io import write_result
from imdm import rng
from imdm.algorithms.registry import load_recipe
from imdm.build import build_model, build_process, sampler_settings
from imdm.sampling.ancestral import generation_seeds

RECIPE = "recipes/owt.toml"
VOCAB, MASK_ID = 50258, 50257       # GPT-2 tokens + the mask


class _Stop(Exception):
    pass


def seconds(fn, repeats: int):
    """Mean wall seconds of fn() (the sampler syncs with the GPU every step), and its last result."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16, 1024])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--estimate-from", type=int, default=1024)
    parser.add_argument("--subset", type=int, default=24)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("sampling_latency")
    cuda = torch.device("cuda")
    recipe = load_recipe(RECIPE, ["algorithm.name=imdm"])
    model = build_model(recipe, VOCAB, MASK_ID, cuda)
    with torch.no_grad():
        gen = torch.Generator(device=cuda).manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, device=cuda, generator=gen))
    process = build_process(recipe, MASK_ID, cuda)
    seeds = generation_seeds(recipe.sampling.seed, 0, args.batch, rng.STREAM_EVAL_SEED).to(cuda)

    def sample(steps: int, kernel: str, **kw):
        settings = dataclasses.replace(sampler_settings(recipe, steps), kernel=kernel)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return process.sample(model, settings, seeds, args.seq_len, **kw)

    # boundary rows (about 1e-6 of the draws) may differ; in a later step such a token changes
    # its whole sequence's logits, so 4-step samples are compared sequence by sequence
    fused, eager = sample(1, "triton").tokens, sample(1, "eager").tokens
    tokens_agree = float((fused == eager).float().mean())
    fused, eager = sample(4, "triton").tokens, sample(4, "eager").tokens
    sequences_agree = float((fused == eager).all(-1).float().mean())
    print(f"fused vs eager: 1 step {tokens_agree:.6f} of the tokens, 4 steps {sequences_agree:.3f} of the sequences "
          "identical", flush=True)
    assert tokens_agree >= 0.9999 and sequences_agree >= 0.9, (tokens_agree, sequences_agree)

    for steps in args.steps:
        repeats = 3 if steps <= 16 else 1
        fused_s, result = seconds(lambda: sample(steps, "triton"), repeats)
        if steps < args.estimate_from:
            eager_s, how = seconds(lambda: sample(steps, "eager"), repeats)[0], "timed in full"
        else:
            eager_s, how = steps * eager_step_seconds(sample, model, steps, args), (
                f"estimated: {steps} x mean of {args.subset} eager sampler steps at masked fraction 0.5")
        print(f"{steps:5d} steps: fused {fused_s:.3f} s, eager float64 {eager_s:.3f} s ({how})", flush=True)
        config = {"model": "small", "algorithm": "imdm", "batch": args.batch, "seq_len": args.seq_len,
                  "steps": steps, "autocast": "bfloat16", "cached": recipe.sampling.cached}
        metrics = {"seconds_per_batch": fused_s, "baseline_seconds_per_batch": eager_s, "baseline": how,
                   "speedup": eager_s / fused_s, "nfe": result.nfe}
        print(write_result("sampling_latency", RECIPE, config, metrics, out_dir=args.results_dir))


def eager_step_seconds(sample, model: torch.nn.Module, steps: int, args) -> float:
    """Mean seconds of one eager sampler step (network + step) on the `steps` grid from a
    half-masked batch at t = 0.5: the sampler is stopped at its (subset + 1)-th network call."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    start = torch.randint(0, MASK_ID, (args.batch, args.seq_len), device="cuda", generator=gen)
    start[torch.rand(args.batch, args.seq_len, device="cuda", generator=gen) < 0.5] = MASK_ID

    def run(limit: int) -> None:
        calls = []

        def stop_after_limit(module, inputs):
            calls.append(1)
            if len(calls) > limit:
                raise _Stop

        handle = model.register_forward_pre_hook(stop_after_limit)
        try:
            sample(steps, "eager", start=start, t_start=0.5)
        except _Stop:
            pass
        finally:
            handle.remove()

    run(2)
    return seconds(lambda: run(args.subset), 1)[0] / args.subset


if __name__ == "__main__":
    main()
