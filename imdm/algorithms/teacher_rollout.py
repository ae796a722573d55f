"""The SDTT teacher's targets (docs/method.md section 3): two ancestral steps of size dt from z_t, the
mask states kept (no re-drawing), categorical draws exact in float64.

A position masked in z_t is scored against the teacher's x_theta at the step that unmasked
it; one still masked after both steps takes the last step's. So the first step's x_theta
serves the positions the first step unmasked, and the second step's serves all others,
whatever the second step draws: that draw is not taken."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from imdm import rng
from imdm.diffusion.posterior import step_weights
from imdm.diffusion.subs import without_mask
from imdm.diffusion.times import T_MIN
from imdm.devices import host_to_device
from imdm.diffusion.categorical import categorical_from_uniform, shape_probs

# denoise(z [B, L], t [B] float64 on the host) -> teacher logits [M, V] at the M rows being distilled
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TeacherTargets:
    logits: torch.Tensor       # [M, V] the teacher's logits (before SUBS) each row is scored against
    first_step: torch.Tensor   # bool [M]: the first step unmasked the row


def step_times(t: torch.Tensor, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Times (t, t - dt) at which the teacher is evaluated, float64, clamped at T_MIN."""
    t = t.to(torch.float64)
    return t, torch.clamp(t - dt, min=T_MIN)


def first_step_weights(schedule, t: torch.Tensor, dt: float, posterior: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample probabilities (unmask mass, stay mass) of the step t -> max(t - dt, T_MIN) for
    a masked position, float64 [B] on the host; mask states are never re-drawn."""
    t0, t1 = step_times(t, dt)
    weights = step_weights(schedule.alpha(t0), schedule.alpha(t1), posterior, fix_eps=True)
    return weights.unmask, weights.stay


@torch.no_grad()
def teacher_targets(denoise: Denoiser, z: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor],
                    seeds: torch.Tensor, t: torch.Tensor, dt: float, schedule, mask_id: int,
                    posterior: str = "mdlm", n_real: int | None = None) -> TeacherTargets:
    """Targets at the M rows = (batch_idx, pos_idx) masked in z [B, L]. `seeds` [B] (on z's
    device) fix the draws; `t` [B] float64 on the host. With `n_real`, rows beyond the first
    n_real are padding (repeats): they get targets, but their draws never enter z."""
    t0, t1 = step_times(t, dt)
    unmask, stay = (host_to_device(w, z.device) for w in first_step_weights(schedule, t, dt, posterior))
    first = denoise(z, t0)
    w = shape_probs(torch.log_softmax(without_mask(first, mask_id), dim=-1)) * unmask[rows[0], None]
    w[:, mask_id] = stay[rows[0]]
    u = rng.uniform53(seeds[rows[0]], rows[1], rng.STREAM_TEACHER)
    choice = categorical_from_uniform(w, u)
    unmasked = choice != mask_id
    real = slice(n_real)
    second = denoise(z.index_put(tuple(r[real] for r in rows), choice[real]), t1)
    return TeacherTargets(torch.where(unmasked[:, None], first, second), unmasked)
