"""Exact categorical sampling by inverse CDF in float64.

One 53-bit uniform per row is compared with the float64 running sum of the weights, so every
outcome is drawn with its probability up to float64 rounding (about 1e-16 absolute), however
rare. A float32 Gumbel-max draw instead caps the noise near 16.6 and never draws outcomes far
below the largest (Zheng et al., arXiv 2409.02908).
"""

from __future__ import annotations

import torch


def categorical_from_uniform(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index k of each draw with P(k) = weights[k] / sum(weights), given u ~ U(0, 1) per draw.
    `weights` are non-negative float64, [N, V] (one row per draw) or [V] (shared by all draws);
    `u` [N] float64."""
    if weights.dtype != torch.float64 or u.dtype != torch.float64:
        raise TypeError("categorical_from_uniform needs float64 weights and uniforms")
    cdf = torch.cumsum(weights, dim=-1)
    target = u * cdf[..., -1]
    if weights.dim() == 1:
        index = torch.searchsorted(cdf, target, right=True)
    else:
        index = torch.searchsorted(cdf, target.unsqueeze(-1), right=True).squeeze(-1)
    positive = (weights > 0).to(torch.int8)
    last_positive = weights.shape[-1] - 1 - torch.flip(positive, dims=[-1]).argmax(dim=-1)
    return torch.minimum(index, last_positive)


def shape_probs(log_probs: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """float64 probabilities from log-probabilities [N, V], with temperature (p ** (1/T),
    renormalised) and nucleus filtering (the smallest set of largest p whose mass reaches top_p)."""
    logp = log_probs.to(torch.float64)
    if temperature != 1.0:
        logp = torch.log_softmax(logp / temperature, dim=-1)
    probs = logp.exp()
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = before < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs
