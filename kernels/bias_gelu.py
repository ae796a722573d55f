"""Bias + tanh-GELU kernel: the DiT MLP's activation, between its two matmuls.

Fuses:    y = GELU_tanh(u + b), u the up-projection's bias-free matmul and b its bias, and the
          backward in one pass over u and dy: du = dy * GELU'(u + b), with the bias gradient's
          column sums per tile of rows (reduced afterwards).
Replaces: the bias epilogue of cuBLAS's up-projection and Inductor's GELU; in the backward,
          Inductor's two kernels (du, then the bias gradient, recomputed from a second read of dy
          and u).
Measured: see README, "Measured".

Both passes are torch.library.triton_op's, as in imdm.kernels.residual_norm. Shapes: u [..., n]
(bf16 under autocast, or float32), b [n] (any float dtype); y and du in u's dtype, db in b's.
The arithmetic is float32; the reference rounds u + b to u's dtype nowhere, so the two agree to
float32 rounding, and to the output dtype's rounding in bf16. Triton kernels in
bias_gelu_triton.py; backend "auto" = Triton on CUDA tensors, the eager reference elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op

from imdm.kernels.backend import use_triton


def bias_gelu_reference(u: Tensor, b: Tensor) -> Tensor:
    """GELU_tanh(u + b) in float32, returned in u's dtype (autograd gives the backward)."""
    return F.gelu(u.float() + b.float(), approximate="tanh").to(u.dtype)


@triton_op("imdm::bias_gelu", mutates_args=())
def _forward_op(u: Tensor, b: Tensor) -> Tensor:
    from imdm.kernels.bias_gelu_triton import launch_forward
    return launch_forward(u, b)


@triton_op("imdm::bias_gelu_backward", mutates_args=())
def _backward_op(dy: Tensor, u: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    from imdm.kernels.bias_gelu_triton import launch_backward
    return launch_backward(dy, u, b)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    u, b = ctx.saved_tensors
    du, db = _backward_op(dy.contiguous(), u, b)
    return du, db.to(b.dtype)


_forward_op.register_autograd(_backward, setup_context=_save)


def bias_gelu(u: Tensor, b: Tensor, backend: str = "auto") -> Tensor:
    """GELU_tanh(u + b) over the last dimension of u, in u's dtype."""
    if u.shape[-1] != b.shape[0] or b.dim() != 1:
        raise ValueError(f"bias_gelu: bias of shape {tuple(b.shape)} does not match inputs of shape {tuple(u.shape)}")
    if not use_triton(backend, u):
        return bias_gelu_reference(u, b)
    return _forward_op(u.contiguous(), b.contiguous())
