"""The continuous-time masked-diffusion NELBO."""

from __future__ import annotations

import torch

from imdm.diffusion.subs import without_mask


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log x_theta[target] per row of logits [N, V] under SUBS (the mask logit removed before
    the normalisation), in float32, as logsumexp minus the target logit. The reference of the
    fused head loss (imdm.kernels.masked_loss), which training uses on GPU."""
    logits = without_mask(logits, mask_id)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None]).squeeze(-1)
