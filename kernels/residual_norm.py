"""Residual + LayerNorm + adaLN kernel: the DiT's elementwise work between its matmuls.

Fuses:    x_out = x + gate * dropout(y)            (the gated residual branch, float32 stream)
          h = LayerNorm(x_out) * w * (1 + scale) + shift   (fp32 statistics, no bias)
          and the backward of both: grad x, y, gate, w, shift, scale in two kernels (the rows'
          LayerNorm sums, then an elementwise pass over row x column tiles).
Replaces: Inductor's fusions of the same ops in the compiled DiT block (nn.Dropout, the residual
          add, LayerNormNoBias and `modulate`): a dozen kernels per block that re-read the
          float32 stream, recompute LayerNorm in the backward and draw dropout masks with Philox.
Dropout:  entry i of the flat [B, L, d] branch is dropped when imdm.rng.uniform24(seed, i mod
          2^32, STREAM_RESIDUAL_DROPOUT) < p, kept ones scaled by 1 / (1 - p): the mask is a
          function of (seed, position), recomputed in the backward (never stored) and the same
          on every device and backend.
Measured: docs/performance.md (benchmarks/kernel_residual_norm.py, benchmarks/block_breakdown.py).

Both passes are torch.library.triton_op's: torch.compile traces into them and launches the
kernels from its own generated code, with no per-call dispatch on the host (Inductor's CPU
backend cannot launch Triton kernels: on CPU tensors they run eagerly, through the interpreter).

Shapes: x [B, L, d] float32; y [B, L, d] (the branch, any float dtype); gate, shift, scale [B, d]
(one per sequence); w [d]; seed a 1-element int64 tensor. Without y the op is LayerNorm +
modulation alone. Triton kernels in residual_norm_triton.py; backend "auto" = Triton on CUDA
tensors, the eager reference below elsewhere.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import triton_op

from imdm import rng
from imdm.kernels.backend import use_triton


def dropout_keep_scale(seed: Tensor, shape: torch.Size, p: float) -> Tensor:
    """float32 [*shape]: 1 / (1 - p) where residual dropout keeps an entry, 0 where it drops it."""
    counter = torch.arange(shape.numel(), device=seed.device) & rng.MASK32
    u = rng.words_to_uniform24(rng.hash32_words(seed.reshape(()), counter, rng.STREAM_RESIDUAL_DROPOUT))
    return torch.where(u >= p, 1.0 / (1.0 - p), 0.0).view(shape)


def residual_norm_reference(x: Tensor, y: Optional[Tensor], gate: Optional[Tensor], seed: Optional[Tensor],
                            p: float, weight: Tensor, shift: Tensor, scale: Tensor, eps: float,
                            h_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(x_out, h) in eager PyTorch, float32 arithmetic throughout (autograd gives the backward)."""
    if y is not None:
        branch = y.float()
        if seed is not None and p > 0:
            branch = branch * dropout_keep_scale(seed, y.shape, p).to(branch.device)
        x = x + gate.float()[:, None] * branch
    n = F.layer_norm(x.float(), (x.shape[-1],), eps=eps) * weight.float()
    return x, (n * (1 + scale.float()[:, None]) + shift.float()[:, None]).to(h_dtype)


@triton_op("imdm::residual_norm", mutates_args=())
def _forward_op(x: Tensor, y: Optional[Tensor], gate: Optional[Tensor], seed: Optional[Tensor], p: float,
                weight: Tensor, shift: Tensor, scale: Tensor, eps: float,
                h_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from imdm.kernels.residual_norm_triton import launch_forward
    return launch_forward(x, y, gate, seed, p, weight, shift, scale, eps, h_dtype)


@triton_op("imdm::residual_norm_backward", mutates_args=())
def _backward_op(dh: Tensor, dx_out: Optional[Tensor], x_out: Tensor, mean: Tensor, rstd: Tensor, weight: Tensor,
                 scale: Tensor, y: Optional[Tensor], gate: Optional[Tensor], seed: Optional[Tensor],
                 p: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from imdm.kernels.residual_norm_triton import launch_backward
    return launch_backward(dh, dx_out, x_out, mean, rstd, weight, scale, y, gate, seed, p)


def _save(ctx, inputs, output):
    x, y, gate, seed, p, weight, shift, scale, eps, h_dtype = inputs
    x_out, _, mean, rstd = output
    ctx.save_for_backward(x_out if y is not None else x, mean, rstd, weight, scale, y, gate, seed)
    ctx.p = p
    ctx.dtypes = (gate.dtype if gate is not None else None, weight.dtype, shift.dtype, scale.dtype)


def _backward(ctx, d_x_out, d_h, _mean, _rstd):
    x_out, mean, rstd, weight, scale, y, gate, seed = ctx.saved_tensors
    gate_dtype, w_dtype, shift_dtype, scale_dtype = ctx.dtypes
    residual = y is not None
    d_x_out = d_x_out.contiguous() if residual and d_x_out is not None else None   # the kernel reads rows densely
    dx, dy, d_w, d_shift, d_scale, d_gate = _backward_op(d_h.contiguous(), d_x_out, x_out, mean, rstd, weight,
                                                         scale, y, gate, seed, ctx.p)
    return (dx, dy if residual else None, d_gate.to(gate_dtype) if residual else None, None, None,
            d_w.to(w_dtype), d_shift.to(shift_dtype), d_scale.to(scale_dtype), None, None)


_forward_op.register_autograd(_backward, setup_context=_save)


def residual_norm_modulate(x: Tensor, y: Optional[Tensor], gate: Optional[Tensor], seed: Optional[Tensor], p: float,
                           weight: Tensor, shift: Tensor, scale: Tensor, h_dtype: torch.dtype, eps: float = 1e-5,
                           backend: str = "auto") -> tuple[Tensor, Tensor]:
    """(x_out, h): x_out = x + gate * dropout_p(y) (x itself when `y` is None; no dropout when
    `seed` is None or p is 0), h = LayerNorm(x_out) * weight * (1 + scale) + shift in `h_dtype`."""
    if (y is None) != (gate is None):
        raise ValueError("residual_norm_modulate: the branch y and its gate come together (both or neither)")
    if not use_triton(backend, x):
        return residual_norm_reference(x, y, gate, seed, p, weight, shift, scale, eps, h_dtype)
    if y is not None:
        y, gate = y.contiguous(), gate.contiguous()
    x_out, h, _, _ = _forward_op(x.contiguous(), y, gate, seed, float(p), weight.contiguous(), shift.contiguous(),
                                 scale.contiguous(), eps, h_dtype)
    return (x_out if y is not None else x), h
