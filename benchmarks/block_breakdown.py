"""Where a DiT block's training time goes: forward + backward of one compiled block (bf16
autocast, fp32 residual stream, as in training) against variants that drop or replace a part of
it, and against its matmuls and attention alone (the floor that elementwise fusion cannot beat).

    python benchmarks/block_breakdown.py --size large --batch 16 [--variants block,no_dropout,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.gpu_timing import time_ms  # noqa: E402
from benchmarks.results_io import write_result  # noqa: E402
from imdm.models.dit import DiTBlock, DiTConfig  # noqa: E402
from imdm.models.layers import rotary_tables  # noqa: E402
from imdm.recipe.schema import MODEL_SIZES  # noqa: E402


class MatmulsAndAttention(nn.Module):
    """The block's matmuls and attention with nothing between them."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, c, cos, sin):
        b, l, d = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, d))
        return self.down(self.up(y))


def build(variant: str, d: int, blocks: int, heads: int) -> nn.Module:
    cfg = DiTConfig(vocab_size=50258, mask_id=50257, d_model=d, n_blocks=blocks, n_heads=heads)
    if variant == "block":
        return DiTBlock(cfg)
    if variant == "no_dropout":
        return DiTBlock(dataclasses.replace(cfg, dropout=0.0))
    if variant == "matmuls_attention":
        return MatmulsAndAttention(d, heads)
    raise ValueError(f"unknown variant {variant!r}")


def time_variant(variant: str, d: int, blocks: int, heads: int, batch: int, seq_len: int, iters: int) -> float:
    torch.manual_seed(0)
    block = build(variant, d, blocks, heads).cuda().train()
    for p in block.parameters():   # adaLN is zero-initialised: give every branch a signal
        nn.init.normal_(p, std=0.02)
    block.compile(fullgraph=True)
    x = torch.randn(batch, seq_len, d, device="cuda", requires_grad=True)
    c = torch.randn(batch, 128, device="cuda")
    cos, sin = rotary_tables(seq_len, d // heads, x.device)
    grad = torch.randn_like(x)
    extra = ()
    if "pending" in inspect.signature(block.forward).parameters:
        # a block that leaves its last residual branch to the next one: feed it the previous
        # block's, as every block but the first gets in the model, with dropout seeds
        branch = torch.randn(batch, seq_len, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        gate = torch.randn(batch, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        seeds = torch.tensor([1, 2, 3], device="cuda")
        extra = (seeds[1:], (branch, gate, seeds[:1]))

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = block(x, c, cos, sin, *extra)
        if extra:
            x_out, (pending, _, _) = out
            torch.autograd.backward([x_out, pending], [grad, grad.to(pending.dtype)])
        else:
            out.backward(grad)

    return time_ms(step, iters, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="large", choices=sorted(MODEL_SIZES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--variants", default="block,no_dropout,matmuls_attention")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    d, blocks, heads = MODEL_SIZES[args.size]
    rows = {}
    for variant in args.variants.split(","):
        rows[variant] = time_variant(variant, d, blocks, heads, args.batch, args.seq_len, args.iters)
        print(f"{variant:24s} {rows[variant]:8.3f} ms per block forward + backward", flush=True)
    write_result("block_breakdown", args.size, {"batch": args.batch, "seq_len": args.seq_len, "iters": args.iters},
                 {"ms_per_block_fwd_bwd": rows}, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
