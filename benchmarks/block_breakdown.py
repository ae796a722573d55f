"""Where a DiT block's training time goes: forward + backward of one compiled block (bf16
autocast, fp32 residual stream, as in training) against variants that drop or replace a part of
it, and against its matmuls and attention alone (the floor that elementwise fusion cannot beat).

    python -m benchmarks.block_breakdown --size large --batch 16 [--variants block,no_dropout,...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.gpu_timing import require_cuda, time_ms
from benchmarks.results_io import write_result
from imdm.models.attention import split_heads
from imdm.models.dit import DiTBlock, DiTConfig
from imdm.models.gemm_grad_linear import frozen_weight_copies, keep_weight_grads
from imdm.models.layers import rotary_tables
from imdm.recipe.schema import MODEL_SIZES


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
        q, k, v = split_heads(self.qkv(x), self.n_heads)
        y = self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, d))
        return self.down(self.up(y))


class AttentionOnly(nn.Module):
    """SDPA alone on the block's shapes, through one backend (q, k, v: views of x, as in the block)."""

    def __init__(self, n_heads: int, backend: SDPBackend):
        super().__init__()
        self.n_heads, self.backend = n_heads, backend

    def forward(self, x, c, cos, sin):
        b, l, d = x.shape
        q, k, v = split_heads(x.to(torch.bfloat16).repeat(1, 1, 3), self.n_heads)
        with sdpa_kernel([self.backend]):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, l, d)


ATTENTION_BACKENDS = {"attention_cudnn": SDPBackend.CUDNN_ATTENTION, "attention_flash": SDPBackend.FLASH_ATTENTION,
                      "attention_efficient": SDPBackend.EFFICIENT_ATTENTION}


def build(variant: str, d: int, blocks: int, heads: int) -> nn.Module:
    cfg = DiTConfig(vocab_size=50258, mask_id=50257, d_model=d, n_blocks=blocks, n_heads=heads)
    if variant in ("block", "bf16_params", "max_autotune", "kept_grads", "weight_copies"):
        return DiTBlock(cfg)
    if variant in ATTENTION_BACKENDS:
        return AttentionOnly(heads, ATTENTION_BACKENDS[variant])
    if variant == "no_dropout":
        return DiTBlock(dataclasses.replace(cfg, dropout=0.0))
    if variant == "inductor_mlp":
        block = DiTBlock(cfg)
        block.mlp.kernels = "eager"
        return block
    if variant == "matmuls_attention":
        return MatmulsAndAttention(d, heads)
    raise ValueError(f"unknown variant {variant!r}")


def time_variant(variant: str, d: int, blocks: int, heads: int, batch: int, seq_len: int, iters: int,
                 profile: bool) -> tuple[float, dict | None]:
    """(ms per forward + backward, the kernel table or None). Variants beyond the model's own:
    bf16_params (bf16 matmul weights, so no per-call casts: the floor of a bf16 weight copy kept
    across micro-batches), max_autotune (Inductor's GEMM templates with fused epilogues),
    inductor_mlp (the MLP's GELU as Inductor's kernels instead of cuBLASLt epilogues), kept_grads
    (weight gradients added into kept float32 `.grad`, as the trainer does on one GPU) and
    weight_copies (that, computing with bf16 weight copies cast once before timing, as the
    trainer does once per step)."""
    torch.manual_seed(0)
    block = build(variant, d, blocks, heads).cuda().train()
    for p in block.parameters():   # adaLN is zero-initialised: give every branch a signal
        nn.init.normal_(p, std=0.02)
    if variant == "bf16_params":
        for module in block.modules():
            if isinstance(module, nn.Linear):
                module.to(torch.bfloat16)
    copies = contextlib.nullcontext()
    if variant in ("kept_grads", "weight_copies"):
        keep_weight_grads(block)
        if variant == "weight_copies":
            copies = frozen_weight_copies(block, torch.bfloat16)
    block.compile(fullgraph=True, mode="max-autotune-no-cudagraphs" if variant == "max_autotune" else None)
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
            out.backward(grad.to(out.dtype))

    with copies:
        ms = time_ms(step, iters, warmup=5)
        return ms, kernel_table(step, iters) if profile else None


def kernel_table(step, iters: int) -> dict:
    """GPU kernels of `iters` calls of `step`: {name: [ms per call, launches per call]}, longest
    first, with totals by kind (matmul, attention, triton, other)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    rows = {e.key: [e.self_device_time_total / 1e3 / iters, e.count / iters] for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0}
    rows = dict(sorted(rows.items(), key=lambda kv: -kv[1][0]))
    kinds = {"matmul": ("gemm", "nvjet", "cutlass", "sm90_xmma"), "attention": ("cudnn", "flash", "fmha", "attention"),
             "triton": ("triton",)}
    totals = dict.fromkeys([*kinds, "other"], 0.0)
    for name, (ms, _) in rows.items():
        kind = next((k for k, marks in kinds.items() if any(m in name.lower() for m in marks)), "other")
        totals[kind] += ms
    return {"totals_ms": totals, "kernels": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="large", choices=sorted(MODEL_SIZES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--variants", default="block,no_dropout,matmuls_attention")
    parser.add_argument("--profile", action="store_true", help="also record each variant's GPU kernels")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("block_breakdown")
    d, blocks, heads = MODEL_SIZES[args.size]
    rows, tables = {}, {}
    for variant in args.variants.split(","):
        try:
            rows[variant], table = time_variant(variant, d, blocks, heads, args.batch, args.seq_len, args.iters,
                                                args.profile)
        except Exception as err:   # one variant's failure (a backend this GPU lacks) must not lose the rest
            rows[variant], table = None, None
            print(f"{variant:24s} FAILED: {type(err).__name__}: {str(err)[:300]}", flush=True)
            continue
        print(f"{variant:24s} {rows[variant]:8.3f} ms per block forward + backward", flush=True)
        if table:
            tables[variant] = table
            print("  by kind (ms): " + ", ".join(f"{k} {v:.3f}" for k, v in table["totals_ms"].items()))
            for name, (ms, count) in list(table["kernels"].items())[:25]:
                print(f"  {ms:7.3f} ms x{count:4.1f}  {name[:110]}")
    metrics = {"ms_per_block_fwd_bwd": rows, **({"kernels": tables} if tables else {})}
    write_result("block_breakdown", args.size, {"batch": args.batch, "seq_len": args.seq_len, "iters": args.iters},
                 metrics, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
