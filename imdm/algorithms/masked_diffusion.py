"""MDLM and IMDM (SPEC sections 1-2). IMDM is MDLM plus the mask-state embedding in the model
and the three-way posterior in the sampler; its training loss is MDLM's NELBO with a fresh
mask state per masked position, so one class serves both."""

from __future__ import annotations

import torch

from imdm.diffusion.forward_process import apply_mask, mask_noise, mask_positions
from imdm.diffusion.nelbo import masked_nelbo_terms
from imdm.diffusion.subs import masked_log_probs, subs_log_probs
from imdm.diffusion.times import sample_seeds, training_times
from imdm.models.dit import DiT
from imdm.sampling.ancestral import SamplerSettings, SampleResult, ancestral_sample


class MaskedDiffusion:
    """Loss and sampler of a masked diffusion model; `model.mask_state` decides MDLM vs IMDM."""

    def __init__(self, schedule, mask_id: int, seed: int, antithetic: bool = True, fuse_noise: bool = False):
        self.schedule = schedule
        self.mask_id = mask_id
        self.seed = seed
        self.antithetic = antithetic
        # On GPU the counter-based hash (dozens of int64 element-wise ops over [B, L, D]) is
        # compiled into one kernel; the bits are identical to the eager function.
        self._mask_noise = torch.compile(mask_noise, dynamic=True) if fuse_noise else mask_noise

    @staticmethod
    def has_mask_states(model: DiT) -> bool:
        return model.mask_state is not None

    def noise(self, model: DiT, seeds: torch.Tensor, seq_len: int, generation=0) -> torch.Tensor | None:
        """Seeded base noise of the mask states, or None for MDLM."""
        if model.mask_state is None:
            return None
        cfg = model.mask_state.cfg
        return self._mask_noise(seeds, seq_len, cfg.noise_width, cfg.noise_dist, generation)

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int,
             step: int, seed: int | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over this micro-batch of the per-token NELBO terms (a 0-dim float32 tensor).
        Divide by the global batch's valid-token count for the training loss. `global_index`
        numbers these sequences in the global batch; t and masks derive from (seed, step, index).
        `valid` [B, L] marks real tokens (padding is fed to the model but never scored)."""
        seed = self.seed if seed is None else seed
        device = x0.device
        t = training_times(seed, step, global_batch, self.antithetic)[global_index.cpu()]
        t = t.to(device=device, dtype=torch.float32)
        seeds = sample_seeds(seed, step, global_index.cpu()).to(device)
        masked = mask_positions(seeds, x0.shape[1], 1 - self.schedule.alpha(t))
        z = apply_mask(x0, masked, self.mask_id)
        scored = masked if valid is None else masked & valid
        rows_b, rows_l = torch.nonzero(scored, as_tuple=True)
        logits = model(z, self.noise(model, seeds, x0.shape[1]), self.schedule.sigma(t), select=(rows_b, rows_l))
        log_probs = masked_log_probs(logits, self.mask_id)
        weight = self.schedule.loss_weight(t)[rows_b]
        return masked_nelbo_terms(log_probs, x0[rows_b, rows_l], weight).sum()

    def sample(self, model: DiT, settings: SamplerSettings, seeds: torch.Tensor, seq_len: int,
               prefix: torch.Tensor | None = None) -> SampleResult:
        """Ancestral sampling with the model in eval mode; float64-exact categorical draws."""
        if model.cfg.time_conditioning and settings.cached:
            raise ValueError("cached sampling reuses x_theta across times: invalid with time conditioning")

        def denoise(z, noise, t):
            sigma = self.schedule.sigma(torch.full((z.shape[0],), t, device=z.device))
            return subs_log_probs(model(z, noise, sigma), z, self.mask_id)

        noise_for = None
        if model.mask_state is not None:
            def noise_for(s, generation):
                return self.noise(model, s, seq_len, generation)
        was_training = model.training
        model.eval()
        try:
            return ancestral_sample(denoise, self.schedule, settings, seeds, seq_len, self.mask_id,
                                    noise_for, prefix)
        finally:
            model.train(was_training)
