"""The reverse (ancestral) sampler of MDLM and IMDM: K steps on linspace(1, 1e-5, K + 1), the
last step unmasking everything, so NFE <= K (fewer with caching). Each step is
imdm.kernels.sampler_step: the fused Triton kernel on GPU, or its eager float64 reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from imdm import rng
from imdm.diffusion.posterior import step_weights
from imdm.kernels.sampler_step import sampler_step

T_END = 1e-5

# denoise(z [B, L], noise [B, L, D] or None, t) -> logits [B, L, V] before SUBS (the step
# applies it; SUBS log-probabilities work too, as SUBS and softmax leave them unchanged); t is
# a float, or a float64 [B] tensor when each sample starts from its own time
Denoiser = Callable[[torch.Tensor, "torch.Tensor | None", "float | torch.Tensor"], torch.Tensor]
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
    kernel: str = "auto"             # sampler step: "auto" (Triton on GPU), "triton" or "eager"


@dataclass
class SampleResult:
    tokens: torch.Tensor
    nfe: int


def generation_seeds(seed: int, start: int, count: int) -> torch.Tensor:
    """Per-sample seeds of samples start .. start + count - 1 of a generation run with `seed`
    (the same sample index gets the same seed whatever the batch size)."""
    return rng.derive_seed(seed, torch.arange(start, start + count, dtype=torch.int64), rng.STREAM_SAMPLE_SEED)


def time_grid(steps: int, t_start: float | torch.Tensor = 1.0) -> torch.Tensor:
    """linspace(t_start, 1e-5, K + 1) in float64: [K + 1], or [B, K + 1] for per-sample starts."""
    if isinstance(t_start, torch.Tensor):
        return torch.stack([time_grid(steps, float(t)) for t in t_start.cpu()])
    return torch.linspace(t_start, T_END, steps + 1, dtype=torch.float64)


@torch.no_grad()
def ancestral_sample(denoise: Denoiser, schedule, settings: SamplerSettings, seeds: torch.Tensor,
                     seq_len: int, mask_id: int, noise_for: NoiseSource | None = None,
                     prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
                     t_start: float | torch.Tensor = 1.0) -> SampleResult:
    """Generate len(seeds) sequences. Every random choice derives from the per-sample seeds.
    `prefix` [B, P] clamps the first P positions to data (conditional generation). `start`
    [B, L] is a partially masked z at time `t_start` to complete (the grid then runs from
    t_start down; a [B] tensor gives each sample its own start and grid); by default
    generation starts from all-mask at t = 1."""
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
    logits, nfe = None, 0
    remaining = bool((z == mask_id).any())
    for j in range(settings.steps):
        if not remaining:
            break
        t = grid[..., j]
        alpha_t = schedule.alpha(t)
        alpha_s = torch.ones_like(t) if j == settings.steps - 1 else schedule.alpha(grid[..., j + 1])
        if grid.dim() == 1:
            t, alpha_t, alpha_s = float(t), float(alpha_t), float(alpha_s)
        weights = step_weights(alpha_t, alpha_s, settings.posterior, settings.fix_eps)
        if logits is None or not settings.cached:
            logits = denoise(z, noise, t)
            nfe += 1
        # without mask states (MDLM) there is nothing to re-draw: the whole stay mass keeps
        stay_keep, stay_redraw = (weights.stay_keep, weights.stay_redraw) if noise_for is not None \
            else (weights.stay, 0.0)
        new_z, redrawn = sampler_step(logits, z, seeds, j, weights.unmask, stay_keep, stay_redraw, mask_id,
                                      settings.temperature, settings.top_p, settings.kernel)
        # the step's only host sync: anything still masked, unmasked, re-drawn
        remaining, unmasked, any_redrawn = torch.stack([(new_z == mask_id).any(), (new_z != z).any(),
                                                        redrawn.any()]).tolist()
        z = new_z
        if any_redrawn:
            generation = torch.where(redrawn, j + 1, generation)
            noise = noise_for(seeds, generation)
        if unmasked or any_redrawn:
            logits = None
    return SampleResult(z, nfe)
