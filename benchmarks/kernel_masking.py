"""Masking kernels (imdm.kernels.masking) against torch.compile of the eager reference and the
eager reference itself, on CUDA, at the shapes of a training micro-batch: B x L positions, about
half masked, noise width `dim`. Each case checks the kernel against the eager numbers first,
then times it with CUDA events (host calls queued behind a GPU sleep, so launch overhead is not
counted) and reports ms, bytes the kernel must read + write, GB/s and the fraction of the
device's HBM bandwidth.

    python -m benchmarks.kernel_masking [--batch 32 --seq-len 1024 --dim 2048] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import functools

import torch

from benchmarks.gpu_timing import bandwidth, hbm_peak, require_cuda, time_ms
from benchmarks.results_io import device_name, write_result
from imdm import rng
from imdm.diffusion import forward_process as eager
from imdm.kernels import masking

def cast(fn, dtype, *args):
    return fn(*args).to(dtype)


def measure(kernel, baselines: dict, nbytes: int, iters: int, peak: float | None) -> dict:
    ms = time_ms(kernel, iters)
    row = {"ms": ms, **bandwidth(nbytes, ms, peak)}
    for name, fn in baselines.items():
        row[f"baseline_{name}_ms"] = time_ms(fn, iters)
    print(f"{ms * 1e3:9.1f} us  {row['gb_per_s']:8.1f} GB/s  hbm {row['hbm_fraction'] or 0:.3f}  "
          + "  ".join(f"{k} {v * 1e3:.1f} us" for k, v in row.items() if k.startswith("baseline")), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--masked-fraction", type=float, default=0.5)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("kernel_masking")
    cuda, batch, seq_len, dim = torch.device("cuda"), args.batch, args.seq_len, args.dim
    peak = hbm_peak(device_name())
    seeds = rng.derive_seed(7, torch.arange(batch), rng.STREAM_SAMPLE_SEED).to(cuda)
    move_prob = torch.full((batch,), args.masked_fraction, device=cuda)
    masked = eager.mask_positions(seeds, seq_len, move_prob)
    rows_b, rows_l = torch.nonzero(masked, as_tuple=True)
    row_seeds, n_rows = seeds[rows_b], rows_b.numel()
    compiled_rows = torch.compile(eager.mask_noise_rows, dynamic=True)
    compiled_all = torch.compile(eager.mask_noise, dynamic=True)
    index_bytes = n_rows * 16     # seeds and positions, int64
    cases = {}

    for dist, dtype in [("uniform", torch.float32), ("uniform", torch.bfloat16), ("normal", torch.float32)]:
        name = f"rows_{dist}_{str(dtype).removeprefix('torch.')}"
        print(f"{name}: M {n_rows} x dim {dim}", flush=True)
        kernel = functools.partial(masking.mask_noise_rows, row_seeds, rows_l, dim, dist, out_dtype=dtype)
        ref = eager.mask_noise_rows(row_seeds, rows_l, dim, dist).to(dtype)
        if dist == "uniform":
            assert torch.equal(kernel(), ref), name
        else:
            torch.testing.assert_close(kernel(), ref, rtol=1e-5, atol=1e-5)
        del ref
        baselines = {"compiled": functools.partial(cast, compiled_rows, dtype, row_seeds, rows_l, dim, dist),
                     "eager": functools.partial(cast, eager.mask_noise_rows, dtype, row_seeds, rows_l, dim, dist)}
        nbytes = index_bytes + n_rows * dim * dtype.itemsize
        cases[name] = measure(kernel, baselines, nbytes, args.iters, peak)

    print(f"all_positions_uniform_float32: B {batch} x L {seq_len} x dim {dim}, zero where unmasked", flush=True)
    kernel = functools.partial(masking.mask_noise, seeds, seq_len, dim, "uniform", masked=masked)
    full = eager.mask_noise(seeds, seq_len, dim, "uniform")
    assert torch.equal(kernel(), torch.where(masked[..., None], full, 0.0))
    del full
    baselines = {"compiled": functools.partial(compiled_all, seeds, seq_len, dim, "uniform"),
                 "eager": functools.partial(eager.mask_noise, seeds, seq_len, dim, "uniform")}
    nbytes = batch * 8 + batch * seq_len + batch * seq_len * dim * 4
    cases["all_positions_uniform_float32"] = measure(kernel, baselines, nbytes, args.iters, peak)

    head = cases["rows_uniform_float32"]
    config = {"batch": batch, "seq_len": seq_len, "dim": dim, "masked_fraction": args.masked_fraction,
              "rows": n_rows, "iters": args.iters, "hbm_bytes_per_s": peak}
    metrics = {"ms": head["ms"], "gb_per_s": head["gb_per_s"], "hbm_fraction": head["hbm_fraction"],
               "baseline_compiled_ms": head["baseline_compiled_ms"], "cases": cases}
    path = write_result("kernel_masking", "", config, metrics, out_dir=args.results_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
