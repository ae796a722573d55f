"""Bias + tanh-GELU kernel (imdm.kernels.bias_gelu) against torch.compile of its eager reference
(what Inductor makes of the same ops) on CUDA, at the DiT MLP's hidden activation: bf16 u
[B, L, 4d], float32 bias, forward and forward + backward (the input and bias gradients), in ms
and as a share of the HBM bandwidth for the bytes each must move. Also times the fused backward's
launch alone over its tile (rows x columns) and warps. Each result is checked against the
reference first.

    python benchmarks/kernel_bias_gelu.py [--batch 16 --seq-len 1024 --width 6144] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.gpu_timing import bandwidth, hbm_peak, time_ms  # noqa: E402
from benchmarks.results_io import write_result  # noqa: E402
from imdm.kernels import bias_gelu_triton  # noqa: E402
from imdm.kernels.bias_gelu import bias_gelu, bias_gelu_reference  # noqa: E402

FORWARD_BYTES_PER_ENTRY = 2 + 2          # read u; write y
BACKWARD_BYTES_PER_ENTRY = 2 + 2 + 2     # read dy, u; write du
KNOBS = ("TILE_ROWS", "TILE_COLS", "WARPS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--width", type=int, default=6144, help="4 d: 6144 for the large model, 3072 for small")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    shape = (args.batch, args.seq_len, args.width)
    g = torch.Generator(device="cuda").manual_seed(0)
    u = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    b = torch.randn(args.width, device="cuda", generator=g).requires_grad_()
    dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
    compiled_reference = torch.compile(bias_gelu_reference)

    def fused(u, b):
        return bias_gelu(u, b, backend="triton")

    def outputs(fn):
        u.grad = b.grad = None
        y = fn(u, b)
        y.backward(dy)
        return y.detach().float(), u.grad.float(), b.grad.float()

    for got, want, name in zip(outputs(fused), outputs(compiled_reference), ("y", "du", "db")):
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= 2 ** -7 * scale, f"fused {name} differs from the reference"

    def run(fn, backward):
        def call():
            y = fn(u, b)
            if backward:
                torch.autograd.backward(y, dy, inputs=[u, b])
        return call

    peak, entries = hbm_peak(torch.cuda.get_device_name()), u.numel()
    rows = {}
    for name, fn in (("fused", fused), ("compiled_reference", compiled_reference)):
        fwd = time_ms(run(fn, False), args.iters)
        both = time_ms(run(fn, True), args.iters)
        rows[name] = {"forward_ms": fwd, "forward_backward_ms": both,
                      "forward": bandwidth(entries * FORWARD_BYTES_PER_ENTRY, fwd, peak),
                      "backward": bandwidth(entries * BACKWARD_BYTES_PER_ENTRY, both - fwd, peak)}
    defaults = tuple(getattr(bias_gelu_triton, k) for k in KNOBS)
    sweep = {}
    for setting in (defaults, (32, 128, 4), (32, 256, 4), (64, 256, 8), (128, 128, 8), (16, 512, 4), (64, 64, 4)):
        for knob, value in zip(KNOBS, setting):
            setattr(bias_gelu_triton, knob, value)
        ms = time_ms(lambda: bias_gelu_triton.launch_backward(dy, u.detach(), b.detach()), args.iters)
        sweep["rows %d cols %d warps %d" % setting] = {"ms": ms, **bandwidth(entries * BACKWARD_BYTES_PER_ENTRY, ms,
                                                                              peak)}
    for knob, value in zip(KNOBS, defaults):
        setattr(bias_gelu_triton, knob, value)
    for name, r in rows.items():
        print(f"{name:20s} fwd {r['forward_ms']:.3f} ms ({r['forward']['hbm_fraction'] or 0:.0%} HBM)  fwd+bwd "
              f"{r['forward_backward_ms']:.3f} ms (bwd {r['backward']['hbm_fraction'] or 0:.0%} HBM)")
    for setting, r in sweep.items():
        print(f"backward launch alone, {setting}: {r['ms']:.3f} ms ({r['hbm_fraction'] or 0:.0%} HBM)")
    write_result("kernel_bias_gelu", "", {"batch": args.batch, "seq_len": args.seq_len, "width": args.width,
                                          "iters": args.iters, "tile_rows_cols_warps": defaults},
                 {**rows, "backward_kernels_by_setting": sweep}, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
