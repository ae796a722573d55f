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
    """cos, sin [L, head_dim // 2] in float32: the angles of the rotate-half convention (each
    is shared by entries i and i + head_dim // 2 of a head)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs (x_i, x_{i + hd/2}) of x [..., hd] by the angles whose cos, sin broadcast
    to x[..., :hd/2], in float32; returns x's dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
