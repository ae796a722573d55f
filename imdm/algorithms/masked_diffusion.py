"""MDLM and IMDM (docs/method.md sections 1-2), registered as the processes `mdlm` and `imdm`.
IMDM is MDLM plus the mask-state embedding in the model and the three-way posterior in the
sampler; its training loss is MDLM's NELBO with a fresh mask state per masked position, so one
class serves both, told at construction whether the model has mask states."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from imdm.algorithms.protocol import Objective
from imdm.algorithms.registry import ProcessContext, ProcessSpec, register_process
from imdm.devices import host_to_device
from imdm.diffusion.forward_process import apply_mask, mask_positions
from imdm.diffusion.nelbo import masked_token_nll
from imdm.diffusion.schedule import make_schedule
from imdm.diffusion.times import sample_seeds, training_times
from imdm.kernels import masking
from imdm.models.dit import DiT
from imdm.models.mask_state import MaskStateConfig
from imdm.recipe import Recipe
from imdm.sampling.ancestral import SamplerSettings, SampleResult, ancestral_sample


class RowIndex(NamedTuple):
    """(batch, position) index lists on the device, each padded to a multiple of the bucket,
    and how many of their entries are real."""
    masked: tuple[torch.Tensor, torch.Tensor]
    scored: tuple[torch.Tensor, torch.Tensor]
    n_masked: int
    n_scored: int

    @property
    def real_masked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked list without its padding."""
        return tuple(r[: self.n_masked] for r in self.masked)


def padded_nonzero(mask: torch.Tensor, bucket: int) -> tuple[tuple[torch.Tensor, ...], int]:
    """(the indices of `mask`, one tensor per dimension, padded to a multiple of `bucket` by
    repeating the first entry), and the number of real entries."""
    rows = torch.nonzero(mask, as_tuple=True)
    n = rows[0].numel()
    pad = -n % bucket
    return (tuple(torch.cat([r, r[:1].expand(pad)]) for r in rows) if pad else rows), n


def row_indices(masked: torch.Tensor, valid: torch.Tensor | None, device: torch.device, bucket: int = 1
                ) -> RowIndex:
    """Indices on `device` of the masked positions, and of those also valid (the scored ones),
    from host masks: no device sync. With `bucket` > 1 each list is padded to a multiple of it
    (repeating its first entry), so the matmuls over these rows see a few shapes again and
    again: cuBLAS picks its kernel per shape on the host, which is slow for a shape it has not
    seen (docs/performance.md). Padding rows must get zero weight."""
    scored = masked if valid is None else masked & valid.cpu()
    (masked_rows, n_masked), (scored_rows, n_scored) = (padded_nonzero(m, bucket) for m in (masked, scored))
    to_device = functools.partial(host_to_device, device=device)
    return RowIndex(tuple(map(to_device, masked_rows)), tuple(map(to_device, scored_rows)), n_masked, n_scored)


