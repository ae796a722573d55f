"""Triton kernels of imdm.kernels.residual_norm (imported only when a kernel runs): the DiT's
dropout + gated residual + LayerNorm + adaLN modulation, forward and backward, one row pass each."""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from imdm import rng
from imdm.kernels.hash32 import stream_keys, uniform24

# The backward: each program takes BACKWARD_ROWS rows of one sequence, BACKWARD_TILE at a time,
# with BACKWARD_WARPS warps (None: one per 256 entries of a tile); the parameter-gradient sums of
# its rows stay in registers until it ends. benchmarks/kernel_residual_norm.py sweeps them: on an
# H200, tiles of 2-4 rows were slower (0.59-0.86 ms forward + backward against 0.47) and 64 rows
# 3% faster than 16 in that benchmark; 16 is what ran end to end and in the GPU tests.
BACKWARD_ROWS = 16
BACKWARD_TILE = 1
BACKWARD_WARPS = None


@triton.jit
def _keep_scale(seed_ptr, offs, p, inv_keep, DROPOUT: tl.constexpr, STREAM: tl.constexpr):
    """Per entry, 1 / (1 - p) where dropout keeps it and 0 where it drops it (1 without dropout):
    entry `offs` (its flat index, modulo 2^32) is dropped when its uniform24 draw is below p."""
    if DROPOUT:
        k1, k2 = stream_keys(tl.load(seed_ptr), STREAM)
        return tl.where(uniform24(offs.to(tl.uint32), k1, k2) >= p, inv_keep, 0.0)
    return tl.full(offs.shape, 1.0, tl.float32)


@triton.jit
def _as_float32(p, inv_keep, eps):
    """The float arguments in float32, as eager launches pass them (Inductor passes float64)."""
    return tl.cast(p, tl.float32), tl.cast(inv_keep, tl.float32), tl.cast(eps, tl.float32)


@triton.jit
def _forward_kernel(x_ptr, y_ptr, gate_ptr, seed_ptr, w_ptr, shift_ptr, scale_ptr, x_out_ptr, h_ptr, mean_ptr,
                    rstd_ptr, seq_len, d, p, inv_keep, eps, RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
                    STREAM: tl.constexpr, BLOCK_D: tl.constexpr):
    p, inv_keep, eps = _as_float32(p, inv_keep, eps)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    live = cols < d
    offs = row * d + cols
    seq_offs = (row // seq_len) * d + cols
    x = tl.load(x_ptr + offs, mask=live, other=0.0).to(tl.float32)
    if RESIDUAL:
        y = tl.load(y_ptr + offs, mask=live, other=0.0).to(tl.float32) * _keep_scale(seed_ptr, offs, p, inv_keep,
                                                                                        DROPOUT, STREAM)
        x = x + tl.load(gate_ptr + seq_offs, mask=live, other=0.0).to(tl.float32) * y
        tl.store(x_out_ptr + offs, x, mask=live)
    mean = tl.sum(x, axis=0) / d
    centred = tl.where(live, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=0) / d + eps)
    n = centred * rstd * tl.load(w_ptr + cols, mask=live, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + seq_offs, mask=live, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + seq_offs, mask=live, other=0.0).to(tl.float32)
    tl.store(h_ptr + offs, (n * (1.0 + scale) + shift).to(h_ptr.dtype.element_ty), mask=live)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _backward_kernel(dh_ptr, dx_out_ptr, x_out_ptr, mean_ptr, rstd_ptr, w_ptr, scale_ptr, y_ptr, gate_ptr, seed_ptr,
                     dx_ptr, dy_ptr, part_ptr, seq_len, d, p, inv_keep, tiles_per_seq,
                     HAS_DX_OUT: tl.constexpr, RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
                     STREAM: tl.constexpr, ROWS: tl.constexpr, TILE: tl.constexpr, BLOCK_D: tl.constexpr):
    """ROWS rows of one sequence, TILE at a time; the parameter-gradient sums of those rows go to
    part[program] = (d_w, d_shift, d_scale, d_gate) [4, d]."""
    p, inv_keep, _ = _as_float32(p, inv_keep, 0.0)
    pid = tl.program_id(0)
    seq = pid // tiles_per_seq
    first = (pid % tiles_per_seq) * ROWS
    cols = tl.arange(0, BLOCK_D)
    col_live = cols < d
    seq_offs = seq.to(tl.int64) * d + cols
    w = tl.load(w_ptr + cols, mask=col_live, other=0.0).to(tl.float32)
    one_plus_scale = 1.0 + tl.load(scale_ptr + seq_offs, mask=col_live, other=0.0).to(tl.float32)
    gate = tl.zeros((BLOCK_D,), tl.float32)
    if RESIDUAL:
        gate = tl.load(gate_ptr + seq_offs, mask=col_live, other=0.0).to(tl.float32)
    sum_dh = tl.zeros((BLOCK_D,), tl.float32)
    sum_dh_xhat = tl.zeros((BLOCK_D,), tl.float32)   # d_w = (1 + scale) * this, d_scale = w * this
    d_gate = tl.zeros((BLOCK_D,), tl.float32)
    for r in range(0, ROWS, TILE):
        pos = first + r + tl.arange(0, TILE)
        live = (pos < seq_len)[:, None] & col_live[None, :]
        stat = seq.to(tl.int64) * seq_len + tl.minimum(pos, seq_len - 1)   # rows past the sequence: unused
        mean = tl.load(mean_ptr + stat)[:, None]
        rstd = tl.load(rstd_ptr + stat)[:, None]
        offs = (seq.to(tl.int64) * seq_len + pos)[:, None] * d + cols[None, :]
        xhat = tl.where(live, (tl.load(x_out_ptr + offs, mask=live, other=0.0) - mean) * rstd, 0.0)
        dh = tl.load(dh_ptr + offs, mask=live, other=0.0).to(tl.float32)
        sum_dh += tl.sum(dh, axis=0)
        sum_dh_xhat += tl.sum(dh * xhat, axis=0)
        dxhat = dh * (one_plus_scale * w)[None, :]
        dx = (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / d)[:, None] - (tl.sum(dxhat, axis=1) / d)[:, None]) * rstd
        if HAS_DX_OUT:
            dx += tl.load(dx_out_ptr + offs, mask=live, other=0.0)
        tl.store(dx_ptr + offs, dx, mask=live)
        if RESIDUAL:
            keep = _keep_scale(seed_ptr, offs, p, inv_keep, DROPOUT, STREAM)
            d_gate += tl.sum(dx * keep * tl.load(y_ptr + offs, mask=live, other=0.0).to(tl.float32), axis=0)
            tl.store(dy_ptr + offs, (dx * gate[None, :] * keep).to(dy_ptr.dtype.element_ty), mask=live)
    part = part_ptr + pid.to(tl.int64) * 4 * d + cols
    tl.store(part, one_plus_scale * sum_dh_xhat, mask=col_live)
    tl.store(part + d, sum_dh, mask=col_live)
    tl.store(part + 2 * d, w * sum_dh_xhat, mask=col_live)
    tl.store(part + 3 * d, d_gate, mask=col_live)


