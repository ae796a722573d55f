"""The IMDM mask state: a continuous eps per masked position, embedded by a small MLP and added
to the mask token's embedding (docs/method.md section 2). The MLP's last layer starts at zero, so at
initialisation IMDM computes exactly what MDLM computes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from imdm.models.gemm_grad_linear import GemmGradLinear


@dataclass(frozen=True)
class MaskStateConfig:
    noise_dim: int
    kind: str = "rand"        # rand | randn | learnable
    scale: float = 1.0
    num_masks: int = 0        # K > 0: finite set of K states (ablation)

    @property
    def noise_dist(self) -> str:
        """Distribution of the seeded base noise this embedding consumes."""
        return "uniform" if self.kind == "rand" or self.num_masks > 0 else "normal"

    @property
    def noise_width(self) -> int:
        """Width of the base noise per position."""
        return 1 if self.num_masks > 0 else self.noise_dim


class MaskStateEmbedding(nn.Module):
    """base noise [..., noise_width] -> embedding offset [..., d_model]."""

    def __init__(self, cfg: MaskStateConfig, d_model: int):
        super().__init__()
        self.cfg = cfg
        if cfg.num_masks > 0:
            self.table = nn.Parameter(torch.zeros(cfg.num_masks, d_model))
            return
        if cfg.kind == "learnable":
            self.mu = nn.Parameter(torch.zeros(cfg.noise_dim))
            self.sigma = nn.Parameter(torch.full((cfg.noise_dim,), cfg.scale))
        self.fc1 = GemmGradLinear(cfg.noise_dim, 4 * d_model)
        self.fc2 = GemmGradLinear(4 * d_model, d_model, bias=False)
        nn.init.trunc_normal_(self.fc1.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)

    def eps(self, base: torch.Tensor) -> torch.Tensor:
        """The mask state itself: eps in R^D, or an integer index in [0, K) for finite masks."""
        if self.cfg.num_masks > 0:
            u01 = (base[..., 0] + 1) / 2
            return (u01 * self.cfg.num_masks).long().clamp_(0, self.cfg.num_masks - 1)
        if self.cfg.kind == "learnable":
            return self.mu + self.sigma * base
        return base * self.cfg.scale

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        eps = self.eps(base)
        if self.cfg.num_masks > 0:
            return F.embedding(eps, self.table)
        return self.fc2(F.gelu(self.fc1(eps)))
