"""Triton kernels of imdm.kernels.bias_gelu (imported only when a kernel runs): tanh-GELU of a
biased input, forward and backward, over tiles of TILE_ROWS rows x TILE_COLS columns."""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

TILE_ROWS = 64
TILE_COLS = 128
WARPS = 4
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
CUBIC = tl.constexpr(0.044715)


@triton.jit
def _tile(u_ptr, b_ptr, n_rows, n_cols, ROWS: tl.constexpr, COLS: tl.constexpr):
    """This program's tile: (offsets, mask, z = u + b in float32)."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
    live = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None] * n_cols + cols[None, :]
    u = tl.load(u_ptr + offs, mask=live, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    return offs, live, u + b[None, :]


@triton.jit
def _tanh_inner(z):
    """tanh(sqrt(2 / pi) * (z + 0.044715 z^3)), through the logistic function."""
    inner = SQRT_2_OVER_PI * (z + CUBIC * z * z * z)
    return 2.0 * tl.sigmoid(2.0 * inner) - 1.0


@triton.jit
def _forward_kernel(u_ptr, b_ptr, y_ptr, n_rows, n_cols, ROWS: tl.constexpr, COLS: tl.constexpr):
    offs, live, z = _tile(u_ptr, b_ptr, n_rows, n_cols, ROWS, COLS)
    y = 0.5 * z * (1.0 + _tanh_inner(z))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=live)


@triton.jit
def _backward_kernel(dy_ptr, u_ptr, b_ptr, du_ptr, db_part_ptr, n_rows, n_cols, ROWS: tl.constexpr,
                     COLS: tl.constexpr):
    offs, live, z = _tile(u_ptr, b_ptr, n_rows, n_cols, ROWS, COLS)
    t = _tanh_inner(z)
    slope = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * CUBIC * z * z)
    du = tl.load(dy_ptr + offs, mask=live, other=0.0).to(tl.float32) * slope
    tl.store(du_ptr + offs, du.to(du_ptr.dtype.element_ty), mask=live)
    cols = tl.program_id(1) * COLS + tl.arange(0, COLS)
    tl.store(db_part_ptr + tl.program_id(0).to(tl.int64) * n_cols + cols, tl.sum(du, axis=0), mask=cols < n_cols)


def _grid(u: torch.Tensor) -> tuple[int, int, int]:
    n_cols = u.shape[-1]
    n_rows = u.numel() // n_cols
    return n_rows, n_cols, triton.cdiv(n_rows, TILE_ROWS)


def launch_forward(u: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n_rows, n_cols, row_tiles = _grid(u)
    y = torch.empty_like(u)
    wrap_triton(_forward_kernel)[(row_tiles, triton.cdiv(n_cols, TILE_COLS))](
        u, b, y, n_rows, n_cols, ROWS=TILE_ROWS, COLS=TILE_COLS, num_warps=WARPS)
    return y


def launch_backward(dy: torch.Tensor, u: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(du in u's dtype, db in float32)."""
    n_rows, n_cols, row_tiles = _grid(u)
    du = torch.empty_like(u)
    db_part = torch.empty(row_tiles, n_cols, dtype=torch.float32, device=u.device)
    wrap_triton(_backward_kernel)[(row_tiles, triton.cdiv(n_cols, TILE_COLS))](
        dy, u, b, du, db_part, n_rows, n_cols, ROWS=TILE_ROWS, COLS=TILE_COLS, num_warps=WARPS)
    return du, db_part.sum(0)