def _num_warps(block_d: int, rows: int = 1) -> int:
    return max(1, min(16, block_d * rows // 256))


def launch_forward(x, y, gate, seed, p, weight, shift, scale, eps, h_dtype):
    """(x_out, h, mean, rstd); x_out is empty without a branch `y`."""
    d = x.shape[-1]
    rows, batch = x.numel() // d, shift.shape[0]
    residual, dropout = y is not None, y is not None and seed is not None and p > 0
    x_out = torch.empty_like(x) if residual else x.new_empty(0)
    h = torch.empty(x.shape, dtype=h_dtype, device=x.device)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    block_d = triton.next_power_of_2(d)
    wrap_triton(_forward_kernel)[(rows,)](
        x, y if residual else x, gate if residual else shift, seed if dropout else mean, weight, shift, scale,
        x_out if residual else x, h, mean, rstd, rows // batch, d, p, 1.0 / (1.0 - p), eps,
        RESIDUAL=residual, DROPOUT=dropout, STREAM=rng.STREAM_RESIDUAL_DROPOUT, BLOCK_D=block_d,
        num_warps=_num_warps(block_d))
    return x_out, h, mean, rstd


def launch_backward(dh, dx_out, x_out, mean, rstd, weight, scale, y, gate, seed, p):
    """(dx, dy, d_weight, d_shift, d_scale, d_gate) in float32 except dy (y's dtype); dy and
    d_gate are empty without a branch `y`."""
    if BACKWARD_ROWS % BACKWARD_TILE:
        raise ValueError(f"BACKWARD_ROWS ({BACKWARD_ROWS}) must be a multiple of BACKWARD_TILE ({BACKWARD_TILE})")
    d = x_out.shape[-1]
    batch = scale.shape[0]
    seq_len = x_out.numel() // d // batch
    residual, dropout = y is not None, y is not None and seed is not None and p > 0
    tiles = triton.cdiv(seq_len, BACKWARD_ROWS)
    part = torch.empty(batch, tiles, 4, d, dtype=torch.float32, device=x_out.device)
    dx = torch.empty(x_out.shape, dtype=torch.float32, device=x_out.device)
    dy = torch.empty_like(y) if residual else dx.new_empty(0)
    block_d = triton.next_power_of_2(d)
    wrap_triton(_backward_kernel)[(batch * tiles,)](
        dh, dx_out if dx_out is not None else dx, x_out, mean, rstd, weight, scale, y if residual else dh,
        gate if residual else scale, seed if dropout else mean, dx, dy if residual else dx, part, seq_len, d, p,
        1.0 / (1.0 - p), tiles, HAS_DX_OUT=dx_out is not None, RESIDUAL=residual, DROPOUT=dropout,
        STREAM=rng.STREAM_RESIDUAL_DROPOUT, ROWS=BACKWARD_ROWS, TILE=BACKWARD_TILE, BLOCK_D=block_d,
        num_warps=BACKWARD_WARPS or _num_warps(block_d, BACKWARD_TILE))
    d_gate = part[:, :, 3].sum(1) if residual else dx.new_empty(0)
    return dx, dy, part[:, :, 0].sum((0, 1)), part[:, :, 1].sum(1), part[:, :, 2].sum(1), d_gate