class MaskedDiffusion(Objective):
    """Loss and sampler of a masked diffusion model: MDLM, or IMDM when `mask_state` (the
    model's mask-state configuration) is given."""

    def __init__(self, schedule, mask_id: int, seed: int, mask_state: MaskStateConfig | None = None,
                 antithetic: bool = True, kernels: str = "auto", fused_loss: bool = False, row_bucket: int = 1):
        self.schedule = schedule
        self.mask_id = mask_id
        self.seed = seed
        self.mask_state = mask_state
        self.antithetic = antithetic
        # fused_loss: the model's head returns the weighted NLL sum through the fused
        # head-matmul + cross-entropy kernel (imdm.kernels.masked_loss), with no [N, V] logits
        self.fused_loss = fused_loss
        # row_bucket: the loss's row lists are padded to a multiple of it (see row_indices)
        self.row_bucket = row_bucket
        # The mask-state noise (rows, or every position) comes from the Triton kernel on CUDA
        # tensors (`kernels`: "auto"; "triton" or "eager" forces one side), bit-identical to the
        # eager hash.
        self._noise_rows = functools.partial(masking.mask_noise_rows, backend=kernels)
        self._noise = functools.partial(masking.mask_noise, backend=kernels)

    @property
    def posterior(self) -> str:
        """The reverse step this process takes: MDLM's, or IMDM's three-way one."""
        return "mdlm" if self.mask_state is None else "imdm"

    def noise(self, seeds: torch.Tensor, seq_len: int, generation=0) -> torch.Tensor | None:
        """Seeded base noise of the mask states at every position [B, L, D], or None for MDLM."""
        cfg = self.mask_state
        if cfg is None:
            return None
        return self._noise(seeds, seq_len, cfg.noise_width, cfg.noise_dist, generation)

    def draws(self, seed: int, step: int, global_index: torch.Tensor, global_batch: int, seq_len: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t float32 [B], per-sample seeds [B], masked bool [B, L]) of these sequences of the
        global batch, on the host: functions of (seed, step, index) only."""
        index = global_index.cpu()
        t = training_times(seed, step, global_batch, self.antithetic)[index].to(torch.float32)
        seeds = sample_seeds(seed, step, index)
        return t, seeds, mask_positions(seeds, seq_len, 1 - self.schedule.alpha(t))

    def loss(self, model: DiT, x0: torch.Tensor, global_index: torch.Tensor, global_batch: int,
             step: int, seed: int | None = None, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over this micro-batch of the per-token NELBO terms (a 0-dim float32 tensor).
        Divide by the global batch's valid-token count for the training loss. `global_index`
        numbers these sequences in the global batch; t, masks and mask states derive from
        (seed, step, index). `valid` [B, L] marks real tokens (padding is fed to the model but
        never scored). Masks are drawn on the CPU, so finding the masked rows never waits for
        the GPU."""
        seed = self.seed if seed is None else seed
        t, seeds, masked = self.draws(seed, step, global_index, global_batch, x0.shape[1])
        z = apply_mask(x0, host_to_device(masked, x0.device), self.mask_id)
        return self.weighted_nll(model, x0, z, t, seeds, masked, valid)

    def weighted_nll(self, model: DiT, targets: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
                     noise_seeds: torch.Tensor, masked: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """sum of loss_weight(t) * -log x_theta(z, eps)[targets] over the positions `masked` (and
        `valid`), eps from `noise_seeds` [B] at generation 0. z and targets [B, L] on the model's
        device; t float32 [B], noise_seeds, masked and valid on the host."""
        device = z.device
        row_index = row_indices(masked, valid, device, self.row_bucket)
        masked_rows, scored_rows = row_index.masked, row_index.scored
        t = host_to_device(t, device)
        noise, cfg = None, self.mask_state
        if cfg is not None:
            seeds = host_to_device(noise_seeds, device)
            noise = self._noise_rows(seeds[masked_rows[0]], masked_rows[1], cfg.noise_width, cfg.noise_dist)
        targets = targets[scored_rows]
        weights = self.schedule.loss_weight(t)[scored_rows[0]]
        weights[row_index.n_scored:] = 0.0          # padding rows (row_bucket) score nothing
        rows = dict(select=scored_rows, noise_index=row_index.real_masked)
        if self.fused_loss:
            return model(z, noise, self.schedule.sigma(t), targets=targets, row_weight=weights, **rows)
        logits = model(z, noise, self.schedule.sigma(t), **rows)
        return (weights * masked_token_nll(logits, targets, self.mask_id)).sum()

    def sample(self, model: DiT, settings: SamplerSettings, seeds: torch.Tensor, seq_len: int,
               prefix: torch.Tensor | None = None, start: torch.Tensor | None = None,
               t_start: float | torch.Tensor = 1.0, noise_seeds: torch.Tensor | None = None) -> SampleResult:
        """Ancestral sampling with the model in eval mode; float64-exact categorical draws
        (`settings.kernel`: the fused Triton step or its eager reference). `start` [B, L] at
        time `t_start` completes a partially masked sequence. The mask states derive from
        `noise_seeds` [B] (default: `seeds`, which fix the seeded draws): samples given one
        noise seed and different seeds share their mask states and differ in their draws."""
        if model.cfg.time_conditioning and settings.cached:
            raise ValueError("cached sampling reuses x_theta across times: invalid with time conditioning")

        def denoise(z, noise, t):       # raw logits: the sampler step applies SUBS
            sigma = self.schedule.sigma(torch.as_tensor(t, dtype=torch.float32, device=z.device).expand(z.shape[0]))
            return model(z, noise, sigma)

        noise_for = None
        if self.mask_state is not None:
            states = seeds if noise_seeds is None else noise_seeds

            def noise_for(_, generation):
                return self.noise(states, seq_len, generation)
        was_training = model.training
        model.eval()
        try:
            return ancestral_sample(denoise, self.schedule, settings, seeds, seq_len, self.mask_id,
                                    noise_for, prefix, start, t_start,
                                    None if self.mask_state is None else self.mask_state.noise_dist)
        finally:
            model.train(was_training)


ROW_BUCKET_CUDA = 128


def _mask_state(recipe: Recipe) -> MaskStateConfig:
    a = recipe.algorithm
    return MaskStateConfig(a.noise_dim, a.noise_kind, a.noise_scale, a.num_masks)


def _build(ctx: ProcessContext, mask_states: bool) -> MaskedDiffusion:
    a = ctx.recipe.algorithm
    cuda = torch.device(ctx.device).type == "cuda"
    return MaskedDiffusion(make_schedule(a.noise_schedule, a.schedule_eps), ctx.mask_id, ctx.recipe.run.seed,
                           _mask_state(ctx.recipe) if mask_states else None, a.antithetic, fused_loss=cuda,
                           row_bucket=ROW_BUCKET_CUDA if cuda else 1)


def _sampler_settings(recipe: Recipe, steps: int, mask_states: bool) -> SamplerSettings:
    s = recipe.sampling
    posterior = s.posterior if s.posterior != "auto" else ("imdm" if mask_states else "mdlm")
    return SamplerSettings(steps=steps, posterior=posterior, fix_eps=s.fix_eps,
                           cached=s.cached and not recipe.algorithm.time_conditioning,
                           temperature=s.temperature, temperature_form=s.temperature_form, top_p=s.top_p,
                           kernel=s.kernel, noise_removal=s.noise_removal, draws=s.draws, eps_digits=s.eps_digits,
                           eps_order=s.eps_order)


def _check_mdlm(recipe: Recipe) -> list[str]:
    problems = []
    if recipe.sampling.posterior == "imdm":
        problems.append("sampling.posterior: 'imdm' needs mask states; algorithm.name is 'mdlm'")
    if recipe.sampling.draws == "eps":
        problems.append("sampling.draws: 'eps' draws from the mask states; algorithm.name 'mdlm' has none")
    return problems


def _check_imdm(recipe: Recipe) -> list[str]:
    a, s = recipe.algorithm, recipe.sampling
    if s.draws != "eps":
        return []
    if a.num_masks > 0:
        return ["sampling.draws: 'eps' reads continuous mask states; algorithm.num_masks > 0 has a finite set"]
    if s.eps_digits + 1 > a.noise_dim:
        return [f"sampling.eps_digits: {s.eps_digits} digits and the unmasking time need {s.eps_digits + 1} "
                f"mask-state coordinates; algorithm.noise_dim is {a.noise_dim}"]
    return []


register_process(ProcessSpec(
    "mdlm", "masked diffusion (MDLM): one deterministic mask token",
    functools.partial(_build, mask_states=False), functools.partial(_sampler_settings, mask_states=False),
    family="masked", check=_check_mdlm))
register_process(ProcessSpec(
    "imdm", "infinite mask diffusion (IMDM): a continuous state at each masked position",
    functools.partial(_build, mask_states=True), functools.partial(_sampler_settings, mask_states=True),
    model_options=lambda recipe: {"mask_state": _mask_state(recipe)}, family="masked", mask_states=True,
    check=_check_imdm))
