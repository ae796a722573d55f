"""Rotary QKV kernel: the split of the fused QKV projection into heads, with rotary positions.

Fuses:    q, k, v [B, H, L, hd] from qkv [B, L, 3 * H * hd]: q and k rotated by position
          (rotate-half over the full head, float32 arithmetic), v copied; and the backward in one
          pass that reads dq, dk, dv (any strides) and writes the qkv gradient.
Replaces: Inductor's fusions of the view/permute, `apply_rotary` and their backward (two kernels
          there, the second re-reading an intermediate).
Measured: see README, "Measured".

Both passes are torch.library.triton_op's, as in imdm.kernels.residual_norm. cos and sin are the
float32 [L, hd] tables of imdm.models.layers.rotary_tables. Triton kernels in
rotary_qkv_triton.py; backend "auto" = Triton on CUDA tensors, the eager reference elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.library import triton_op

from imdm.kernels.backend import use_triton


def rotary_qkv_reference(qkv: Tensor, cos: Tensor, sin: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(q, k, v), each [B, H, L, hd] in qkv's dtype (autograd gives the backward)."""
    from imdm.models.layers import apply_rotary
    b, l, three_d = qkv.shape
    q, k, v = qkv.view(b, l, 3, n_heads, three_d // (3 * n_heads)).permute(2, 0, 3, 1, 4)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


@triton_op("imdm::rotary_qkv", mutates_args=())
def _forward_op(qkv: Tensor, cos: Tensor, sin: Tensor, n_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    from imdm.kernels.rotary_qkv_triton import launch_forward
    return launch_forward(qkv, cos, sin, n_heads)


@triton_op("imdm::rotary_qkv_backward", mutates_args=())
def _backward_op(dq: Tensor, dk: Tensor, dv: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    from imdm.kernels.rotary_qkv_triton import launch_backward
    return launch_backward(dq, dk, dv, cos, sin)


def _save(ctx, inputs, output):
    _, cos, sin, _ = inputs
    ctx.save_for_backward(cos, sin)


def _backward(ctx, dq, dk, dv):
    cos, sin = ctx.saved_tensors
    return _backward_op(dq, dk, dv, cos, sin), None, None, None


_forward_op.register_autograd(_backward, setup_context=_save)


def rotary_qkv(qkv: Tensor, cos: Tensor, sin: Tensor, n_heads: int, backend: str = "auto") -> tuple[Tensor, Tensor,
                                                                                                     Tensor]:
    """(q, k, v) [B, H, L, hd] from qkv [B, L, 3 H hd], q and k rotated by position."""
    b, l, three_d = qkv.shape
    if three_d % (3 * n_heads) or cos.shape != (l, three_d // (3 * n_heads)) or sin.shape != cos.shape:
        raise ValueError(f"rotary_qkv: qkv {tuple(qkv.shape)} with {n_heads} heads does not match rotary tables "
                         f"{tuple(cos.shape)}")
    if not use_triton(backend, qkv):
        return rotary_qkv_reference(qkv, cos, sin, n_heads)
    return _forward_op(qkv.contiguous(), cos.contiguous(), sin.contiguous(), n_heads)
