"""Fused reverse step of the MDLM / IMDM ancestral sampler (docs/method.md sections 1-2).

Fuses, per position and in one kernel over the raw logits [B, L, V] (bf16, fp16 or fp32):
SUBS (mask logit excluded, clean positions copied), temperature (either form of docs/method.md
section 1, "Sampling options"), nucleus top-p, the MDLM or IMDM posterior weights, the exact
categorical draw and the IMDM re-draw decision.
Replaces: the eager float64 step of imdm.sampling.ancestral (softmax, probabilities, a sort
for top-p, cumsum and searchsorted over [rows, V]: several float64 [B, L, V] tensors).

The draw keeps float64 inverse-CDF statistics without a float64 [B, L, V] tensor: one pass
over the row sums, per block, the fp32 exp(logit - block max) in float64 (block sums and
maxima stay in registers; a float64 factor exp(block max - row max) joins the blocks), then
u * total (u: imdm.rng.uniform53, 53 random bits made in the kernel from the per-sample seed)
is located in the float64 CDF of the block masses and, in the one block that crosses it, in
the float64 running sum of the weights: about one read of the logits. Top-p bisects over
order-preserving integer keys of the logits, one pass per halving, so nothing is sorted; the
nucleus keeps every token tied with its smallest member (a sort keeps an arbitrary subset of
such ties). Clean positions never read their logits. The kernel lives in
sampler_step_triton.py; `sampler_step_reference` is the eager step, float64 from the logits on.

Temperature forms: "x_theta" draws token v with weight unmask * x_theta_T(v), x_theta_T the
renormalised x_theta ** (1/T) after top-p; "step" (the reference's) with weight
unmask * x_theta(v) ** (1/T), x_theta after top-p on the untempered probabilities, and expects
the caller's step weights tempered already (imdm.diffusion.posterior.tempered_step_weights).
At T = 1 both are the untempered step.
"""

from __future__ import annotations

import torch

from imdm import rng
from imdm.kernels.backend import use_triton
from imdm.diffusion.categorical import categorical_from_uniform, shape_probs

TEMPERATURE_FORMS = ("step", "x_theta")


def per_sample_weights(batch: int, unmask, stay_keep, stay_redraw) -> torch.Tensor:
    """float64 [B, 3] host tensor of (unmask, stay, re-draw share of stay) per sample, from
    floats or [B] tensors."""
    w = torch.stack([torch.as_tensor(x, dtype=torch.float64).cpu().expand(batch)
                     for x in (unmask, stay_keep, stay_redraw)], dim=1)
    stay = w[:, 1] + w[:, 2]
    share = torch.where(stay > 0, w[:, 2] / torch.where(stay > 0, stay, 1.0), 0.0)
    return torch.stack([w[:, 0], stay, share], dim=1)


def outcome_weights(logits: torch.Tensor, row_weights: torch.Tensor, mask_id: int, temperature: float = 1.0,
                    top_p: float = 1.0, temperature_form: str = "x_theta") -> torch.Tensor:
    """float64 [N, V] weights, in proportion to which the step draws, of the outcomes of N masked
    positions from their raw logits [N, V] and `per_sample_weights` rows [N, 3]: token v (the
    unmask weight times x_theta's factor of `temperature_form`) and, at the mask id, staying
    masked."""
    x = logits.double()
    x[:, mask_id] = float("-inf")           # SUBS at a masked position: never predict the mask
    log_probs = torch.log_softmax(x, dim=-1)
    del x
    if temperature_form == "x_theta" or temperature == 1.0:
        w = shape_probs(log_probs, temperature, top_p)
    else:
        w = shape_probs(log_probs, 1.0, top_p).pow_(1.0 / temperature)
    row_weights = row_weights.to(w.device)
    w.mul_(row_weights[:, :1])[:, mask_id] = row_weights[:, 1]
    return w


def sampler_step_reference(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                           weights: torch.Tensor, mask_id: int, temperature: float = 1.0,
                           top_p: float = 1.0, temperature_form: str = "x_theta") -> tuple[torch.Tensor, torch.Tensor]:
    """The eager step, float64 from the logits on, with `per_sample_weights`: new tokens [B, L]
    and which positions re-draw their mask state."""
    new_z = z.clone()
    redrawn = torch.zeros_like(z, dtype=torch.bool)
    rows_b, rows_l = torch.nonzero(z == mask_id, as_tuple=True)
    if rows_b.numel() == 0:
        return new_z, redrawn
    row_weights = weights.to(logits.device)[rows_b]
    w = outcome_weights(logits[rows_b, rows_l], row_weights, mask_id, temperature, top_p, temperature_form)
    u = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_CATEGORICAL + step_index)
    choice = categorical_from_uniform(w, u)
    new_z[rows_b, rows_l] = choice
    if bool((weights[:, 2] > 0).any()):
        r = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_REDRAW + step_index)
        redrawn[rows_b, rows_l] = (choice == mask_id) & (r < row_weights[:, 2])
    return new_z, redrawn


@torch.library.custom_op("imdm::sampler_step", mutates_args=())
def _sampler_step_op(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                     weights: torch.Tensor, mask_id: int, temperature: float,
                     top_p: float, temperature_form: str) -> tuple[torch.Tensor, torch.Tensor]:
    from imdm.kernels.sampler_step_triton import launch
    return launch(logits, z, seeds, step_index, weights, mask_id, temperature, top_p, temperature_form)


@_sampler_step_op.register_fake
def _(logits, z, seeds, step_index, weights, mask_id, temperature, top_p, temperature_form):
    return z.new_empty(z.shape), z.new_empty(z.shape, dtype=torch.bool)


def sampler_step(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                 unmask, stay_keep, stay_redraw, mask_id: int, temperature: float = 1.0, top_p: float = 1.0,
                 temperature_form: str = "x_theta", backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step for every position of z [B, L] (int64) from the raw logits [B, L, V]:
    masked positions draw a token or stay masked with the posterior weights (unmask mass times
    x_theta's factor of `temperature_form`, stay_keep, stay_redraw: floats, or [B] tensors with
    one value per sample; drawn in proportion); returns the new tokens and a bool [B, L]
    marking positions that stayed masked and re-draw their mask state. Random choices come
    from the int64 per-sample `seeds` [B], the position and `step_index`. backend: "auto"
    (Triton on CUDA), "triton", or "eager" (the float64 reference)."""
    if logits.dim() != 3 or logits.shape[:2] != z.shape or seeds.shape != z.shape[:1]:
        raise ValueError(f"need logits [B, L, V], z [B, L], seeds [B]; got {tuple(logits.shape)}, "
                         f"{tuple(z.shape)}, {tuple(seeds.shape)}")
    if temperature_form not in TEMPERATURE_FORMS:
        raise ValueError(f"unknown temperature form {temperature_form!r}; known: {', '.join(TEMPERATURE_FORMS)}")
    args = (logits, z, seeds, step_index, per_sample_weights(z.shape[0], unmask, stay_keep, stay_redraw), mask_id,
            temperature, top_p, temperature_form)
    if not use_triton(backend, logits):
        return sampler_step_reference(*args)
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"fused sampler step reads fp32/bf16/fp16 logits, got {logits.dtype}")
    return torch.ops.imdm.sampler_step(*args)
