"""The reverse (ancestral) sampler of MDLM and IMDM: K steps on linspace(1, 1e-5, K + 1), the
last step unmasking everything, so NFE <= K (fewer with caching). Each step is
imdm.kernels.sampler_step (the fused Triton kernel on GPU, or its eager float64 reference) with
draws from the per-sample seeds, or with `draws = "eps"` imdm.sampling.eps_draws (draws from
each position's own mask state). `noise_removal = "greedy"` makes the last step take the argmax
of x_theta instead of a draw. Temperature takes one of the two forms of docs/method.md section
1, "Sampling options": the reference's ("step", every outcome's weight ** (1/T)) or x_theta's
alone ("x_theta"); eps-driven draws temper their categorical draw."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from imdm import rng
from imdm.diffusion.posterior import StepWeights, keep_states, step_weights, tempered_step_weights
from imdm.kernels.sampler_step import sampler_step
from imdm.sampling.eps_draws import eps_driven_step, eps_uniforms, greedy_tokens, left_to_right, unmasking

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
    temperature_form: str = "step"   # "step": every outcome's weight ** (1/T); "x_theta": x_theta's alone
    top_p: float = 1.0
    kernel: str = "auto"             # sampler step: "auto" (Triton on GPU), "triton" or "eager"
    noise_removal: str = "ancestral"  # the last step: "ancestral" draws, "greedy" takes x_theta's argmax
    draws: str = "seeded"            # "seeded": from the per-sample seeds; "eps": from the mask states
    eps_digits: int = 3              # draws = "eps": noise coordinates composing a draw's uniform
    eps_order: str = "eps"           # draws = "eps": unmasking times from the mask states, or "left_to_right"


@dataclass
class SampleResult:
    tokens: torch.Tensor
    nfe: int


def generation_seeds(seed: int, start: int, count: int, stream: int) -> torch.Tensor:
    """Per-sample seeds of samples start .. start + count - 1 of a generation run with `seed`
    (the same sample index gets the same seed whatever the batch size). `stream` says what the
    samples are for: rng.STREAM_EVAL_SEED (evaluation, `imdm sample`) or rng.STREAM_COUPLING_SEED
    (coupling generation); training draws its seeds in rng.STREAM_SAMPLE_SEED. Different streams
    give unrelated seeds for the same (seed, index), so an evaluation never starts from the mask
    states a model was trained on or a coupling was generated from."""
    return rng.derive_seed(seed, torch.arange(start, start + count, dtype=torch.int64), stream)


def time_grid(steps: int, t_start: float | torch.Tensor = 1.0) -> torch.Tensor:
    """linspace(t_start, 1e-5, K + 1) in float64: [K + 1], or [B, K + 1] for per-sample starts."""
    if isinstance(t_start, torch.Tensor):
        return torch.stack([time_grid(steps, float(t)) for t in t_start.cpu()])
    return torch.linspace(t_start, T_END, steps + 1, dtype=torch.float64)


def _start(seeds: torch.Tensor, seq_len: int, mask_id: int, prefix, start) -> torch.Tensor:
    """The sequence generation starts from: `start`, or all-mask; `prefix` clamped in."""
    if start is not None:
        z = start.to(device=seeds.device, dtype=torch.int64).clone()
    else:
        z = torch.full((seeds.shape[0], seq_len), mask_id, dtype=torch.int64, device=seeds.device)
    if prefix is not None:
        z[:, : prefix.shape[1]] = prefix
    return z


def _step_alphas(schedule, grid: torch.Tensor, j: int, steps: int):
    """(t, alpha_t, alpha_s) of step j: floats on a shared grid, [B] tensors on per-sample grids;
    the last step's alpha_s is 1."""
    t = grid[..., j]
    alpha_t = schedule.alpha(t)
    alpha_s = torch.ones_like(t) if j == steps - 1 else schedule.alpha(grid[..., j + 1])
    if grid.dim() == 1:
        return float(t), float(alpha_t), float(alpha_s)
    return t, alpha_t, alpha_s


def sampler_weights(settings: SamplerSettings, alpha_t, alpha_s, mask_states: bool) -> StepWeights:
    """The step's (unmask, keep, re-draw) weights as imdm.kernels.sampler_step reads them.
    Without mask states there is nothing to re-draw: the stay mass is one outcome. The "step"
    temperature form raises each outcome to 1/T, keep and re-draw apart, and `fix_eps` then
    counts a re-draw as a keep (the reference's order)."""
    weights = step_weights(alpha_t, alpha_s, settings.posterior)
    if not mask_states:
        weights = keep_states(weights)
    if settings.temperature_form == "step" and settings.temperature != 1.0:
        weights = tempered_step_weights(weights, settings.temperature)
    return keep_states(weights) if settings.fix_eps else weights


