"""Reverse-step posteriors for a masked position, t -> s < t.

MDLM: unmask to v with weight (alpha_s - alpha_t) x(v), stay masked with (1 - alpha_s).
IMDM splits "stay" by a_ts = alpha_t / alpha_s: keep the mask state with share a_ts
(weight (a_ts - alpha_t)) and re-draw it with share 1 - a_ts (weight (1 - a_ts)(1 - alpha_s)).
All weights here are divided by (1 - alpha_t), so they are probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepWeights:
    """Probabilities of one reverse step for a masked position: floats, or float64 tensors with
    one value per sample."""
    unmask: float | torch.Tensor        # total mass of "become a real token" (times x_theta(v) per token)
    stay_keep: float | torch.Tensor     # stay masked with the same mask state
    stay_redraw: float | torch.Tensor   # stay masked with a fresh mask state

    @property
    def stay(self) -> float | torch.Tensor:
        return self.stay_keep + self.stay_redraw


def step_weights(alpha_t, alpha_s, posterior: str, fix_eps: bool = False) -> StepWeights:
    """The three-way (or MDLM two-way) split of docs/method.md sections 1-2 for alpha_t <= alpha_s <= 1 and
    alpha_t < 1; floats give floats, float64 tensors (one value per sample) give tensors."""
    if posterior not in ("mdlm", "imdm"):
        raise ValueError(f"unknown posterior {posterior!r}")
    a_t = torch.as_tensor(alpha_t, dtype=torch.float64)
    a_s = torch.as_tensor(alpha_s, dtype=torch.float64)
    if not bool(((0 <= a_t) & (a_t <= a_s) & (a_s <= 1) & (a_t < 1)).all()):
        raise ValueError(f"need 0 <= alpha_t <= alpha_s <= 1 and alpha_t < 1, got {alpha_t}, {alpha_s}")
    norm = 1.0 - a_t
    unmask = (a_s - a_t) / norm
    stay = (1.0 - a_s) / norm
    if posterior == "mdlm" or fix_eps:
        keep, redraw = stay, torch.zeros_like(stay)
    else:
        a_ts = a_t / a_s
        keep, redraw = (a_ts - a_t) / norm, (1.0 - a_ts) * (1.0 - a_s) / norm
    if isinstance(alpha_t, torch.Tensor) or isinstance(alpha_s, torch.Tensor):
        return StepWeights(unmask, keep, redraw)
    return StepWeights(float(unmask), float(keep), float(redraw))
