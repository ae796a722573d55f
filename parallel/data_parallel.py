"""Plain data parallelism: every rank holds the whole model and gradients are summed over
ranks in one flat all-reduce. The FSDP2 engine replaces this for large models."""

from __future__ import annotations

import torch
from torch import nn

from imdm.parallel.distributed import all_reduce_sum


def broadcast_parameters(model: nn.Module) -> None:
    """Make every rank start from rank 0's weights."""
    import torch.distributed as dist
    if dist.is_initialized() and dist.get_world_size() > 1:
        for p in model.parameters():
            dist.broadcast(p.data, src=0)


def sum_gradients(model: nn.Module) -> None:
    """grad <- sum over ranks of grad, for every parameter that has one."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def scale_gradients(model: nn.Module, factor: torch.Tensor | float) -> None:
    """grad <- grad * factor (a device scalar is fine: no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)
