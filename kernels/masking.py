"""Masking kernels: the forward process and the IMDM mask-state noise, one pass each.

Fuses the counter-based hash (imdm.rng: dozens of element-wise int64 ops emulating uint32
words; here native uint32, each row's keys derived once), the uniform/Box-Muller transform and
the output write. Replaces, with the same numbers:
  forward_mask     mask_positions + apply_mask                 -> (z_t, masked)
  mask_noise_rows  torch.compile(mask_noise_rows) in training  -> eps rows [M, dim]
  mask_noise       the sampler's eager mask_noise              -> eps [B, L, dim]
The eager references are imdm.diffusion.forward_process. Masks and 'uniform' noise are
bit-identical; 'normal' differs only by the log/cos implementations (libdevice on CUDA, numpy
under the Triton interpreter, against torch's): |diff| <= 1e-5 (1 + |eps|). bf16 output is the
kernel's float32 result rounded to nearest even, as torch casts it.
H100, B 32 x L 1024, half masked, dim 2048 (benchmarks/kernel_masking.py): eps rows in float32
take 46 us (~88% of HBM bandwidth) against 183 us for the compiled reference.

Each kernel is a torch.library custom op (imdm::forward_mask, imdm::mask_noise_rows,
imdm::mask_noise) so compiled graphs hold it. `backend`: "auto" runs Triton on CUDA tensors and
the reference elsewhere, "triton" forces the kernel (the interpreter on CPU tensors when
TRITON_INTERPRET=1), "eager" the reference.
"""

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from imdm import rng
from imdm.diffusion import forward_process as reference
from imdm.kernels.backend import use_triton
from imdm.kernels.hash32 import stream_keys, uniform24

DISTS = ("uniform", "normal")


