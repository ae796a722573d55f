"""The continuous-time masked-diffusion NELBO."""

from __future__ import annotations

import torch


def masked_nelbo_terms(log_probs_masked: torch.Tensor, targets_masked: torch.Tensor,
                       weight_masked: torch.Tensor) -> torch.Tensor:
    """Per masked token: weight * (-log x_theta[x]); rows are the masked positions only
    (unmasked positions contribute exactly 0 and are never computed)."""
    nll = -log_probs_masked.gather(-1, targets_masked[:, None]).squeeze(-1)
    return weight_masked * nll
