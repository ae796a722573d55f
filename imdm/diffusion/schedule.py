"""Noise schedules alpha_t (probability a token is still clean at time t)."""

from __future__ import annotations

import math

import torch


class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t, so the NELBO weight -alpha'_t / (1 - alpha_t) is exactly 1/t."""

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1 - (1 - self.eps) * t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'_t / (1 - alpha_t)."""
        return 1 / t

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Total noise -log alpha_t, the time-embedder input of time-conditioned models."""
        return -torch.log1p(-(1 - self.eps) * t)


class CosineSchedule:
    """alpha_t = eps + (1 - eps) cos(pi t / 2)."""

    def __init__(self, eps: float = 1e-3):
        self.eps = eps

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.eps + (1 - self.eps) * torch.cos(math.pi / 2 * t)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        d_alpha = -(1 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * t)
        return -d_alpha / (1 - self.alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(self.alpha(t))


def make_schedule(name: str, eps: float):
    """The schedule a recipe names ('loglinear' or 'cosine')."""
    return {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}[name](eps)
