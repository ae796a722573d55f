"""SUBS parameterisation: never predict the mask; copy clean tokens through."""

from __future__ import annotations

import torch

NEG_INF = -1e6


def without_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """float32 logits with the mask's logit replaced by NEG_INF (SUBS: never predict the mask)."""
    is_mask = torch.arange(logits.shape[-1], device=logits.device) == mask_id
    return torch.where(is_mask, NEG_INF, logits.float())

