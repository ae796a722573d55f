"""Exponential moving average of the parameters in float32, with the warm-up decay
min(decay, (1 + n) / (10 + n))."""

from __future__ import annotations

import torch
from torch import nn


WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter's name without activation-checkpointing / compile wrapper parts."""
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) tensor, or the tensor itself: shadows and
    parameters are sharded alike, so the average is element-wise on the shards and avoids
    DTensor's per-tensor dispatch cost."""
    return t.to_local() if hasattr(t, "to_local") else t


def named_parameters(model: nn.Module) -> dict:
    return {clean_name(n): p for n, p in model.named_parameters()}


class EMA:
    """Shadows have the parameters' layout (sharded DTensors under FSDP2)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in named_parameters(model).items()}
        self._shadow_locals = [_local(s) for s in self.shadow.values()]   # views, updated in place

    @torch.no_grad()
    def restart(self, model: nn.Module) -> None:
        """Start averaging afresh from `model`'s current parameters."""
        params = named_parameters(model)
        for name, shadow in self.shadow.items():
            shadow.copy_(params[name].detach())
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        params = named_parameters(model)
        torch._foreach_lerp_(self._shadow_locals, [_local(params[n].detach()).float() for n in self.shadow], weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (same architecture)."""
        for name, p in named_parameters(model).items():
            shadow = self.shadow[name]
            if hasattr(shadow, "full_tensor") and not hasattr(p, "full_tensor"):
                shadow = shadow.full_tensor()
            p.copy_(shadow.to(p.dtype))

    def state_dict(self) -> dict:
        return {"params": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["params"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, value in state["params"].items():
            self.shadow[name].copy_(value)
        self.num_updates = int(state["num_updates"])
