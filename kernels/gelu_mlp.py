"""The DiT block's MLP, Linear -> GELU(tanh) -> Linear, with GELU inside the matmuls' epilogues.

Fuses:    forward, the up-projection, its bias and GELU in one GEMM (cuBLASLt epilogue
          GELU_AUX_BIAS, which also writes the pre-activation u for the backward); backward, the
          down-projection's input gradient and GELU's derivative at u in one GEMM (DGELU). The
          up-projection's bias gradient, the column sums of u's gradient, stays Inductor's.
Replaces: Inductor's GELU kernel and its backward (a read of u and a write of the activation,
          then reads of u and the activation's gradient and a write of u's gradient):
          memory-bound passes over [tokens, 4d] between the compute-bound matmuls.
Numerics: bias and GELU act on the float32 accumulator before rounding, and GELU's derivative on
          the unrounded product, where Inductor's path rounds both to bf16 first.
Measured: docs/performance.md (benchmarks/gelu_mlp.py).

The two GEMMs are custom ops (kernels/cublaslt.py on CUDA, the eager references below on other
devices, and on CUDA after one warning when that cuBLASLt is missing or of a version outside
its SUPPORTED_VERSIONS); `gelu_mlp` is their autograd composition with the down-projection and
the weight gradients (accumulated into float32 `.grad` in place, as GemmGradLinear does, when
given).
The DiT chooses it with imdm.kernels.backend.kernel_chosen: backend "auto" on CUDA tensors,
"triton" everywhere (the references on CPU), "eager" never (autograd through nn.Linear and
nn.GELU).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from imdm.kernels.precision import compute_dtype
from imdm.kernels.weight_grad import accumulate_weight_grad, matmul_weight

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


def gelu_tanh_derivative(u: Tensor) -> Tensor:
    """d/du of 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), in u's dtype."""
    t = torch.tanh(_SQRT_2_OVER_PI * (u + _CUBIC * u ** 3))
    return 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * _SQRT_2_OVER_PI * (1 + 3 * _CUBIC * u * u)


def _wide(t: Tensor) -> Tensor:
    """t in float32, or in its own dtype where that is wider."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def linear_gelu_reference(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(GELU_tanh(u), u) for u = x weight^T + bias, GELU in float32 (at least), both in x's dtype."""
    u = F.linear(x, weight, bias)
    return F.gelu(_wide(u), approximate="tanh").to(u.dtype), u


def matmul_dgelu_reference(dy: Tensor, weight: Tensor, u: Tensor) -> Tensor:
    """du = (dy weight) * GELU_tanh'(u), in float32 arithmetic at least, rounded to u's dtype."""
    return ((_wide(dy) @ _wide(weight)) * gelu_tanh_derivative(_wide(u))).to(u.dtype)


def _cublaslt_shapes(x: Tensor, weight: Tensor) -> bool:
    """cuBLASLt runs 16-bit CUDA operands whose rows are whole 16-byte units."""
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and weight.shape[0] % 8 == 0 \
        and weight.shape[1] % 8 == 0


def _cublaslt_eligible(x: Tensor, weight: Tensor) -> bool:
    """Operands cuBLASLt runs (_cublaslt_shapes) with a cuBLASLt it can call: one that loads, of a
    version whose enum values imdm.kernels.cublaslt holds (else it warns once per process, naming
    why and the version found). The references run the rest (float32 operands, odd widths, other
    devices, no usable cuBLASLt)."""
    if not _cublaslt_shapes(x, weight):
        return False
    from imdm.kernels import cublaslt
    return cublaslt.usable()


@torch.library.custom_op("imdm::linear_gelu", mutates_args=())
def linear_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """(GELU_tanh(u), u), u = x[N, in] weight[out, in]^T + bias: one cuBLASLt GEMM where eligible."""
    if not _cublaslt_eligible(x, weight):
        return linear_gelu_reference(x, weight, bias)
    from imdm.kernels.cublaslt import gemm_epilogue
    h = x.new_empty(x.shape[0], weight.shape[0])
    u = torch.empty_like(h)
    gemm_epilogue(x, weight.t(), h, "gelu_aux_bias", bias, u)
    return h, u


@linear_gelu.register_fake
def _(x, weight, bias):
    h = x.new_empty(x.shape[0], weight.shape[0])
    return h, torch.empty_like(h)


@torch.library.custom_op("imdm::matmul_dgelu", mutates_args=())
def matmul_dgelu(dy: Tensor, weight: Tensor, u: Tensor) -> Tensor:
    """du = (dy[N, out] weight[out, in]) * GELU_tanh'(u[N, in]) in u's dtype: one cuBLASLt GEMM
    where eligible."""
    if not _cublaslt_eligible(dy, weight):
        return matmul_dgelu_reference(dy, weight, u)
    from imdm.kernels.cublaslt import gemm_epilogue
    du = torch.empty_like(u)
    gemm_epilogue(dy, weight, du, "dgelu", None, u)
    return du


@matmul_dgelu.register_fake
def _(dy, weight, u):
    return torch.empty_like(u)


def _weight_grad(grad: Optional[Tensor], dy: Tensor, x: Tensor) -> Optional[Tensor]:
    """dy^T x added into `grad` in place (returning None), or returned when there is no `grad`."""
    if grad is None:
        return dy.t() @ x
    accumulate_weight_grad(grad, dy, x)
    return None


class _GeluMLP(torch.autograd.Function):
    """y = (GELU_tanh(x W1^T + b1)) W2^T + b2 in autocast's dtype (x's without autocast), with the
    weights' frozen copies copy1, copy2 where given."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, grad1, grad2, copy1, copy2):
        dtype = compute_dtype(x)
        rows = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()
        w1, w2 = matmul_weight(w1, copy1, dtype), matmul_weight(w2, copy2, dtype)
        h, u = torch.ops.imdm.linear_gelu(rows, w1, b1.to(dtype))
        ctx.save_for_backward(rows, u, h, w1, w2, grad1, grad2)
        ctx.input_shape = x.shape
        return F.linear(h, w2, b2.to(dtype)).view(*x.shape[:-1], w2.shape[0])

    @staticmethod
    def backward(ctx, dy):
        rows, u, h, w1, w2, grad1, grad2 = ctx.saved_tensors
        dy = dy.reshape(-1, dy.shape[-1]).contiguous()
        needs = ctx.needs_input_grad
        sum_dtype = torch.promote_types(dy.dtype, torch.float32)
        dw2 = _weight_grad(grad2, dy, h) if needs[3] else None
        db2 = dy.sum(0, dtype=sum_dtype) if needs[4] else None
        du = torch.ops.imdm.matmul_dgelu(dy, w2, u)
        dw1 = _weight_grad(grad1, du, rows) if needs[1] else None
        db1 = du.sum(0, dtype=sum_dtype) if needs[2] else None
        dx = (du @ w1).view(*ctx.input_shape) if needs[0] else None
        return dx, dw1, db1, dw2, db2, None, None, None, None


def gelu_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, grad1: Optional[Tensor] = None,
             grad2: Optional[Tensor] = None, copy1: Optional[Tensor] = None, copy2: Optional[Tensor] = None) -> Tensor:
    """Linear(w1, b1) -> GELU(tanh) -> Linear(w2, b2) on x [..., in]. With grad1/grad2 (the weights'
    float32 `.grad`), the weight gradients are added into them in place instead of returned; with
    copy1/copy2 (frozen copies of w1, w2 in the compute dtype) the matmuls use those."""
    return _GeluMLP.apply(x, w1, b1, w2, b2, grad1, grad2, copy1, copy2)
