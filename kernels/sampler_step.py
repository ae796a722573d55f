"""Fused reverse step of the MDLM / IMDM ancestral sampler (SPEC sections 1-2).

Fuses, per position and in one kernel over the raw logits [B, L, V] (bf16, fp16 or fp32):
SUBS (mask logit excluded, clean positions copied), temperature, nucleus top-p, the MDLM or
IMDM posterior weights, the exact categorical draw and the IMDM re-draw decision.
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
such ties). Clean positions never read their logits. `sampler_step_reference` is the eager
step, float64 from the logits on.
"""

from __future__ import annotations

import torch

from imdm import rng
from imdm.kernels.backend import use_triton
from imdm.sampling.categorical import categorical_from_uniform, shape_probs

try:
    import triton
    import triton.language as tl

    from imdm.kernels.sampler_rng import uniform53
except ImportError:      # no Triton (e.g. macOS): the eager step only
    triton = None



def per_sample_weights(batch: int, unmask, stay_keep, stay_redraw) -> torch.Tensor:
    """float64 [B, 3] host tensor of (unmask, stay, re-draw share of stay) per sample, from
    floats or [B] tensors."""
    w = torch.stack([torch.as_tensor(x, dtype=torch.float64).cpu().expand(batch)
                     for x in (unmask, stay_keep, stay_redraw)], dim=1)
    stay = w[:, 1] + w[:, 2]
    share = torch.where(stay > 0, w[:, 2] / torch.where(stay > 0, stay, 1.0), 0.0)
    return torch.stack([w[:, 0], stay, share], dim=1)


