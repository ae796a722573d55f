"""Triton kernels of imdm.kernels.masking (imported only when a kernel runs, so the package
works without Triton): the mask-state noise from the counter-based hash."""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from imdm import rng
from imdm.kernels.hash32 import stream_keys, uniform24


@triton.jit
def _bf16_round_to_nearest_even(x):
    """float32 -> bfloat16 as torch casts it (the interpreter's own cast truncates)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _noise_kernel(out_ptr, seed_ptr, pos_ptr, gen_ptr, keep_ptr, n_rows, seq_len, dim, generation,
                  ALL_POSITIONS: tl.constexpr, HAS_GEN: tl.constexpr, HAS_KEEP: tl.constexpr,
                  NORMAL: tl.constexpr, INTERPRETED: tl.constexpr, STREAM: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = rows < n_rows
    if ALL_POSITIONS:
        seed = tl.load(seed_ptr + rows // seq_len, mask=live, other=0)
        pos = (rows % seq_len).to(tl.int64)
    else:
        seed = tl.load(seed_ptr + rows, mask=live, other=0)
        pos = tl.load(pos_ptr + rows, mask=live, other=0)
    if HAS_GEN:
        stream = STREAM + 2 * tl.load(gen_ptr + rows, mask=live, other=0)
    else:
        stream = tl.full([BLOCK_M], STREAM, tl.int64) + 2 * generation
    k1, k2 = stream_keys(seed, stream)
    k1, k2 = k1[:, None], k2[:, None]
    if NORMAL:
        j1, j2 = stream_keys(seed, stream + 1)
        j1, j2 = j1[:, None], j2[:, None]
    base = (pos * dim).to(tl.uint32)[:, None]
    if HAS_KEEP:
        keep = tl.load(keep_ptr + rows, mask=live, other=0).to(tl.int1)[:, None]
    out_rows = out_ptr + rows.to(tl.int64)[:, None] * dim
    for d0 in range(0, dim, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)[None, :]
        counter = base + cols.to(tl.uint32)
        u1 = uniform24(counter, k1, k2)
        if NORMAL:
            u2 = uniform24(counter, j1, j2)
            if INTERPRETED:     # numpy's log/cos (the interpreter has no libdevice)
                eps = tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
            else:               # libdevice's precise ones, not tl.log/tl.cos's approximate PTX
                eps = tl.sqrt_rn(-2.0 * libdevice.log(u1)) * libdevice.cos(6.283185307179586 * u2)
        else:
            eps = 2.0 * u1 - 1.0
        if HAS_KEEP:
            eps = tl.where(keep, eps, 0.0)
        if INTERPRETED and out_ptr.dtype.element_ty == tl.bfloat16:
            eps = _bf16_round_to_nearest_even(eps)
        tl.store(out_rows + cols, eps.to(out_ptr.dtype.element_ty), mask=live[:, None] & (cols < dim))


def _noise_blocks(dim: int, on_gpu: bool) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_D): 1k elements per step on GPU (larger tiles measured slower for
    Box-Muller, docs/performance.md), 64k under the interpreter."""
    block_d = min(triton.next_power_of_2(dim), 512)
    per_step = 1024 if on_gpu else 1 << 16
    return max(1, per_step // block_d), block_d


def launch_noise(seeds, positions, seq_len, dim, dist, generation, generation_scalar, keep, out_dtype, n_rows):
    """eps [n_rows, dim] at rows (seeds[r], positions[r]), or at every position of [B, seq_len]
    when positions is None."""
    out = torch.empty((n_rows, dim), dtype=out_dtype, device=seeds.device)
    if n_rows == 0 or dim == 0:
        return out
    block_m, block_d = _noise_blocks(dim, seeds.is_cuda)
    _noise_kernel[(triton.cdiv(n_rows, block_m),)](
        out, seeds, positions if positions is not None else seeds,
        generation if generation is not None else seeds, keep if keep is not None else seeds,
        n_rows, seq_len, dim, generation_scalar,
        ALL_POSITIONS=positions is None, HAS_GEN=generation is not None, HAS_KEEP=keep is not None,
        NORMAL=dist == "normal", INTERPRETED=not seeds.is_cuda, STREAM=rng.STREAM_EPS,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4)
    return out
