"""ReDi and IM-ReDi (SPEC section 4): training on a teacher's couplings. The input is the stored
z_t at its stored t with, for IMDM, the mask states regenerated from the coupling's seed (the
very eps the teacher started from; never re-drawn), and the loss is the MDLM NELBO-weighted
cross-entropy toward the teacher's completion at the positions masked in z_t. Sampling and the
NELBO of real data stay with the base model (MaskedDiffusion)."""

from __future__ import annotations

import functools

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
        self.base = base
        self.schedule, self.mask_id, self.seed = base.schedule, base.mask_id, base.seed
        self.ignore_seed = ignore_seed
        # the base's own mask-state rows and SUBS cross-entropy (kernel choice included), so the
        # eps rows are bit for bit those the teacher's sampler drew from the same seed
        self._noise_rows, self._nll = base._noise_rows, base._nll

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int, step: int,
             seed: int | None = None, valid: torch.Tensor | None = None, *, z_t: torch.Tensor, t: torch.Tensor,
             coupling_seed: torch.Tensor) -> torch.Tensor:
        """Sum over the micro-batch of (weight(t) * -log x_theta(z_t, eps)[x0]) at the positions
        masked in z_t (and valid), x0 being the teacher's completion; divide by the global
        valid-token count like the MDLM loss. `z_t` [B, L], `t` [B] and `coupling_seed` [B] are
        the coupling's stored fields (host tensors); `global_index`, `step` and `seed` only pick
        the fresh mask states of `ignore_seed`."""
        seed = self.seed if seed is None else seed
        device = x0.device
        masked = z_t.cpu() == self.mask_id
        scored = masked if valid is None else masked & valid.cpu()
        to_device = functools.partial(host_to_device, device=device)
        masked_rows = [to_device(i) for i in torch.nonzero(masked, as_tuple=True)]
        scored_rows = [to_device(i) for i in torch.nonzero(scored, as_tuple=True)]
        t = to_device(t.cpu().to(torch.float32))
        noise = None
        if model.mask_state is not None:
            cfg = model.mask_state.cfg
            seeds = sample_seeds(seed, step, global_index.cpu()) if self.ignore_seed else coupling_seed.cpu()
            noise = self._noise_rows(to_device(seeds)[masked_rows[0]], masked_rows[1], cfg.noise_width, cfg.noise_dist)
        logits = model(to_device(z_t.cpu()), noise, self.schedule.sigma(t), select=tuple(scored_rows),
                       noise_index=tuple(masked_rows))
        nll = self._nll(logits, x0[scored_rows[0], scored_rows[1]], self.mask_id)
        return (self.schedule.loss_weight(t)[scored_rows[0]] * nll).sum()
