"""What the trainer, the sampler, coupling generation and evaluation ask of an algorithm.

An algorithm is two registered parts (imdm.algorithms.registry):
- a *process* (the recipe's `algorithm.name`: mdlm, imdm, ...): the generative model family.
  It says how the network is configured, scores real data (its own likelihood bound, the
  validation NELBO) and generates (`sample`);
- a *training objective* (`algorithm.objective`: nelbo, sdtt, redi, ...): the loss one training
  step minimises. The process's own bound is the objective `nelbo`.

Both are plain objects; `Objective` supplies the defaults of the optional hooks."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Objective:
    """A training loss. `loss` returns the SUM over a micro-batch of per-position terms (a 0-dim
    float32 tensor); the trainer divides by the global batch's `loss_count` total, so every
    data-parallel layout and micro-batch split computes the same update.

    loss(model, x0 [B, L] on the device, global_index [B] (host: the rows' positions in the
    global batch), global_batch, step, seed=None (None: the run seed), valid=None (bool [B, L]
    host: real tokens), **extras (per-row host fields the dataset adds, e.g. a coupling's z_t))."""

    def loss(self, model: nn.Module, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, **extras) -> torch.Tensor:
        raise NotImplementedError

    def loss_count(self, global_index: torch.Tensor, global_batch: int, step: int, valid: torch.Tensor) -> float:
        """How many positions this micro-batch's loss averages over, computed on the host: by
        default its valid tokens."""
        return float(valid.sum())

    def begin_step(self, step: int, model: nn.Module) -> None:
        """Called before a step's micro-batches (e.g. a distillation round refreshes its teacher)."""

    def state_dict(self) -> dict:
        """Checkpointed state beyond the model and optimizer (e.g. a teacher); {} for none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""


class Process(Protocol):
    """A generative process: an Objective on real data (its own bound) that also samples."""

    mask_id: int

    def loss(self, model: nn.Module, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, **extras) -> torch.Tensor: ...

    def loss_count(self, global_index: torch.Tensor, global_batch: int, step: int, valid: torch.Tensor) -> float: ...

    def sample(self, model: nn.Module, settings, seeds: torch.Tensor, seq_len: int,
               prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
               t_start: float | torch.Tensor = 1.0, noise_seeds: torch.Tensor | None = None):
        """Generate len(seeds) sequences (a SampleResult: tokens [B, L] and NFE); every random
        choice derives from the per-sample seeds, and any per-position state (IMDM's mask
        states) from `noise_seeds` (default: `seeds`). `start` [B, L] at `t_start` completes a
        partially generated sequence; `prefix` [B, P] clamps the first P positions. `settings`
        is what the process's spec makes from the recipe (ProcessSpec.sampler_settings)."""
        ...
