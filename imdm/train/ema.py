"""Exponential moving average of the parameters in float32, with the warm-up decay
min(decay, (1 + n) / (10 + n))."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        names = list(self.shadow)
        params = dict(model.named_parameters())
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach().float() for n in names], weight)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (same architecture)."""
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"params": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["params"])
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, value in state["params"].items():
            self.shadow[name].copy_(value)
        self.num_updates = int(state["num_updates"])
