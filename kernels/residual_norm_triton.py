"""Triton kernels of imdm.kernels.residual_norm (imported only when a kernel runs): the DiT's
dropout + gated residual + LayerNorm + adaLN modulation; the forward in one row pass, the
backward in two kernels."""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from imdm import rng
from imdm.kernels.hash32 import stream_keys, uniform24

# The backward is two kernels. The first sums, per row, the two terms LayerNorm's input gradient
# needs (a full-row reduction). The second is then elementwise: each program takes BACKWARD_ROWS
# rows of one sequence and BACKWARD_CHUNK columns (a power of two), with BACKWARD_WARPS warps, and
# keeps the parameter-gradient sums of its rows in registers until it ends. A chunk rather than a
# whole row per program needs fewer registers, so more programs can share an SM (inferred, not
# profiled); they measured faster than a whole row per program (docs/performance.md).
# benchmarks/kernel_residual_norm.py sweeps chunks, warps and rows; 256 columns were the fastest
# at the small model's width, close to the best at the large one's, and divide both widths.
BACKWARD_ROWS = 16
BACKWARD_CHUNK = 256
BACKWARD_WARPS = 2


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
def _row_terms_kernel(dh_ptr, x_out_ptr, mean_ptr, rstd_ptr, w_ptr, scale_ptr, terms_ptr, seq_len, d,
                      BLOCK_D: tl.constexpr):
    """terms[row] = (mean_j dxhat_j xhat_j, mean_j dxhat_j) with dxhat = dh * (1 + scale) * w."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    live = cols < d
    offs = row * d + cols
    seq_offs = (row // seq_len) * d + cols
    xhat = tl.where(live, (tl.load(x_out_ptr + offs, mask=live, other=0.0) - tl.load(mean_ptr + row))
                    * tl.load(rstd_ptr + row), 0.0)
    dxhat = (tl.load(dh_ptr + offs, mask=live, other=0.0).to(tl.float32)
             * (1.0 + tl.load(scale_ptr + seq_offs, mask=live, other=0.0).to(tl.float32))
             * tl.load(w_ptr + cols, mask=live, other=0.0).to(tl.float32))
    tl.store(terms_ptr + 2 * row, tl.sum(dxhat * xhat, axis=0) / d)
    tl.store(terms_ptr + 2 * row + 1, tl.sum(dxhat, axis=0) / d)


@triton.jit
def _backward_kernel(dh_ptr, dx_out_ptr, x_out_ptr, mean_ptr, rstd_ptr, terms_ptr, w_ptr, scale_ptr, y_ptr,
                     gate_ptr, seed_ptr, dx_ptr, dy_ptr, part_ptr, seq_len, d, p, inv_keep, tiles_per_seq,
                     HAS_DX_OUT: tl.constexpr, RESIDUAL: tl.constexpr, DROPOUT: tl.constexpr,
                     STREAM: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr):
    """ROWS rows of one sequence, columns [CHUNK * program_id(1), + CHUNK); the parameter-gradient
    sums of those rows go to part[program_id(0)] = (d_w, d_shift, d_scale, d_gate) [4, d]."""
    p, inv_keep, _ = _as_float32(p, inv_keep, 0.0)
    pid = tl.program_id(0)
    seq = pid // tiles_per_seq
    first = (pid % tiles_per_seq) * ROWS
    cols = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    col_live = cols < d
    seq_offs = seq.to(tl.int64) * d + cols
    w = tl.load(w_ptr + cols, mask=col_live, other=0.0).to(tl.float32)
    one_plus_scale = 1.0 + tl.load(scale_ptr + seq_offs, mask=col_live, other=0.0).to(tl.float32)
    gate = tl.zeros((CHUNK,), tl.float32)
    if RESIDUAL:
        gate = tl.load(gate_ptr + seq_offs, mask=col_live, other=0.0).to(tl.float32)
    sum_dh = tl.zeros((CHUNK,), tl.float32)
    sum_dh_xhat = tl.zeros((CHUNK,), tl.float32)   # d_w = (1 + scale) * this, d_scale = w * this
    d_gate = tl.zeros((CHUNK,), tl.float32)
    for r in range(0, ROWS):
        pos = first + r
        live = cols < tl.where(pos < seq_len, d, 0)   # no column of a row past the sequence
        row = seq.to(tl.int64) * seq_len + tl.minimum(pos, seq_len - 1)   # rows past the sequence: unused
        rstd = tl.load(rstd_ptr + row)
        offs = row * d + cols
        xhat = tl.where(live, (tl.load(x_out_ptr + offs, mask=live, other=0.0) - tl.load(mean_ptr + row)) * rstd,
                        0.0)
        dh = tl.load(dh_ptr + offs, mask=live, other=0.0).to(tl.float32)
        sum_dh += dh
        sum_dh_xhat += dh * xhat
        dx = (dh * one_plus_scale * w - xhat * tl.load(terms_ptr + 2 * row) - tl.load(terms_ptr + 2 * row + 1)) * rstd
        if HAS_DX_OUT:
            dx += tl.load(dx_out_ptr + offs, mask=live, other=0.0)
        tl.store(dx_ptr + offs, dx, mask=live)
        if RESIDUAL:
            # the seed's keys are derived per row: deriving them once before the loop measured
            # slower (docs/performance.md)
            keep = _keep_scale(seed_ptr, offs, p, inv_keep, DROPOUT, STREAM)
            d_gate += dx * keep * tl.load(y_ptr + offs, mask=live, other=0.0).to(tl.float32)
            tl.store(dy_ptr + offs, (dx * gate * keep).to(dy_ptr.dtype.element_ty), mask=live)
    part = part_ptr + pid.to(tl.int64) * 4 * d + cols
    tl.store(part, one_plus_scale * sum_dh_xhat, mask=col_live)
    tl.store(part + d, sum_dh, mask=col_live)
    tl.store(part + 2 * d, w * sum_dh_xhat, mask=col_live)
    tl.store(part + 3 * d, d_gate, mask=col_live)


def _num_warps(block_d: int) -> int:
    return max(1, min(16, block_d // 256))


def _branch_and_dropout(y, seed, p) -> tuple[bool, bool]:
    """(a residual branch comes in, it is dropped out): the kernels' RESIDUAL and DROPOUT."""
    return y is not None, y is not None and seed is not None and p > 0