@triton.jit
def _forward_mask_kernel(x0_ptr, seed_ptr, prob_ptr, z_ptr, masked_ptr, seq_len, mask_id,
                         STREAM: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    live = pos < seq_len
    k1, k2 = stream_keys(tl.load(seed_ptr + b), STREAM)
    masked = uniform24(pos.to(tl.uint32), k1, k2) < tl.load(prob_ptr + b)
    offs = b.to(tl.int64) * seq_len + pos
    x0 = tl.load(x0_ptr + offs, mask=live)
    tl.store(z_ptr + offs, tl.where(masked, mask_id, x0).to(x0.dtype), mask=live)
    tl.store(masked_ptr + offs, masked, mask=live)


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


def _noise_blocks(dim: int, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, num_warps): 1k elements per step on GPU (measured on H100 at M 16k x
    dim 2048: larger tiles slow Box-Muller, the same for uniform), 64k under the interpreter."""
    block_d = min(triton.next_power_of_2(dim), 512)
    per_step = 1024 if on_gpu else 1 << 16
    return max(1, per_step // block_d), block_d, 4


def _launch_noise(seeds, positions, seq_len, dim, dist, generation, generation_scalar, keep, out_dtype, n_rows):
    out = torch.empty((n_rows, dim), dtype=out_dtype, device=seeds.device)
    if n_rows == 0 or dim == 0:
        return out
    block_m, block_d, warps = _noise_blocks(dim, seeds.is_cuda)
    _noise_kernel[(triton.cdiv(n_rows, block_m),)](
        out, seeds, positions if positions is not None else seeds,
        generation if generation is not None else seeds, keep if keep is not None else seeds,
        n_rows, seq_len, dim, generation_scalar,
        ALL_POSITIONS=positions is None, HAS_GEN=generation is not None, HAS_KEEP=keep is not None,
        NORMAL=dist == "normal", INTERPRETED=not seeds.is_cuda, STREAM=rng.STREAM_EPS,
        BLOCK_M=block_m, BLOCK_D=block_d, num_warps=warps)
    return out


@torch.library.custom_op("imdm::forward_mask", mutates_args=())
def _forward_mask_op(x0: torch.Tensor, seeds: torch.Tensor, move_prob: torch.Tensor,
                     mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    z, masked = torch.empty_like(x0), torch.empty(x0.shape, dtype=torch.bool, device=x0.device)
    batch, seq_len = x0.shape
    if x0.numel():
        block = min(triton.next_power_of_2(seq_len), 1024)
        _forward_mask_kernel[(batch, triton.cdiv(seq_len, block))](
            x0, seeds, move_prob, z, masked, seq_len, mask_id, STREAM=rng.STREAM_MASK, BLOCK=block)
    return z, masked


@_forward_mask_op.register_fake
def _(x0, seeds, move_prob, mask_id):
    return torch.empty_like(x0), torch.empty_like(x0, dtype=torch.bool)


@torch.library.custom_op("imdm::mask_noise_rows", mutates_args=())
def _noise_rows_op(seeds: torch.Tensor, positions: torch.Tensor, dim: int, dist: str,
                   generation: Optional[torch.Tensor], generation_scalar: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    return _launch_noise(seeds, positions, 1, dim, dist, generation, generation_scalar, None, out_dtype,
                         seeds.shape[0])


@_noise_rows_op.register_fake
def _(seeds, positions, dim, dist, generation, generation_scalar, out_dtype):
    return seeds.new_empty((seeds.shape[0], dim), dtype=out_dtype)


@torch.library.custom_op("imdm::mask_noise", mutates_args=())
def _noise_op(seeds: torch.Tensor, seq_len: int, dim: int, dist: str, generation: Optional[torch.Tensor],
              generation_scalar: int, masked: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    batch = seeds.shape[0]
    out = _launch_noise(seeds, None, seq_len, dim, dist, generation, generation_scalar, masked, out_dtype,
                        batch * seq_len)
    return out.view(batch, seq_len, dim)


@_noise_op.register_fake
def _(seeds, seq_len, dim, dist, generation, generation_scalar, masked, out_dtype):
    return seeds.new_empty((seeds.shape[0], seq_len, dim), dtype=out_dtype)


def _check_dist(dist: str) -> None:
    if dist not in DISTS:
        raise ValueError(f"unknown mask-noise distribution {dist!r}")


def _generation(generation, device) -> tuple[Optional[torch.Tensor], int]:
    """(per-row generations as a flat int64 tensor, or None; the scalar generation)."""
    if isinstance(generation, torch.Tensor):
        return generation.to(device=device, dtype=torch.int64).reshape(-1).contiguous(), 0
    return None, generation


def forward_mask(x0: torch.Tensor, seeds: torch.Tensor, move_prob: torch.Tensor, mask_id: int,
                 backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t [B, L], masked [B, L] bool) of clean tokens x0 [B, L]: position i of sample b is masked
    with probability move_prob[b]; the draws of `mask_positions`, the z_t of `apply_mask`."""
    seeds, move_prob = seeds.to(x0.device, torch.int64), move_prob.to(x0.device, torch.float32)
    if not use_triton(backend, x0):
        masked = reference.mask_positions(seeds, x0.shape[1], move_prob)
        return reference.apply_mask(x0, masked, mask_id), masked
    return torch.ops.imdm.forward_mask(x0.contiguous(), seeds.contiguous(), move_prob.contiguous(), mask_id)


def mask_noise_rows(seeds: torch.Tensor, positions: torch.Tensor, dim: int, dist: str,
                    generation: int | torch.Tensor = 0, out_dtype: torch.dtype = torch.float32,
                    backend: str = "auto") -> torch.Tensor:
    """Base noise [M, dim] of the mask states at (seeds[m], positions[m]), as
    forward_process.mask_noise_rows, in `out_dtype`."""
    _check_dist(dist)
    if not use_triton(backend, seeds):
        return reference.mask_noise_rows(seeds, positions, dim, dist, generation).to(out_dtype)
    gen, gen_scalar = _generation(generation, seeds.device)
    return torch.ops.imdm.mask_noise_rows(seeds.to(torch.int64).contiguous(),
                                          positions.to(seeds.device, torch.int64).contiguous(),
                                          dim, dist, gen, gen_scalar, out_dtype)


def mask_noise(seeds: torch.Tensor, seq_len: int, dim: int, dist: str, generation: int | torch.Tensor = 0,
               masked: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
               backend: str = "auto") -> torch.Tensor:
    """Base noise [B, L, dim] at every position, as forward_process.mask_noise (`generation` a
    scalar or [B, L]); zero where `masked` [B, L] is False when given; in `out_dtype`."""
    _check_dist(dist)
    if not use_triton(backend, seeds):
        noise = reference.mask_noise(seeds, seq_len, dim, dist, generation, backend="eager")
        if masked is not None:
            noise = torch.where(masked.to(noise.device)[..., None], noise, 0.0)
        return noise.to(out_dtype)
    gen, gen_scalar = _generation(generation, seeds.device)
    keep = masked.to(seeds.device, torch.bool).reshape(-1).contiguous() if masked is not None else None
    return torch.ops.imdm.mask_noise(seeds.to(torch.int64).contiguous(), seq_len, dim, dist, gen, gen_scalar,
                                     keep, out_dtype)
