"""ReDi and IM-ReDi (SPEC section 4): training on a teacher's couplings. The input is the stored
z_t at its stored t with, for IMDM, the mask states regenerated from the coupling's seed (the
very eps the teacher started from; never re-drawn), and the loss is the MDLM NELBO-weighted
cross-entropy toward the teacher's completion at the positions masked in z_t. Sampling and the
NELBO of real data stay with the base model (MaskedDiffusion)."""

from __future__ import annotations

import torch

from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.diffusion.times import sample_seeds
from imdm.models.dit import DiT
from imdm.parallel.distributed import host_to_device


class Rectification:
    """Loss on coupling batches (z_t, t, coupling_seed beside x0 = the teacher's completion).
    `ignore_seed` feeds fresh mask states from (run seed, step, index) instead, for teachers
    whose completions do not depend on eps (MDLM)."""

    def __init__(self, base: MaskedDiffusion, ignore_seed: bool = False):
        self.base, self.ignore_seed = base, ignore_seed

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, *, z_t: torch.Tensor, t: torch.Tensor,
             coupling_seed: torch.Tensor) -> torch.Tensor:
        """Sum over the micro-batch of (weight(t) * -log x_theta(z_t, eps)[x0]) at the positions
        masked in z_t (and valid), x0 being the teacher's completion; divide by the global
        valid-token count like the MDLM loss. `z_t` [B, L], `t` [B] and `coupling_seed` [B] are
        the coupling's stored fields (host tensors); `global_index`, `step` and `seed` only pick
        the fresh mask states of `ignore_seed`. The base's own mask-state rows (kernel choice
        included) make the eps bit for bit those the teacher's sampler drew from the seed."""
        seed = self.base.seed if seed is None else seed
        noise_seeds = sample_seeds(seed, step, global_index.cpu()) if self.ignore_seed else coupling_seed.cpu()
        z_t = z_t.cpu()
        return self.base.weighted_nll(model, x0, host_to_device(z_t, x0.device), t.cpu().to(torch.float32),
                                      noise_seeds, z_t == self.base.mask_id, valid)