def launch_forward(x, y, gate, seed, p, weight, shift, scale, eps, h_dtype):
    """(x_out, h, mean, rstd); x_out is empty without a branch `y`."""
    d = x.shape[-1]
    rows, batch = x.numel() // d, shift.shape[0]
    residual, dropout = _branch_and_dropout(y, seed, p)
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
    if BACKWARD_CHUNK <= 0 or BACKWARD_CHUNK & (BACKWARD_CHUNK - 1):
        raise ValueError(f"BACKWARD_CHUNK ({BACKWARD_CHUNK}) must be a power of two")
    d = x_out.shape[-1]
    rows, batch = x_out.numel() // d, scale.shape[0]
    seq_len = rows // batch
    residual, dropout = _branch_and_dropout(y, seed, p)
    block_d = triton.next_power_of_2(d)
    terms = torch.empty(rows, 2, dtype=torch.float32, device=x_out.device)
    wrap_triton(_row_terms_kernel)[(rows,)](dh, x_out, mean, rstd, weight, scale, terms, seq_len, d, BLOCK_D=block_d,
                                            num_warps=_num_warps(block_d))
    tiles = triton.cdiv(seq_len, BACKWARD_ROWS)
    part = torch.empty(batch, tiles, 4, d, dtype=torch.float32, device=x_out.device)
    dx = torch.empty(x_out.shape, dtype=torch.float32, device=x_out.device)
    dy = torch.empty_like(y) if residual else dx.new_empty(0)
    wrap_triton(_backward_kernel)[(batch * tiles, triton.cdiv(d, BACKWARD_CHUNK))](
        dh, dx_out if dx_out is not None else dx, x_out, mean, rstd, terms, weight, scale, y if residual else dh,
        gate if residual else scale, seed if dropout else mean, dx, dy if residual else dx, part, seq_len, d, p,
        1.0 / (1.0 - p), tiles, HAS_DX_OUT=dx_out is not None, RESIDUAL=residual, DROPOUT=dropout,
        STREAM=rng.STREAM_RESIDUAL_DROPOUT, ROWS=BACKWARD_ROWS, CHUNK=BACKWARD_CHUNK, num_warps=BACKWARD_WARPS)
    d_gate = part[:, :, 3].sum(1) if residual else dx.new_empty(0)
    return dx, dy, part[:, :, 0].sum((0, 1)), part[:, :, 1].sum(1), part[:, :, 2].sum(1), d_gate
