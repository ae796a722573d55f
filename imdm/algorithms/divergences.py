"""Per-position divergences between the student's and the teacher's x_theta (SDTT,
docs/method.md section 3), computed eagerly in float32. This is the reference and the CPU path: both sides
come as raw logits [N, V] and the mask logit is removed here, as SUBS does, so a fused kernel
that forms the logits from (hidden state, head weight, head bias) can stand in for it."""

from __future__ import annotations

import torch

from imdm.diffusion.subs import without_mask


def _log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    return torch.log_softmax(without_mask(logits, mask_id), dim=-1)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask_id: int, kind: str) -> torch.Tensor:
    """One value per row [N] comparing p_s = x_theta(student) with p_t = x_theta(teacher) over the
    real tokens: 'kl_bwd' sum p_s (log p_s - log p_t); 'kl_fwd' sum p_t (log p_t - log p_s);
    'mse' sum (log p_s - log p_t)^2; 'tvd' (1/2) sum |p_s - p_t|. No gradient reaches the teacher."""
    log_s = _log_probs(student_logits, mask_id)
    log_t = _log_probs(teacher_logits.detach(), mask_id)
    if kind == "kl_bwd":
        return (log_s.exp() * (log_s - log_t)).sum(-1)
    if kind == "kl_fwd":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    if kind == "mse":
        real = torch.arange(log_s.shape[-1], device=log_s.device) != mask_id
        return torch.where(real, (log_s - log_t) ** 2, 0.0).sum(-1)
    if kind == "tvd":
        return 0.5 * (log_s.exp() - log_t.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {kind!r}")
