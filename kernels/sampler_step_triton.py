"""Triton kernel of imdm.kernels.sampler_step (imported only when the kernel runs, so the
package works without Triton): one program per position, as described there."""

import torch
import triton
import triton.language as tl

from imdm import rng
from imdm.kernels.sampler_rng import uniform53


@triton.jit
def _order_key(x, KEY_SHIFT: tl.constexpr):
    """int32 keys ordered as the float32 values x: bits ^ ((bits >> 31) & 0x7FFFFFFF), shifted
    past the bits a bf16/fp16 logit never sets."""
    bits = x.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)) >> KEY_SHIFT


@triton.jit
def _pick(values, here):
    """The entry of the per-block vector `values` where `here` is true."""
    return tl.sum(tl.where(here, values, 0.0), 0)


@triton.jit(do_not_specialize=["n_pos", "vocab", "row_stride", "cat_stream", "redraw_stream", "mask_id"])
def _sampler_step_kernel(logits_ptr, z_ptr, seeds_ptr, params_ptr, out_z_ptr, out_redraw_ptr,
                         n_pos, vocab, row_stride, cat_stream, redraw_stream, mask_id,
                         BLOCK: tl.constexpr, N_BLOCKS: tl.constexpr, TOP_P: tl.constexpr,
                         REDRAW: tl.constexpr, KEY_SHIFT: tl.constexpr, STEP_FORM: tl.constexpr):
    # One program per position. Top-p compares int32 keys ordered as the logits (_order_key).
    # STEP_FORM (temperature form "step", T != 1): token v weighs unmask * p(v) ** (1/T), p the
    # untempered x_theta renormalised over the nucleus, which top-p chooses on untempered mass.
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
        # sum of the fp32 exp((logit - shift) / T) of its real tokens (STEP_FORM: and of the
        # untempered exp(logit - shift))
        shifts = tl.zeros([N_BLOCKS], tl.float32)
        sums = tl.zeros([N_BLOCKS], tl.float64)
        plain_sums = tl.zeros([N_BLOCKS], tl.float64)
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
            if STEP_FORM:
                plain_sums = tl.where(here, tl.sum(tl.exp(x - shift).to(tl.float64), 0), plain_sums)
            shifts = tl.where(here, shift, shifts)
            m = tl.maximum(m, peak)
            if TOP_P:
                bottom = tl.minimum(bottom, tl.where(ok, x, float("inf")))
        # token v of block b weighs exp((x_v - shift_b) / T) * scales[b] = exp((x_v - max) / T)
        scales = tl.where(sums > 0, tl.exp((shifts.to(tl.float64) - m.to(tl.float64)) * inv_t64), 0.0)
        mass = sums * scales
        # the mass the nucleus is chosen on and x_theta is normalised by: tempered, or untempered
        # (STEP_FORM; then exp(x_v - max) weighs x_theta(v) times that mass)
        if STEP_FORM:
            plain_scales = tl.where(plain_sums > 0, tl.exp(shifts.to(tl.float64) - m.to(tl.float64)), 0.0)
            chosen = plain_sums * plain_scales
        else:
            chosen = mass
        if TOP_P:
            # bisect for the largest key whose upper set still holds top_p of the chosen mass
            # (ties at the threshold all stay); `mass` and `chosen` follow the upper set
            lo = _order_key(tl.min(bottom, 0), KEY_SHIFT).to(tl.int64)
            hi = _order_key(m, KEY_SHIFT).to(tl.int64) + 1
            need = top_p * tl.sum(chosen, 0)
            while hi - lo > 1:
                mid = lo + (hi - lo) // 2
                upper_sums = tl.zeros([N_BLOCKS], tl.float64)
                upper_plain = tl.zeros([N_BLOCKS], tl.float64)
                above = tl.full([BLOCK], 2147483647, tl.int32)
                below = tl.full([BLOCK], -2147483648, tl.int32)
                for start in range(0, vocab, BLOCK):
                    offs = start + cols
                    ok = (offs < vocab) & (offs != mask_id)
                    x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
                    key = _order_key(x, KEY_SHIFT)
                    upper = key >= mid
                    here = blocks == start // BLOCK
                    shift = _pick(shifts, here)
                    e = tl.where(upper, tl.exp((x - shift) * inv_t).to(tl.float64), 0.0)
                    upper_sums = tl.where(here, tl.sum(e, 0), upper_sums)
                    if STEP_FORM:
                        e_plain = tl.where(upper, tl.exp(x - shift).to(tl.float64), 0.0)
                        upper_plain = tl.where(here, tl.sum(e_plain, 0), upper_plain)
                    above = tl.minimum(above, tl.where(ok & upper, key, 2147483647))
                    below = tl.maximum(below, tl.where(ok & ~upper, key, -2147483648))
                upper_mass = upper_sums * scales
                if STEP_FORM:
                    upper_chosen = upper_plain * plain_scales
                else:
                    upper_chosen = upper_mass
                enough = tl.sum(upper_chosen, 0) >= need
                # snap the bracket to keys that occur, so empty key ranges cost no pass
                lo = tl.where(enough, tl.min(above, 0).to(tl.int64), lo)
                hi = tl.where(enough, hi, tl.max(below, 0).to(tl.int64) + 1)
                mass = tl.where(enough, upper_mass, mass)
                chosen = tl.where(enough, upper_chosen, chosen)
        # u * total against the float64 CDF of the posterior weights, first over blocks (the
        # stay weight sits in the mask's block), then inside the one block that crosses it
        if STEP_FORM:
            to_weight = unmask / tl.exp(tl.log(tl.sum(chosen, 0)) * inv_t64)
        else:
            to_weight = unmask / tl.sum(mass, 0)
        block_w = mass * to_weight + tl.where(blocks == mask_id // BLOCK, stay, 0.0)
        cdf = tl.cumsum(block_w, 0)
        target = uniform53(seed, pos, cat_stream) * tl.sum(block_w, 0)
        crossing = tl.min(tl.where(cdf > target, blocks, N_BLOCKS), 0)
        b = tl.minimum(crossing, tl.max(tl.where(block_w > 0, blocks, -1), 0))   # past the end: rounding
        here = blocks == b
        offs = b * BLOCK + cols
        ok = (offs < vocab) & (offs != mask_id)
        x = tl.load(base + offs, mask=ok, other=float("-inf")).to(tl.float32)
        e = tl.exp((x - _pick(shifts, here)) * inv_t).to(tl.float64)
        if TOP_P:
            e = tl.where(_order_key(x, KEY_SHIFT) >= lo, e, 0.0)
        w = tl.where(offs == mask_id, stay, e * (_pick(scales, here) * to_weight))
        cum = tl.cumsum(w, 0) + _pick(cdf, blocks == b - 1)
        found = tl.min(tl.where(cum > target, offs, 2147483647), 0)
        last = tl.max(tl.where(w > 0, offs, -1), 0)
        choice = tl.where(found < 2147483647, found, last).to(tl.int64)
        if REDRAW:
            if choice == mask_id:
                redrawn = uniform53(seed, pos, redraw_stream) < redraw_share
    tl.store(out_z_ptr + row, choice)
    tl.store(out_redraw_ptr + row, redrawn)


_KEY_SHIFT = {torch.float32: 0, torch.bfloat16: 16, torch.float16: 13}
# (block, warps) by top-p, tuned for [16, 1024, 50258] bf16 logits with benchmarks/kernel_sampler.py
# (the sweep is in docs/performance.md)
CUDA_CONFIG = {False: (1024, 2), True: (2048, 8)}


def launch(logits, z, seeds, step_index, weights, mask_id, temperature, top_p, temperature_form):
    """(new tokens, re-drawn flags) of one reverse step; weights [B, 3] float64 on the host."""
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
        REDRAW=redraw, KEY_SHIFT=_KEY_SHIFT[logits.dtype], STEP_FORM=temperature_form == "step" and temperature != 1.0,
        num_warps=warps)
    return new_z, redrawn
