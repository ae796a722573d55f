"""Eps-driven draws: an IMDM sampler whose random choices come from the mask states themselves.

Each masked position i carries a fixed mask state (never re-drawn). From its base noise come two
uniforms: v_i (coordinate 0) fixes its unmasking time, and u_i (coordinates 1..m, composed as
the base-64 digits of one number) its categorical draw. Position i unmasks in the step t -> s
in which v_i > 1 - alpha_s first holds, i.e. at the time T_i with 1 - alpha_{T_i} = v_i, which
has exactly the forward process's masking-time distribution (P(T_i <= t) = 1 - alpha_t); it
then takes the token at u_i of the inverse CDF of x_theta (float64). So a whole trajectory is a
deterministic function of the mask states, as a probability-flow ODE is of its start: a coupling
set made this way pairs each eps with the one sequence it leads to (docs/method.md section 4).

Composing u from m coordinates (u = 0.d_1 d_2 ... in base 64, d_k = floor(64 u_k), the last
coordinate filling the remainder) keeps u uniform and makes the map from eps to a token a
function of a few coarse digits, each readable from one coordinate, rather than of one
coordinate's every bit."""

from __future__ import annotations

import math

import torch

from imdm.diffusion.categorical import categorical_from_uniform, shape_probs
from imdm.diffusion.subs import without_mask

DIGIT_BASE = 64


def unit_uniforms(noise: torch.Tensor, dist: str) -> torch.Tensor:
    """The base noise of the mask states as float64 uniforms in (0, 1): 'uniform' noise lies in
    [-1, 1], 'normal' noise goes through the normal CDF."""
    x = noise.to(torch.float64)
    if dist == "uniform":
        unit = (x + 1) / 2
    elif dist == "normal":
        unit = 0.5 * torch.erfc(-x / math.sqrt(2))
    else:
        raise ValueError(f"unknown noise distribution {dist!r}")
    return unit.clamp(1e-12, 1 - 1e-12)


def eps_uniforms(noise: torch.Tensor, dist: str, digits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, u) float64 [B, L] from the base noise [B, L, D >= digits + 1]: v the unmasking-time
    uniform, u the draw's uniform composed from `digits` coordinates."""
    if noise.shape[-1] < digits + 1:
        raise ValueError(f"eps-driven draws read {digits + 1} noise coordinates; the mask state has {noise.shape[-1]}")
    unit = unit_uniforms(noise[..., : digits + 1], dist)
    u = unit[..., digits]
    for k in range(digits - 1, 0, -1):   # u <- (floor(64 u_k) + u) / 64, innermost digit first
        u = (torch.floor(unit[..., k] * DIGIT_BASE).clamp(max=DIGIT_BASE - 1) + u) / DIGIT_BASE
    return unit[..., 0], u


def left_to_right(v: torch.Tensor) -> torch.Tensor:
    """Unmasking-time uniforms that order the positions left to right (position i of L at
    1 - (i + 1/2) / L): with more steps than positions, one position unmasks per step."""
    seq_len = v.shape[-1]
    order = 1 - (torch.arange(seq_len, dtype=torch.float64, device=v.device) + 0.5) / seq_len
    return order.expand_as(v)


def unmasking(z: torch.Tensor, v: torch.Tensor, alpha_s, mask_id: int) -> torch.Tensor:
    """bool [B, L]: the masked positions whose unmasking time falls in this step (v > 1 - alpha_s;
    alpha_s a float or a [B] tensor; alpha_s = 1 unmasks every one)."""
    threshold = 1 - torch.as_tensor(alpha_s, dtype=torch.float64, device=v.device)
    if threshold.dim() == 1:
        threshold = threshold[:, None]
    return (z == mask_id) & (v > threshold)


def greedy_tokens(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """argmax of x_theta over the real tokens (SUBS: never the mask), [...]: the reference's
    'greedy' noise removal."""
    return without_mask(logits, mask_id).argmax(dim=-1)


def eps_driven_step(logits: torch.Tensor, z: torch.Tensor, which: torch.Tensor, u: torch.Tensor, mask_id: int,
                    temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False) -> torch.Tensor:
    """New tokens [B, L]: the positions `which` take the token at u of x_theta's inverse CDF
    (temperature and top-p shaped, float64), or its argmax with `greedy`; others keep theirs."""
    rows = torch.nonzero(which, as_tuple=True)
    new_z = z.clone()
    if rows[0].numel() == 0:
        return new_z
    if greedy:
        new_z[rows] = greedy_tokens(logits[rows], mask_id)
        return new_z
    probs = shape_probs(torch.log_softmax(without_mask(logits[rows], mask_id).double(), dim=-1), temperature, top_p)
    new_z[rows] = categorical_from_uniform(probs, u[rows])
    return new_z