def sampler_step_reference(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                           weights: torch.Tensor, mask_id: int, temperature: float = 1.0,
                           top_p: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager step, float64 from the logits on, with `per_sample_weights`: new tokens [B, L]
    and which positions re-draw their mask state."""
    new_z = z.clone()
    redrawn = torch.zeros_like(z, dtype=torch.bool)
    rows_b, rows_l = torch.nonzero(z == mask_id, as_tuple=True)
    if rows_b.numel() == 0:
        return new_z, redrawn
    x = logits[rows_b, rows_l].double()
    x[:, mask_id] = float("-inf")           # SUBS at a masked position: never predict the mask
    w = shape_probs(torch.log_softmax(x, dim=-1), temperature, top_p)
    del x
    row_weights = weights.to(w.device)[rows_b]
    w.mul_(row_weights[:, :1])[:, mask_id] = row_weights[:, 1]
    u = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_CATEGORICAL + step_index)
    choice = categorical_from_uniform(w, u)
    new_z[rows_b, rows_l] = choice
    if bool((weights[:, 2] > 0).any()):
        r = rng.uniform53(seeds[rows_b], rows_l, rng.STREAM_REDRAW + step_index)
        redrawn[rows_b, rows_l] = (choice == mask_id) & (r < row_weights[:, 2])
    return new_z, redrawn


if triton is not None:
    @triton.jit(do_not_specialize=["n_pos", "vocab", "row_stride", "cat_stream", "redraw_stream", "mask_id"])
    def _sampler_step_kernel(logits_ptr, z_ptr, seeds_ptr, params_ptr, out_z_ptr, out_redraw_ptr,
                             n_pos, vocab, row_stride, cat_stream, redraw_stream, mask_id,
                             BLOCK: tl.constexpr, N_BLOCKS: tl.constexpr, TOP_P: tl.constexpr,
                             REDRAW: tl.constexpr, KEY_SHIFT: tl.constexpr):
        # One program per position. Top-p compares int32 keys ordered as the logits,
        # bits ^ ((bits >> 31) & 0x7FFFFFFF), shifted past the bits a bf16/fp16 logit never sets.
        row = tl.program_id(0).to(tl.int64)
        z = tl.load(z_ptr + row)
        choice = z
        redrawn = z < 0
        if z == mask_id:
            sample = row // n_pos
            unmask = tl.load(params_ptr + 5 * sample)
            stay = tl.load(params_ptr + 5 * sample + 1)
            redraw_share = tl.load(params_ptr + 5 * sample + 2)
            inv_t64 = tl.load(params_ptr + 5 * sample + 3)
            inv_t = inv_t64.to(tl.float32)
            top_p = tl.load(params_ptr + 5 * sample + 4)
            seed = tl.load(seeds_ptr + sample)
            pos = row % n_pos
            base = logits_ptr + row * row_stride
            cols = tl.arange(0, BLOCK)
            blocks = tl.arange(0, N_BLOCKS)
            # the one pass over the row: per block, its largest logit (the shift) and the float64
            # sum of the fp32 exp((logit - shift) / T) of its real tokens
            shifts = tl.zeros([N_BLOCKS], tl.float32)
            sums = tl.zeros([N_BLOCKS], tl.float64)
            m = tl.full([], float("-inf"), tl.float32)
            bottom = tl.full([BLOCK], float("inf"), tl.float32)
            for start in range(0, vocab, BLOCK):
                offs = start + cols
                ok = (offs < vocab) & (offs != mask_id)
                x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
                peak = tl.max(x, 0)
                shift = tl.where(peak > float("-inf"), peak, 0.0)
                here = blocks == start // BLOCK
                sums = tl.where(here, tl.sum(tl.exp((x - shift) * inv_t).to(tl.float64), 0), sums)
                shifts = tl.where(here, shift, shifts)
                m = tl.maximum(m, peak)
                if TOP_P:
                    bottom = tl.minimum(bottom, tl.where(ok, x, float("inf")))
            # token v of block b weighs exp((x_v - shift_b) / T) * scales[b] = exp((x_v - max) / T)
            scales = tl.where(sums > 0, tl.exp((shifts.to(tl.float64) - m.to(tl.float64)) * inv_t64), 0.0)
            mass = sums * scales
            if TOP_P:
                # bisect for the largest key whose upper set still holds top_p of the mass
                # (ties at the threshold all stay); `mass` follows the upper set
                low_bits = tl.min(bottom, 0).to(tl.int32, bitcast=True)
                lo = ((low_bits ^ ((low_bits >> 31) & 0x7FFFFFFF)) >> KEY_SHIFT).to(tl.int64)
                high_bits = m.to(tl.int32, bitcast=True)
                hi = ((high_bits ^ ((high_bits >> 31) & 0x7FFFFFFF)) >> KEY_SHIFT).to(tl.int64) + 1
                need = top_p * tl.sum(mass, 0)
                while hi - lo > 1:
                    mid = lo + (hi - lo) // 2
                    upper_sums = tl.zeros([N_BLOCKS], tl.float64)
                    above = tl.full([BLOCK], 2147483647, tl.int32)
                    below = tl.full([BLOCK], -2147483648, tl.int32)
                    for start in range(0, vocab, BLOCK):
                        offs = start + cols
                        ok = (offs < vocab) & (offs != mask_id)
                        x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
                        bits = x.to(tl.int32, bitcast=True)
                        key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)) >> KEY_SHIFT
                        upper = key >= mid
                        here = blocks == start // BLOCK
                        shift = tl.sum(tl.where(here, shifts, 0.0), 0)
                        e = tl.where(upper, tl.exp((x - shift) * inv_t).to(tl.float64), 0.0)
                        upper_sums = tl.where(here, tl.sum(e, 0), upper_sums)
                        above = tl.minimum(above, tl.where(ok & upper, key, 2147483647))
                        below = tl.maximum(below, tl.where(ok & ~upper, key, -2147483648))
                    upper_mass = upper_sums * scales
                    enough = tl.sum(upper_mass, 0) >= need
                    # snap the bracket to keys that occur, so empty key ranges cost no pass
                    lo = tl.where(enough, tl.min(above, 0).to(tl.int64), lo)
                    hi = tl.where(enough, hi, tl.max(below, 0).to(tl.int64) + 1)
                    mass = tl.where(enough, upper_mass, mass)
            # u * total against the float64 CDF of the posterior weights, first over blocks (the
            # stay weight sits in the mask's block), then inside the one block that crosses it
            to_weight = unmask / tl.sum(mass, 0)
            block_w = mass * to_weight + tl.where(blocks == mask_id // BLOCK, stay, 0.0)
            cdf = tl.cumsum(block_w, 0)
            target = uniform53(seed, pos, cat_stream) * (unmask + stay)
            crossing = tl.min(tl.where(cdf > target, blocks, N_BLOCKS), 0)
            b = tl.minimum(crossing, tl.max(tl.where(block_w > 0, blocks, -1), 0))   # past the end: rounding
            here = blocks == b
            offs = b * BLOCK + cols
            ok = (offs < vocab) & (offs != mask_id)
            x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
            e = tl.exp((x - tl.sum(tl.where(here, shifts, 0.0), 0)) * inv_t).to(tl.float64)
            if TOP_P:
                bits = x.to(tl.int32, bitcast=True)
                e = tl.where(((bits ^ ((bits >> 31) & 0x7FFFFFFF)) >> KEY_SHIFT) >= lo, e, 0.0)
            w = tl.where(offs == mask_id, stay, e * (tl.sum(tl.where(here, scales, 0.0), 0) * to_weight))
            cum = tl.cumsum(w, 0) + tl.sum(tl.where(blocks == b - 1, cdf, 0.0), 0)
            found = tl.min(tl.where(cum > target, offs, 2147483647), 0)
            last = tl.max(tl.where(w > 0, offs, -1), 0)
            choice = tl.where(found < 2147483647, found, last).to(tl.int64)
            if REDRAW:
                if choice == mask_id:
                    redrawn = uniform53(seed, pos, redraw_stream) < redraw_share
        tl.store(out_z_ptr + row, choice)
        tl.store(out_redraw_ptr + row, redrawn)

    _KEY_SHIFT = {torch.float32: 0, torch.bfloat16: 16, torch.float16: 13}
    # (block, warps) by top-p, tuned on an H200 for [16, 1024, 50258] bf16 logits. Without top-p:
    # 1024 x 2 warps 1.03 ms, 2048 x 4 1.18 ms, 2048 x 8 1.47 ms; top-p 0.9: 2048 x 8 26 ms,
    # 1024 x 2 64 ms
    CUDA_CONFIG = {False: (1024, 2), True: (2048, 8)}

    def _launch(logits, z, seeds, step_index, weights, mask_id, temperature, top_p):
        batch, n_pos, vocab = logits.shape
        rows = logits.reshape(batch * n_pos, vocab)      # a view for padded or broadcast rows
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        z, seeds = z.contiguous(), seeds.to(torch.int64).contiguous()
        redraw = bool((weights[:, 2] > 0).any())     # a host tensor: no device sync
        knobs = torch.tensor([1.0 / temperature, top_p], dtype=torch.float64).expand(batch, 2)
        params = torch.cat([weights, knobs], dim=1).to(z.device, non_blocking=True)   # [B, 5]
        new_z = torch.empty_like(z)
        redrawn = torch.empty(z.shape, dtype=torch.bool, device=z.device)
        block, warps = CUDA_CONFIG[top_p < 1.0]
        if not rows.is_cuda:       # the interpreter pays per operation, not per element
            block = 16384
        block = min(block, triton.next_power_of_2(vocab))
        _sampler_step_kernel[(batch * n_pos,)](
            rows, z, seeds, params, new_z, redrawn,
            n_pos, vocab, rows.stride(0), rng.STREAM_CATEGORICAL + step_index, rng.STREAM_REDRAW + step_index,
            mask_id, BLOCK=block, N_BLOCKS=triton.next_power_of_2(triton.cdiv(vocab, block)), TOP_P=top_p < 1.0,
            REDRAW=redraw, KEY_SHIFT=_KEY_SHIFT[logits.dtype], num_warps=warps)
        return new_z, redrawn


@torch.library.custom_op("imdm::sampler_step", mutates_args=())
def _sampler_step_op(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                     weights: torch.Tensor, mask_id: int, temperature: float,
                     top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(logits, z, seeds, step_index, weights, mask_id, temperature, top_p)


@_sampler_step_op.register_fake
def _(logits, z, seeds, step_index, weights, mask_id, temperature, top_p):
    return z.new_empty(z.shape), z.new_empty(z.shape, dtype=torch.bool)


def sampler_step(logits: torch.Tensor, z: torch.Tensor, seeds: torch.Tensor, step_index: int,
                 unmask, stay_keep, stay_redraw, mask_id: int, temperature: float = 1.0, top_p: float = 1.0,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step for every position of z [B, L] (int64) from the raw logits [B, L, V]:
    masked positions draw a token or stay masked with the posterior weights (unmask mass times
    x_theta, stay_keep, stay_redraw: floats, or [B] tensors with one value per sample); returns
    the new tokens and a bool [B, L] marking positions that stayed masked and re-draw their
    mask state. Random choices come from the int64
    per-sample `seeds` [B], the position and `step_index`. backend: "auto" (Triton on CUDA),
    "triton", or "eager" (the float64 reference)."""
    if logits.dim() != 3 or logits.shape[:2] != z.shape or seeds.shape != z.shape[:1]:
        raise ValueError(f"need logits [B, L, V], z [B, L], seeds [B]; got {tuple(logits.shape)}, "
                         f"{tuple(z.shape)}, {tuple(seeds.shape)}")
    args = (logits, z, seeds, step_index, per_sample_weights(z.shape[0], unmask, stay_keep, stay_redraw), mask_id,
            temperature, top_p)
    if not use_triton(backend, logits):
        return sampler_step_reference(*args)
    if logits.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"fused sampler step reads fp32/bf16/fp16 logits, got {logits.dtype}")
    return torch.ops.imdm.sampler_step(*args)
