"""The DiT block's MLP (Linear -> GELU(tanh) -> Linear, bf16 autocast, weight gradients kept in
float32 `.grad` as on one GPU), forward and forward + backward, compiled: GELU in the cuBLASLt
epilogues (imdm.kernels.gelu_mlp) against Inductor's GELU kernels between cuBLAS matmuls. First
checks both epilogue GEMMs against a float64 computation from the same bf16 operands, beside the
eager reference's error.

    python -m benchmarks.gelu_mlp [--results-dir DIR]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_timing import require_cuda, time_ms
from benchmarks.results_io import write_result
from imdm.kernels.gelu_mlp import (gelu_tanh_derivative, linear_gelu_reference,
                                   matmul_dgelu_reference)
from imdm.models.dit import BlockMLP
from imdm.models.gemm_grad_linear import keep_weight_grads

MODELS = {"large": (1536, 16 * 1024), "small": (768, 32 * 1024)}   # d, tokens per micro-batch


def relative_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    return ((x.double() - truth).abs().max() / truth.abs().max()).item()


def epilogue_errors(d: int, tokens: int) -> dict:
    """Largest deviation from float64 (relative to the largest entry) of each op's outputs, cuBLASLt
    and the eager reference, from the same bf16 operands."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, d, device="cuda", generator=g).bfloat16()
    w1 = (torch.randn(4 * d, d, device="cuda", generator=g) / d ** 0.5).bfloat16()
    b1 = torch.randn(4 * d, device="cuda", generator=g).bfloat16()
    dy = torch.randn(tokens, d, device="cuda", generator=g).bfloat16()
    w2 = (torch.randn(d, 4 * d, device="cuda", generator=g) / (4 * d) ** 0.5).bfloat16()
    u64 = x.double() @ w1.double().t() + b1.double()
    h64 = torch.nn.functional.gelu(u64, approximate="tanh")
    h, u = torch.ops.imdm.linear_gelu(x, w1, b1)
    h_ref, u_ref = linear_gelu_reference(x, w1, b1)
    du64 = (dy.double() @ w2.double()) * gelu_tanh_derivative(u.double())   # at the u both use
    du, du_ref = torch.ops.imdm.matmul_dgelu(dy, w2, u), matmul_dgelu_reference(dy, w2, u)
    return {"u": [relative_error(u, u64), relative_error(u_ref, u64)],
            "h": [relative_error(h, h64), relative_error(h_ref, h64)],
            "du": [relative_error(du, du64), relative_error(du_ref, du64)]}


def time_mlp(d: int, tokens: int, kernels: str, iters: int) -> dict:
    torch.manual_seed(0)
    mlp = BlockMLP(d, kernels).cuda()
    keep_weight_grads(mlp)
    compiled = torch.compile(mlp, fullgraph=True)
    x = torch.randn(tokens // 1024, 1024, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return compiled(x)

    def step():
        forward().backward(dy)

    with torch.no_grad():
        forward_ms = time_ms(forward, iters)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step_ms = time_ms(step, iters)
    return {"forward_ms": forward_ms, "forward_backward_ms": step_ms,
            "peak_extra_gib": (torch.cuda.max_memory_allocated() - base) / 2 ** 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("gelu_mlp")
    results = {}
    for model, (d, tokens) in MODELS.items():
        errors = epilogue_errors(d, tokens)
        print(f"{model}: errors [cuBLASLt, eager reference] against float64: {errors}", flush=True)
        timings = {name: time_mlp(d, tokens, kernels, args.iters) for name, kernels in
                   (("inductor_gelu", "eager"), ("epilogue_gelu", "auto"))}
        for name, t in timings.items():
            print(f"{model} {name:14s} forward {t['forward_ms']:.3f} ms, forward + backward "
                  f"{t['forward_backward_ms']:.3f} ms, peak +{t['peak_extra_gib']:.2f} GiB", flush=True)
        results[model] = {"d": d, "tokens": tokens, "errors_cublaslt_reference": errors, **timings}
    write_result("gelu_mlp", "", {"iters": args.iters, "models": MODELS}, results, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
