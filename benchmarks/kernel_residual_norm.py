"""Residual + LayerNorm + adaLN kernel (imdm.kernels.residual_norm) against torch.compile of its
eager reference (what Inductor makes of the same ops) on CUDA: x float32 [B, L, d], bf16 branch,
gate, shift and scale, bf16 h, dropout 0.1, forward and forward + backward, in ms and as a share
of the HBM bandwidth for the bytes each must move. Also times the backward's launch alone (its
two kernels, buffers and parameter-gradient sums; no autograd) over its rows per program,
columns per program and warps.

    python -m benchmarks.kernel_residual_norm [--batch 16 --seq-len 1024 --d 1536] [--results-dir DIR]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_timing import bandwidth, hbm_peak, require_cuda, time_ms
from benchmarks.results_io import write_result
from imdm.kernels import residual_norm_triton
from imdm.kernels.residual_norm import residual_norm_modulate, residual_norm_reference

FORWARD_BYTES_PER_ENTRY = 4 + 2 + 4 + 2            # read x, y; write x_out, h
BACKWARD_BYTES_PER_ENTRY = 2 + 4 + 4 + 2 + 4 + 2   # read dh, dx_out, x_out, y; write dx, dy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("kernel_residual_norm")
    b, l, d = args.batch, args.seq_len, args.d
    g = torch.Generator(device="cuda").manual_seed(0)

    def leaf(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device="cuda", dtype=dtype, generator=g).requires_grad_()

    x, y, gate, weight = leaf(b, l, d, dtype=torch.float32), leaf(b, l, d), leaf(b, d), leaf(d, dtype=torch.float32)
    shift, scale, seed = leaf(b, d), leaf(b, d), torch.tensor([5], device="cuda")
    grad_x, grad_h = torch.randn_like(x), torch.randn(b, l, d, device="cuda", dtype=torch.bfloat16)
    compiled_reference = torch.compile(residual_norm_reference)

    def run(fn, backward):
        def call():
            x_out, h = fn(x, y, gate, seed, args.p, weight, shift, scale, 1e-5, torch.bfloat16)
            if backward:
                torch.autograd.backward([x_out, h], [grad_x, grad_h])
        return call

    def fused(*a):
        return residual_norm_modulate(*a[:-2], a[-1], eps=a[-2], backend="triton")

    peak, entries = hbm_peak(torch.cuda.get_device_name()), b * l * d
    rows = {}
    for name, fn in (("fused", fused), ("compiled_reference", compiled_reference)):
        fwd = time_ms(run(fn, False), args.iters)
        both = time_ms(run(fn, True), args.iters)
        rows[name] = {"forward_ms": fwd, "forward_backward_ms": both,
                      "forward": bandwidth(entries * FORWARD_BYTES_PER_ENTRY, fwd, peak),
                      "backward": bandwidth(entries * BACKWARD_BYTES_PER_ENTRY, both - fwd, peak)}
    knobs = ("BACKWARD_ROWS", "BACKWARD_CHUNK", "BACKWARD_WARPS")
    defaults = tuple(getattr(residual_norm_triton, k) for k in knobs)
    with torch.no_grad():
        saved = residual_norm_triton.launch_forward(x, y, gate, seed, args.p, weight, shift, scale, 1e-5,
                                                    torch.bfloat16)

    def backward_kernels():
        x_out, _, mean, rstd = saved
        residual_norm_triton.launch_backward(grad_h, grad_x, x_out, mean, rstd, weight, scale, y, gate, seed, args.p)

    sweep = {}
    for setting in (defaults, (16, 512, 2), (16, 512, 4), (16, 512, 8), (32, 512, 4), (64, 512, 4), (16, 256, 4),
                    (16, 1024, 4), (16, 1024, 8)):
        for knob, value in zip(knobs, setting):
            setattr(residual_norm_triton, knob, value)
        ms = time_ms(backward_kernels, args.iters)
        sweep["rows %d chunk %d warps %d" % setting] = {"ms": ms, **bandwidth(entries * BACKWARD_BYTES_PER_ENTRY, ms,
                                                                               peak)}
    for knob, value in zip(knobs, defaults):
        setattr(residual_norm_triton, knob, value)
    for name, r in rows.items():
        print(f"{name:20s} fwd {r['forward_ms']:.3f} ms ({r['forward']['hbm_fraction'] or 0:.0%} HBM)  fwd+bwd "
              f"{r['forward_backward_ms']:.3f} ms (bwd {r['backward']['hbm_fraction'] or 0:.0%} HBM)")
    for setting, r in sweep.items():
        print(f"backward launch alone, {setting}: {r['ms']:.3f} ms ({r['hbm_fraction'] or 0:.0%} HBM)")
    write_result("kernel_residual_norm", "", {"batch": b, "seq_len": l, "d": d, "p": args.p, "iters": args.iters,
                                              "backward_rows_chunk_warps": defaults},
                 {"fwd_bwd_ms": rows["fused"]["forward_backward_ms"],
                  "baseline_fwd_bwd_ms": rows["compiled_reference"]["forward_backward_ms"],
                  **rows, "backward_kernels_by_setting": sweep}, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
