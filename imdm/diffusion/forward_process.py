"""The forward (masking) process and the mask-state noise, both functions of per-sample seeds."""

from __future__ import annotations

import math

import torch

from imdm import rng


def mask_positions(seeds: torch.Tensor, seq_len: int, move_prob: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: position i of sample b is masked with probability move_prob[b] = 1 - alpha_t."""
    pos = torch.arange(seq_len, device=seeds.device, dtype=torch.int64)
    u = rng.uniform24(seeds[:, None], pos[None, :], rng.STREAM_MASK)
    return u < move_prob.to(torch.float32)[:, None]


def apply_mask(x0: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """z_t: the mask token where `masked`, the clean token elsewhere."""
    return torch.where(masked, torch.full_like(x0, mask_id), x0)


def mask_noise_rows(seeds: torch.Tensor, positions: torch.Tensor, dim: int, dist: str,
                    generation: int | torch.Tensor = 0) -> torch.Tensor:
    """Base noise [M, dim] of M mask states, row m belonging to the sequence with seed
    seeds[m] at position positions[m]; a pure function of (seed, position, dim, generation):
    'uniform' in (-1, 1), or 'normal' N(0, 1) by Box-Muller. `generation` (scalar or [M])
    numbers re-draws in the sampler; training uses generation 0."""
    device = seeds.device
    counter = positions[:, None].to(torch.int64) * dim + torch.arange(dim, device=device, dtype=torch.int64)[None, :]
    if isinstance(generation, torch.Tensor):
        generation = generation.to(device=device, dtype=torch.int64)[:, None]
    stream = rng.STREAM_EPS + 2 * generation     # a Python int stays on the host: no copy, no sync
    u1 = rng.uniform24(seeds[:, None], counter, stream)
    if dist == "uniform":
        return 2 * u1 - 1
    if dist == "normal":
        u2 = rng.uniform24(seeds[:, None], counter, stream + 1)
        return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)
    raise ValueError(f"unknown mask-noise distribution {dist!r}")


def mask_noise(seeds: torch.Tensor, seq_len: int, dim: int, dist: str, generation: int | torch.Tensor = 0
               ) -> torch.Tensor:
    """Base noise [B, L, dim] at every position (the same numbers `mask_noise_rows` gives for
    each row); `generation` is a scalar or [B, L]. imdm.kernels.masking.mask_noise is the
    kernel for it."""
    batch = seeds.shape[0]
    positions = torch.arange(seq_len, device=seeds.device, dtype=torch.int64).repeat(batch)
    gen = generation.reshape(-1) if isinstance(generation, torch.Tensor) else generation
    rows = mask_noise_rows(seeds.repeat_interleave(seq_len), positions, dim, dist, gen)
    return rows.view(batch, seq_len, dim)