@torch.no_grad()
def ancestral_sample(denoise: Denoiser, schedule, settings: SamplerSettings, seeds: torch.Tensor,
                     seq_len: int, mask_id: int, noise_for: NoiseSource | None = None,
                     prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
                     t_start: float | torch.Tensor = 1.0, noise_dist: str | None = None) -> SampleResult:
    """Generate len(seeds) sequences. Every random choice derives from the per-sample seeds.
    `prefix` [B, P] clamps the first P positions to data (conditional generation). `start`
    [B, L] is a partially masked z at time `t_start` to complete (the grid then runs from
    t_start down; a [B] tensor gives each sample its own start and grid); by default
    generation starts from all-mask at t = 1. `noise_dist` is the mask states' base noise
    distribution, which eps-driven draws read."""
    if settings.draws == "eps":
        return _eps_driven_sample(denoise, schedule, settings, seeds, seq_len, mask_id, noise_for, prefix, start,
                                  t_start, noise_dist)
    z = _start(seeds, seq_len, mask_id, prefix, start)
    generation = torch.zeros_like(z)
    noise = noise_for(seeds, generation) if noise_for is not None else None
    grid = time_grid(settings.steps, t_start)
    logits, nfe = None, 0
    remaining = bool((z == mask_id).any())
    for j in range(settings.steps):
        if not remaining:
            break
        t, alpha_t, alpha_s = _step_alphas(schedule, grid, j, settings.steps)
        weights = sampler_weights(settings, alpha_t, alpha_s, noise_for is not None)
        if logits is None or not settings.cached:
            logits = denoise(z, noise, t)
            nfe += 1
        if j == settings.steps - 1 and settings.noise_removal == "greedy":
            z = torch.where(z == mask_id, greedy_tokens(logits, mask_id), z)
            break
        new_z, redrawn = sampler_step(logits, z, seeds, j, weights.unmask, weights.stay_keep, weights.stay_redraw,
                                      mask_id, settings.temperature, settings.top_p, settings.temperature_form,
                                      settings.kernel)
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


def _eps_driven_sample(denoise: Denoiser, schedule, settings: SamplerSettings, seeds: torch.Tensor, seq_len: int,
                       mask_id: int, noise_for: NoiseSource | None, prefix, start, t_start,
                       noise_dist: str | None) -> SampleResult:
    """ancestral_sample with eps-driven draws (imdm.sampling.eps_draws): mask states fixed for the
    whole trajectory. The network runs only on the samples one of whose positions unmasks in a
    step, so a sample costs at most as many evaluations as it has masked positions, whatever
    the step count (NFE reports the most any sample took)."""
    if noise_for is None or noise_dist is None:
        raise ValueError("eps-driven draws need mask states (an IMDM model)")
    z = _start(seeds, seq_len, mask_id, prefix, start)
    noise = noise_for(seeds, torch.zeros_like(z))
    v, u = eps_uniforms(noise, noise_dist, settings.eps_digits)
    if settings.eps_order == "left_to_right":
        v = left_to_right(v)
    grid = time_grid(settings.steps, t_start)
    masked_share = 1 - schedule.alpha(grid[..., 0]).to(v.device)   # P(masked at the start time)
    v = v * (masked_share[:, None] if masked_share.dim() == 1 else masked_share)   # unmask at or below it
    evaluations = torch.zeros(len(seeds), dtype=torch.int64, device=z.device)
    for j in range(settings.steps):
        t, _, alpha_s = _step_alphas(schedule, grid, j, settings.steps)
        last = j == settings.steps - 1
        which = (z == mask_id) if last else unmasking(z, v, alpha_s, mask_id)   # the last step unmasks all
        active = torch.nonzero(which.any(dim=1)).squeeze(1)
        if active.numel() == 0:
            if not bool((z == mask_id).any()):
                break
            continue
        t_active = t[active.cpu()] if isinstance(t, torch.Tensor) else t
        logits = denoise(z[active], noise[active], t_active)
        greedy = last and settings.noise_removal == "greedy"
        z[active] = eps_driven_step(logits, z[active], which[active], u[active], mask_id, settings.temperature,
                                    settings.top_p, greedy)
        evaluations[active] += 1
    return SampleResult(z, int(evaluations.max()) if len(seeds) else 0)
