"""The continuous-time masked-diffusion NELBO."""

from __future__ import annotations

import torch

from imdm.diffusion.subs import NEG_INF


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log x_theta[target] per row of logits [N, V] under SUBS (the mask logit removed before
    the normalisation), in float32. Written as logsumexp minus the target logit so that
    torch.compile fuses it into one pass without a float32 copy of the logits."""
    logits = logits.float()
    is_mask = torch.arange(logits.shape[-1], device=logits.device) == mask_id
    logits = torch.where(is_mask, NEG_INF, logits)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None]).squeeze(-1)
