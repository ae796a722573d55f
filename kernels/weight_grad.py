"""Weight gradients accumulated by the weight-gradient GEMM itself, and the weight a matmul
computes with (its frozen low-precision copy when there is one).

Fuses: the weight-gradient product, its float32 cast and the add into the float32 `.grad`.
Replaces: autograd's path under bf16 autocast, three kernels per weight and micro-batch (a bf16
product, a cast, AccumulateGrad's add), which also rounds each micro-batch's product to bf16.
One GEMM reads and writes `.grad` in place with float32 accumulation (`aten::addmm.dtype_out`,
beta 1, on CUDA; the eager reference upcasts and adds). Users: imdm.models.gemm_grad_linear,
the fused MLP (gelu_mlp) and the fused masked loss (masked_loss)."""

from __future__ import annotations

from typing import Optional

import torch


@torch.library.custom_op("imdm::accumulate_weight_grad", mutates_args=("grad",))
def accumulate_weight_grad(grad: torch.Tensor, dy: torch.Tensor, x: torch.Tensor) -> None:
    """grad [out, in] += dy[N, out]^T x[N, in], accumulated in grad's dtype (float32)."""
    if grad.device.type == "cuda" and dy.dtype in (torch.bfloat16, torch.float16) and grad.dtype == torch.float32:
        torch.ops.aten.addmm.dtype_out(grad, dy.t(), x, torch.float32, out=grad)
    else:
        grad.addmm_(dy.t().to(grad.dtype), x.to(grad.dtype))


@accumulate_weight_grad.register_fake
def _(grad, dy, x):
    return None


def matmul_weight(weight: torch.Tensor, copy: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """`weight` in `dtype`: its frozen copy when that has `dtype`, else cast now."""
    return copy if copy is not None and copy.dtype == dtype else weight.to(dtype)
