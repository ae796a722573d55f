"""Reverse-step posteriors for a masked position, t -> s < t.

MDLM: unmask to v with weight (alpha_s - alpha_t) x(v), stay masked with (1 - alpha_s).
IMDM splits "stay" by a_ts = alpha_t / alpha_s: keep the mask state with share a_ts
(weight (a_ts - alpha_t)) and re-draw it with share 1 - a_ts (weight (1 - a_ts)(1 - alpha_s)).
All weights here are divided by (1 - alpha_t), so they are probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepWeights:
    """Probabilities of one reverse step for a masked position (scalars, float64)."""
    unmask: float        # total mass of "become a real token" (times x_theta(v) per token)
    stay_keep: float     # stay masked with the same mask state
    stay_redraw: float   # stay masked with a fresh mask state

    @property
    def stay(self) -> float:
        return self.stay_keep + self.stay_redraw

    @property
    def redraw_share(self) -> float:
        """P(re-draw | stay)."""
        return self.stay_redraw / self.stay if self.stay > 0 else 0.0


def step_weights(alpha_t: float, alpha_s: float, posterior: str, fix_eps: bool = False) -> StepWeights:
    """The three-way (or MDLM two-way) split of SPEC sections 1-2 for alpha_t <= alpha_s <= 1."""
    alpha_t, alpha_s = float(alpha_t), float(alpha_s)
    if not 0.0 <= alpha_t <= alpha_s <= 1.0 or alpha_t == 1.0:
        raise ValueError(f"need 0 <= alpha_t <= alpha_s <= 1 and alpha_t < 1, got {alpha_t}, {alpha_s}")
    norm = 1.0 - alpha_t
    unmask = (alpha_s - alpha_t) / norm
    stay = (1.0 - alpha_s) / norm
    if posterior == "mdlm" or fix_eps:
        return StepWeights(unmask, stay, 0.0)
    if posterior != "imdm":
        raise ValueError(f"unknown posterior {posterior!r}")
    a_ts = alpha_t / alpha_s
    return StepWeights(unmask, (a_ts - alpha_t) / norm, (1.0 - a_ts) * (1.0 - alpha_s) / norm)
