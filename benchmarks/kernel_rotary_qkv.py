"""Rotary QKV kernel (imdm.kernels.rotary_qkv) against torch.compile of its eager reference (what
Inductor makes of the same ops) on CUDA: bf16 qkv [B, L, 3 d] to q, k, v [B, H, L, hd] and back,
forward and forward + backward, in ms and as a share of the HBM bandwidth for the bytes each must
move. The results are checked against the reference first.

    python benchmarks/kernel_rotary_qkv.py [--batch 16 --seq-len 1024 --heads 16 --head-dim 96] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.gpu_timing import bandwidth, hbm_peak, time_ms  # noqa: E402
from benchmarks.results_io import write_result  # noqa: E402
from imdm.kernels.rotary_qkv import rotary_qkv, rotary_qkv_reference  # noqa: E402
from imdm.models.layers import rotary_tables  # noqa: E402

BYTES_PER_ENTRY = 2 + 2     # each pass reads and writes every entry of qkv once (bf16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=96)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    b, l, h, hd = args.batch, args.seq_len, args.heads, args.head_dim
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(b, l, 3 * h * hd, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
    grads = [torch.randn(b, h, l, hd, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3)]
    cos, sin = rotary_tables(l, hd, "cuda")
    compiled_reference = torch.compile(rotary_qkv_reference)

    def fused(qkv, cos, sin, heads):
        return rotary_qkv(qkv, cos, sin, heads, backend="triton")

    def outputs(fn):
        qkv.grad = None
        outs = fn(qkv, cos, sin, h)
        torch.autograd.backward(outs, grads)
        return [o.detach().float() for o in outs] + [qkv.grad.float()]

    for got, want, name in zip(outputs(fused), outputs(compiled_reference), ("q", "k", "v", "dqkv")):
        assert (got - want).abs().max().item() <= 2 ** -7 * want.abs().max().item(), f"fused {name} differs"

    def run(fn, backward):
        def call():
            outs = fn(qkv, cos, sin, h)
            if backward:
                torch.autograd.backward(outs, grads, inputs=[qkv])
        return call

    peak, entries = hbm_peak(torch.cuda.get_device_name()), qkv.numel()
    rows = {}
    for name, fn in (("fused", fused), ("compiled_reference", compiled_reference)):
        fwd = time_ms(run(fn, False), args.iters)
        both = time_ms(run(fn, True), args.iters)
        rows[name] = {"forward_ms": fwd, "forward_backward_ms": both,
                      "forward": bandwidth(entries * BYTES_PER_ENTRY, fwd, peak),
                      "backward": bandwidth(entries * BYTES_PER_ENTRY, both - fwd, peak)}
        print(f"{name:20s} fwd {fwd:.3f} ms ({rows[name]['forward']['hbm_fraction'] or 0:.0%} HBM)  fwd+bwd "
              f"{both:.3f} ms (bwd {rows[name]['backward']['hbm_fraction'] or 0:.0%} HBM)")
    write_result("kernel_rotary_qkv", "", {"batch": b, "seq_len": l, "heads": h, "head_dim": hd, "iters": args.iters},
                 rows, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
