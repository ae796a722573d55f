"""Rotary position embedding between the fused QKV projection and SDPA, written three ways for
Inductor, at a DiT's attention shapes (default: the large model at micro-batch 32): forward +
backward of qkv -> rotary q, k (and v) -> cuDNN attention -> [B, L, d], compiled. Reports each
way's time, the time of its kernels other than attention's, those kernels by name, and whether its
outputs and qkv gradient equal the model's own formulation's bit for bit.

    permute_select   the model's SelfAttention (imdm.models.attention.split_heads, then rotary)
    unbind           view, unbind(2), transpose(1, 2): autograd's backward stacks the gradients
    explicit_stack   a custom autograd.Function whose backward rotates dq, dk back and stacks
                     them with dv straight into the qkv gradient's layout

    python benchmarks/rotary_layouts.py [--batch 32 --d 1536 --heads 16] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import sdpa_kernel  # noqa: E402

from benchmarks.block_breakdown import kernel_table  # noqa: E402
from benchmarks.gpu_timing import time_ms  # noqa: E402
from benchmarks.results_io import write_result  # noqa: E402
from imdm.models.attention import SDPA_PRIORITY, split_heads  # noqa: E402
from imdm.models.layers import apply_rotary, rotary_tables  # noqa: E402


def permute_select(qkv, heads, cos, sin):
    q, k, v = split_heads(qkv, heads)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def unbind(qkv, heads, cos, sin):
    b, l, three_d = qkv.shape
    q, k, v = (t.transpose(1, 2) for t in qkv.view(b, l, 3, heads, three_d // (3 * heads)).unbind(2))
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def _rotate_back(g, cos, sin):
    """The transpose of apply_rotary's map: g cos + R^T(g sin), R^T(v) = (v2, -v1), in float32."""
    gf = g.float()
    half = gf.shape[-1] // 2
    gs = gf * sin
    return (gf * cos + torch.cat([gs[..., half:], -gs[..., :half]], dim=-1)).to(g.dtype)


class _ExplicitStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.shape = qkv.shape
        return unbind(qkv, heads, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        parts = [_rotate_back(dq, cos, sin), _rotate_back(dk, cos, sin), dv]
        return torch.stack([p.transpose(1, 2) for p in parts], dim=2).reshape(ctx.shape), None, None, None


def explicit_stack(qkv, heads, cos, sin):
    return _ExplicitStack.apply(qkv, heads, cos, sin)


WAYS = {"permute_select": permute_select, "unbind": unbind, "explicit_stack": explicit_stack}


def attention_step(way, heads: int):
    def step(qkv, cos, sin):
        q, k, v = way(qkv, heads, cos, sin)
        with sdpa_kernel(SDPA_PRIORITY, set_priority=True):
            y = F.scaled_dot_product_attention(q, k, v)
        b, _, l, _ = y.shape
        return y.transpose(1, 2).reshape(b, l, -1)
    return torch.compile(step, fullgraph=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--d", type=int, default=1536)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(args.batch, args.seq_len, 3 * args.d, device="cuda", generator=g).bfloat16().requires_grad_()
    dy = torch.randn(args.batch, args.seq_len, args.d, device="cuda", generator=g).bfloat16()
    cos, sin = rotary_tables(args.seq_len, args.d // args.heads, "cuda")
    results, reference = {}, None
    for name, way in WAYS.items():
        step = attention_step(way, args.heads)

        def run():
            qkv.grad = None
            step(qkv, cos, sin).backward(dy)
        run()
        out = (step(qkv, cos, sin).detach(), qkv.grad.clone())
        reference = reference or out
        table = kernel_table(run, 5)
        rest = {k: v for k, v in table["kernels"].items() if not ("sdpa" in k or "cudnn" in k)}
        results[name] = {"ms_fwd_bwd": time_ms(run, args.iters), "non_attention_kernels_ms": sum(v[0] for v in rest.values()),
                         "non_attention_kernels": rest,
                         "bit_identical_to_permute_select": all(torch.equal(a, b) for a, b in zip(out, reference))}
        print(f"{name:15s} {results[name]['ms_fwd_bwd']:.3f} ms fwd+bwd, kernels besides attention "
              f"{results[name]['non_attention_kernels_ms']:.3f} ms, identical {results[name]['bit_identical_to_permute_select']}")
        for kernel, (ms, count) in rest.items():
            print(f"    {ms:.3f} ms x {count:.0f}  {kernel[:100]}")
    config = {k: v for k, v in vars(args).items() if k != "results_dir"}
    write_result("rotary_layouts", "", config, results, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
