"""Triton kernels of imdm.kernels.rotary_qkv (imported only when a kernel runs): one program per
position of one sequence, over every head; q and k as their two rotate-half halves."""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

WARPS = 4


@triton.jit
def _tile(n_heads, half, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Head and in-half column indices of a [BLOCK_H, BLOCK_HALF] tile, and its mask."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    return heads, cols, (heads < n_heads) & (cols < half)


@triton.jit
def _rotate(x_ptr, out_ptr, src, dst, live, c1, c2, s1, s2, half, SIGN: tl.constexpr):
    """out = x rotated by the angle whose cos, sin halves are given (SIGN -1: by its negative,
    the backward); x's two halves at src and src + half, out's at dst and dst + half."""
    x1 = tl.load(x_ptr + src, mask=live).to(tl.float32)
    x2 = tl.load(x_ptr + src + half, mask=live).to(tl.float32)
    if SIGN > 0:
        o1, o2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    else:
        o1, o2 = x1 * c1 + x2 * s2, x2 * c2 - x1 * s1
    tl.store(out_ptr + dst, o1.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(out_ptr + dst + half, o2.to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _copy(x_ptr, out_ptr, src, dst, live, half):
    tl.store(out_ptr + dst, tl.load(x_ptr + src, mask=live).to(out_ptr.dtype.element_ty), mask=live)
    tl.store(out_ptr + dst + half, tl.load(x_ptr + src + half, mask=live).to(out_ptr.dtype.element_ty), mask=live)


@triton.jit
def _tables(cos_ptr, sin_ptr, l, half, cols):
    """The position's cos and sin, each as its two halves."""
    at, live = l * 2 * half + cols, cols < half
    return (tl.load(cos_ptr + at, mask=live), tl.load(cos_ptr + at + half, mask=live),
            tl.load(sin_ptr + at, mask=live), tl.load(sin_ptr + at + half, mask=live))


@triton.jit
def _forward_kernel(qkv_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, seq_len, n_heads, half,
                    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b, l = row // seq_len, row % seq_len
    hd = 2 * half
    d = n_heads * hd
    heads, cols, live = _tile(n_heads, half, BLOCK_H, BLOCK_HALF)
    c1, c2, s1, s2 = _tables(cos_ptr, sin_ptr, l, half, cols)
    src = row * 3 * d + heads * hd + cols
    dst = ((b * n_heads + heads) * seq_len + l) * hd + cols
    _rotate(qkv_ptr, q_ptr, src, dst, live, c1, c2, s1, s2, half, 1)
    _rotate(qkv_ptr, k_ptr, src + d, dst, live, c1, c2, s1, s2, half, 1)
    _copy(qkv_ptr, v_ptr, src + 2 * d, dst, live, half)


@triton.jit
def _backward_kernel(dq_ptr, dk_ptr, dv_ptr, cos_ptr, sin_ptr, dqkv_ptr, seq_len, n_heads, half,
                     q_sb, q_sh, q_sl, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, BLOCK_H: tl.constexpr,
                     BLOCK_HALF: tl.constexpr):
    """dq, dk, dv [B, H, L, hd] with any strides over B, H, L (unit stride over hd)."""
    row = tl.program_id(0).to(tl.int64)
    b, l = row // seq_len, row % seq_len
    hd = 2 * half
    d = n_heads * hd
    heads, cols, live = _tile(n_heads, half, BLOCK_H, BLOCK_HALF)
    c1, c2, s1, s2 = _tables(cos_ptr, sin_ptr, l, half, cols)
    dst = row * 3 * d + heads * hd + cols
    _rotate(dq_ptr, dqkv_ptr, b * q_sb + heads * q_sh + l * q_sl + cols, dst, live, c1, c2, s1, s2, half, -1)
    _rotate(dk_ptr, dqkv_ptr, b * k_sb + heads * k_sh + l * k_sl + cols, dst + d, live, c1, c2, s1, s2, half, -1)
    _copy(dv_ptr, dqkv_ptr, b * v_sb + heads * v_sh + l * v_sl + cols, dst + 2 * d, live, half)


def _blocks(n_heads: int, half: int) -> dict:
    return dict(BLOCK_H=triton.next_power_of_2(n_heads), BLOCK_HALF=triton.next_power_of_2(half))


def launch_forward(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_heads: int):
    b, l, three_d = qkv.shape
    hd = three_d // (3 * n_heads)
    q, k, v = (qkv.new_empty(b, n_heads, l, hd) for _ in range(3))
    wrap_triton(_forward_kernel)[(b * l,)](qkv, cos, sin, q, k, v, l, n_heads, hd // 2, **_blocks(n_heads, hd // 2),
                                           num_warps=WARPS)
    return q, k, v


def launch_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    b, n_heads, l, hd = dq.shape
    dq, dk, dv = (g if g.stride(-1) == 1 else g.contiguous() for g in (dq, dk, dv))
    dqkv = dq.new_empty(b, l, 3 * n_heads * hd)
    wrap_triton(_backward_kernel)[(b * l,)](dq, dk, dv, cos, sin, dqkv, l, n_heads, hd // 2,
                                            *dq.stride()[:3], *dk.stride()[:3], *dv.stride()[:3],
                                            **_blocks(n_heads, hd // 2), num_warps=WARPS)
    return dqkv
