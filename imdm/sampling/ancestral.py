"""The reverse (ancestral) sampler of MDLM and IMDM: K steps on linspace(1, 1e-5, K + 1), the
last step unmasking everything, so NFE <= K (fewer with caching)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from imdm import rng
from imdm.diffusion.posterior import step_weights
from imdm.sampling.categorical import categorical_from_uniform, shape_probs

T_END = 1e-5

# denoise(z [B, L], noise [B, L, D] or None, t) -> log x_theta [B, L, V] with SUBS applied
Denoiser = Callable[[torch.Tensor, "torch.Tensor | None", float], torch.Tensor]
# noise_for(seeds [B], generation [B, L]) -> mask-state noise [B, L, D]
NoiseSource = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    posterior: str = "mdlm"          # "mdlm" or "imdm"
    fix_eps: bool = False
    cached: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class SampleResult:
    tokens: torch.Tensor
    nfe: int


def generation_seeds(seed: int, start: int, count: int) -> torch.Tensor:
    """Per-sample seeds of samples start .. start + count - 1 of a generation run with `seed`
    (the same sample index gets the same seed whatever the batch size)."""
    return rng.derive_seed(seed, torch.arange(start, start + count, dtype=torch.int64), rng.STREAM_SAMPLE_SEED)


def time_grid(steps: int, t_start: float = 1.0) -> torch.Tensor:
    """linspace(t_start, 1e-5, K + 1) in float64."""
    return torch.linspace(t_start, T_END, steps + 1, dtype=torch.float64)


@torch.no_grad()
def ancestral_sample(denoise: Denoiser, schedule, settings: SamplerSettings, seeds: torch.Tensor,
                     seq_len: int, mask_id: int, noise_for: NoiseSource | None = None,
                     prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
                     t_start: float = 1.0) -> SampleResult:
    """Generate len(seeds) sequences. Every random choice derives from the per-sample seeds.
    `prefix` [B, P] clamps the first P positions to data (conditional generation). `start`
    [B, L] is a partially masked z at time `t_start` to complete (the grid then runs from
    t_start down); by default generation starts from all-mask at t = 1."""
    batch, device = seeds.shape[0], seeds.device
    if start is not None:
        z = start.to(device=device, dtype=torch.int64).clone()
    else:
        z = torch.full((batch, seq_len), mask_id, dtype=torch.int64, device=device)
    if prefix is not None:
        z[:, : prefix.shape[1]] = prefix
    generation = torch.zeros((batch, seq_len), dtype=torch.int64, device=device)
    noise = noise_for(seeds, generation) if noise_for is not None else None
    grid = time_grid(settings.steps, t_start)
    log_x, nfe = None, 0
    for j in range(settings.steps):
        t = grid[j]
        alpha_t = float(schedule.alpha(t))
        alpha_s = 1.0 if j == settings.steps - 1 else float(schedule.alpha(grid[j + 1]))
        weights = step_weights(alpha_t, alpha_s, settings.posterior, settings.fix_eps)
        rows_b, rows_l = torch.nonzero(z == mask_id, as_tuple=True)
        if rows_b.numel() == 0:
            break
        if log_x is None or not settings.cached:
            log_x = denoise(z, noise, float(t))
            nfe += 1
        probs = shape_probs(log_x[rows_b, rows_l], settings.temperature, settings.top_p)
        w = probs * weights.unmask
        w[:, mask_id] = weights.stay
        u = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_CATEGORICAL + j)
        choice = categorical_from_uniform(w, u)
        changed = bool((choice != mask_id).any())
        z[rows_b, rows_l] = choice
        if weights.stay_redraw > 0 and noise_for is not None:
            stayed = choice == mask_id
            r = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_REDRAW + j)
            redraw = stayed & (r < weights.redraw_share)
            if bool(redraw.any()):
                generation[rows_b[redraw], rows_l[redraw]] = j + 1
                noise = noise_for(seeds, generation)
                changed = True
        if changed:
            log_x = None
    return SampleResult(z, nfe)
