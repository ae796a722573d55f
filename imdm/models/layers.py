"""Small building blocks of the DiT: the LayerNorm weight, the time embedder, rotary position
embedding."""

from __future__ import annotations

import math

import torch
from torch import nn


class LayerNormNoBias(nn.Module):
    """The weight of a bias-free LayerNorm. imdm.kernels.residual_norm applies it (float32, fused
    with the residual add and the adaLN modulation); a module keeps the reference checkpoints'
    parameter names (norm1.weight, ...)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (256) of the noise level -> Linear -> SiLU -> Linear (cond_dim)."""

    def __init__(self, cond_dim: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half)
        args = sigma.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def rotary_tables(seq_len: int, head_dim: int, device, base: float = 10_000.0):
    """cos, sin [L, head_dim] in float32 for the rotate-half convention over the full head."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, L, hd] by position, in float32; returns x's dtype."""
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)
