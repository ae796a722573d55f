"""SUBS parameterisation: never predict the mask; copy clean tokens through."""

from __future__ import annotations

import torch

NEG_INF = -1e6


def without_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float32 logits with the mask's logit replaced by NEG_INF (SUBS: never predict the mask)."""
    is_mask = torch.arange(logits.shape[-1], device=logits.device) == mask_id
    return torch.where(is_mask, NEG_INF, logits.float())


def subs_log_probs(logits: torch.Tensor, z_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """log x_theta(z_t) [..., V] in float32: the mask logit is removed before the log-softmax,
    and positions where z_t is not the mask get the one-hot of z_t (log 1 = 0, else NEG_INF)."""
    log_probs = torch.log_softmax(without_mask(logits, mask_id), dim=-1)
    clean = z_t != mask_id
    carry = torch.full_like(log_probs, NEG_INF)
    carry.scatter_(-1, z_t.unsqueeze(-1), 0.0)
    return torch.where(clean.unsqueeze(-1), carry, log_probs)
