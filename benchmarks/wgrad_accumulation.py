"""Weight-gradient accumulation over micro-batches, at the DiT blocks' weight shapes, on CUDA:
what autograd does under autocast today (the bf16 weight-gradient product, then its float32 cast
and the add into the float32 .grad) against one GEMM that reads and writes the float32 gradient
itself (`aten::addmm.dtype_out`, beta 1, in place), the form imdm.models.gemm_grad_linear runs
on one GPU. Each variant is checked against a float64 product first.

    python -m benchmarks.wgrad_accumulation [--results-dir DIR]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_timing import require_cuda, time_ms
from benchmarks.results_io import write_result

MODELS = {"large": (1536, 16 * 1024), "small": (768, 32 * 1024)}   # d, tokens per micro-batch


def weight_shapes(d: int) -> dict:
    return {"qkv": (3 * d, d), "attn_out": (d, d), "mlp_up": (4 * d, d), "mlp_down": (d, 4 * d)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--layout", choices=["rows", "transposed"], default="rows",
                        help="the output gradient as autograd hands it over, [tokens, out] (rows, transposed "
                             "for the product), or copied to [out, tokens] first (the first scouting run's layout)")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("wgrad_accumulation")
    g = torch.Generator(device="cuda").manual_seed(0)
    results = {}
    for model, (d, tokens) in MODELS.items():
        rows, totals = {}, {"autograd_ms": 0.0, "fused_ms": 0.0}
        for name, (n_out, n_in) in weight_shapes(d).items():
            dy = torch.randn(tokens, n_out, device="cuda", dtype=torch.bfloat16, generator=g)
            dy_t = dy.t() if args.layout == "rows" else dy.t().contiguous()
            x = torch.randn(tokens, n_in, device="cuda", dtype=torch.bfloat16, generator=g)
            grad = torch.randn(n_out, n_in, device="cuda", generator=g)
            truth = grad.double() + dy_t.double() @ x.double()
            autograd = grad.clone().add_(torch.mm(dy_t, x).float())
            fused = grad.clone()
            torch.ops.aten.addmm.dtype_out(fused, dy_t, x, torch.float32, out=fused)
            scale = truth.abs().max().item()
            errors = {k: (v.double() - truth).abs().max().item() / scale for k, v in (("autograd", autograd),
                                                                                        ("fused", fused))}
            acc = grad.clone()
            t_autograd = time_ms(lambda: acc.add_(torch.mm(dy_t, x).float()), args.iters)
            t_fused = time_ms(lambda: torch.ops.aten.addmm.dtype_out(acc, dy_t, x, torch.float32, out=acc), args.iters)
            t_mm = time_ms(lambda: torch.mm(dy_t, x), args.iters)
            rows[name] = {"weight": [n_out, n_in], "tokens": tokens, "bf16_mm_ms": t_mm, "autograd_ms": t_autograd,
                          "fused_ms": t_fused, "max_error_relative": errors}
            totals["autograd_ms"] += t_autograd
            totals["fused_ms"] += t_fused
            print(f"{model:5s} {name:8s} [{n_out}, {n_in}] x {tokens}: bf16 mm {t_mm:.3f} ms, mm + cast + add "
                  f"{t_autograd:.3f}, addmm into float32 {t_fused:.3f}; errors {errors}")
        results[model] = {"weights": rows, **totals}
        print(f"{model}: per block and micro-batch {totals['autograd_ms']:.3f} ms against {totals['fused_ms']:.3f}")
    write_result("wgrad_accumulation", "", {"iters": args.iters, "layout": args.layout, "models": MODELS}, results, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
