"""nn.Linear whose weight gradient is accumulated by the weight-gradient GEMM itself
(imdm.kernels.weight_grad), and which computes with a frozen low-precision copy of its weight
while `frozen_weight_copies` is open.

It runs once `.grad` exists and the layer is switched on by `keep_weight_grads`, which the
trainer calls for an unsharded model (FSDP2 owns the gradients of a sharded one). The trainer
opens `frozen_weight_copies` around a step's micro-batches, while no weight changes: one cast
per weight and step instead of one per weight and micro-batch (docs/performance.md has the
measurements of both).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from imdm.kernels.precision import compute_dtype
from imdm.kernels.weight_grad import matmul_weight


class _LinearGradIntoBuffer(torch.autograd.Function):
    """y = x W^T + b in autocast's dtype (or x's without autocast); backward adds dW into `grad`
    and returns none for W, which still comes in as an input so that the node is recorded when
    nothing else needs a gradient (a first layer without bias). `weight_copy` is W's frozen copy
    (or None)."""

    @staticmethod
    def forward(ctx, x, weight, bias, grad, weight_copy):
        dtype = compute_dtype(x)
        x, weight = x.to(dtype), matmul_weight(weight, weight_copy, dtype)
        ctx.save_for_backward(x, weight, grad)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, dy):
        x, weight, grad = ctx.saved_tensors
        rows = dy.reshape(-1, dy.shape[-1])
        torch.ops.imdm.accumulate_weight_grad(grad, rows, x.reshape(-1, x.shape[-1]))
        grad_bias = rows.sum(0, dtype=torch.float32) if ctx.has_bias else None
        grad_x = (rows @ weight).view(*dy.shape[:-1], weight.shape[1]) if ctx.needs_input_grad[0] else None
        return grad_x, None, grad_bias, None, None   # both products read `rows`: Inductor writes it once


class GemmGradLinear(nn.Linear):
    """nn.Linear (same parameters, same state dict) that, switched on and with its weight's
    `.grad` allocated, accumulates the weight gradient inside the GEMM (computing with
    `weight_copy` while frozen_weight_copies provides one); otherwise nn.Linear."""

    accumulate_in_gemm = False
    weight_copy: Optional[torch.Tensor] = None

    def kept_grad(self) -> Optional[torch.Tensor]:
        """The float32 `.grad` this call adds its weight gradient into, or None (autograd's path):
        switched on, `.grad` allocated and gradients enabled."""
        return self.weight.grad if self.accumulate_in_gemm and torch.is_grad_enabled() else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grad = self.kept_grad()
        if grad is not None:
            return _LinearGradIntoBuffer.apply(x, self.weight, self.bias, grad, self.weight_copy)
        return super().forward(x)


def keep_weight_grads(model: nn.Module) -> list[nn.Parameter]:
    """Switch on every GemmGradLinear of `model` whose weight trains, give that weight a zero
    `.grad` where it has none, and return those weights: `zero_grads` keeps their `.grad`."""
    kept = []
    for module in model.modules():
        if isinstance(module, GemmGradLinear) and module.weight.requires_grad:
            module.accumulate_in_gemm = True
            if module.weight.grad is None:
                module.weight.grad = torch.zeros_like(module.weight)
            kept.append(module.weight)
    return kept


def zero_grads(parameters, kept: list[nn.Parameter]) -> None:
    """optimizer.zero_grad(set_to_none=True), except that the weights of `kept` keep their
    `.grad`, zeroed in place (their layers accumulate into it)."""
    kept_ids = {id(p) for p in kept}
    for p in parameters:
        if id(p) in kept_ids:
            p.grad.zero_()
        else:
            p.grad = None


def switched_on_layers(model: nn.Module) -> list[GemmGradLinear]:
    """The GemmGradLinear layers of `model` that keep_weight_grads switched on."""
    return [m for m in model.modules() if isinstance(m, GemmGradLinear) and m.accumulate_in_gemm]


@contextlib.contextmanager
def frozen_weight_copies(model: nn.Module, dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Within: every switched-on GemmGradLinear of `model` computes with a copy of its weight in
    `dtype` (the autocast dtype), cast once on entry and dropped on exit. The weights must not
    change inside (the trainer holds it over one step's micro-batches, before the optimizer step).
    No copies for dtype None (no autocast). The copies live for the whole step: with activation
    checkpointing, whose recomputed casts would otherwise be freed, that is 2 bytes per weight
    more."""
    layers = switched_on_layers(model) if dtype is not None else []
    try:
        for layer in layers:
            layer.weight_copy = layer.weight.detach().to(dtype, copy=True)
        yield
    finally:
        for layer in layers:
            layer.weight_copy = None
