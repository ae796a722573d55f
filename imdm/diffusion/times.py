"""Training times t, stratified over the GLOBAL batch so every rank's slice belongs to one
set of strata whatever the world size."""

from __future__ import annotations

import torch

from imdm import rng

T_MIN = 1e-3


def training_times(seed: int, step: int, global_batch: int, antithetic: bool = True) -> torch.Tensor:
    """float64 t for every sequence of the global batch at `step`:
    t_i = ((u + i) / n mod 1) with one u per step (`antithetic`), or (u_i + i) / n with one u_i
    per stratum; then t <- (1 - T_MIN) t + T_MIN."""
    step_seed = rng.derive_seed(seed, torch.tensor(step), rng.STREAM_TIME)
    index = torch.arange(global_batch, dtype=torch.int64)
    if antithetic:
        u = rng.uniform53(step_seed, torch.tensor(0), rng.STREAM_TIME)
        t = torch.remainder((u + index.to(torch.float64)) / global_batch, 1.0)
    else:
        t = (rng.uniform53(step_seed, index, rng.STREAM_TIME) + index.to(torch.float64)) / global_batch
    return (1 - T_MIN) * t + T_MIN


def sample_seeds(seed: int, step: int, global_index: torch.Tensor) -> torch.Tensor:
    """One 63-bit seed per sequence of the step (indexed in the global batch): it fixes that
    sequence's mask and mask states."""
    step_seed = rng.derive_seed(seed, torch.tensor(step), rng.STREAM_SAMPLE_SEED)
    return rng.derive_seed(step_seed, global_index, rng.STREAM_SAMPLE_SEED)
