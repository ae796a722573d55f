"""Reverse-step posteriors for a masked position, t -> s < t.

MDLM: unmask to v with weight (alpha_s - alpha_t) x(v), stay masked with (1 - alpha_s).
IMDM splits "stay" by a_ts = alpha_t / alpha_s: keep the mask state with share a_ts
(weight (a_ts - alpha_t)) and re-draw it with share 1 - a_ts (weight (1 - a_ts)(1 - alpha_s)).
All weights here are divided by (1 - alpha_t), so they are probabilities. Temperature in the
reference's form raises every outcome's weight to 1/T (docs/method.md section 1, "Sampling
options"): `tempered_step_weights`.
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


def keep_states(weights: StepWeights) -> StepWeights:
    """The same step with its re-draw mass counted as staying with the same mask state."""
    return StepWeights(weights.unmask, weights.stay, weights.stay_redraw * 0)


def tempered_step_weights(weights: StepWeights, temperature: float) -> StepWeights:
    """Every outcome's weight raised to 1/T, keep and re-draw each on its own (docs/method.md
    section 1, "Sampling options"); `unmask` becomes the factor of x_theta(v) ** (1/T). Not
    normalised: the sampler draws in proportion to the weights."""
    power = 1.0 / temperature
    return StepWeights(weights.unmask ** power, weights.stay_keep ** power, weights.stay_redraw ** power)
