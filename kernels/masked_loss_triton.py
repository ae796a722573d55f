"""Triton row kernels of the fused masked loss (see imdm.kernels.masked_loss): one program per
row of a logits chunk takes a float32 online logsumexp over the kept columns (not the mask, not
the padding >= vocab_size), writes the row's weighted loss, and overwrites the row in place with
the weighted gradient of that loss w.r.t. the logits (0 on the dropped columns). Their eager
references are `nll_rows_eager` and `divergence_rows_eager` in masked_loss.py."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096
NUM_WARPS = 4   # measured on an H200 (BLOCK 4096): 4 warps 0.72 ms, 8 warps 0.76 ms for 8192 GPT-2 rows


@triton.jit
def _nll_rows_kernel(logits_ptr, row_stride, targets_ptr, weights_ptr, loss_ptr, mask_id, vocab_size, n_cols,
                     WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    offsets = tl.arange(0, BLOCK)
    m = -1e30   # running max before any kept column: exp(-inf - m) = 0, never NaN
    z = 0.0
    for start in range(0, vocab_size, BLOCK):
        cols = start + offsets
        keep = (cols < vocab_size) & (cols != mask_id)
        x = tl.load(base + cols, mask=keep, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        z = z * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(z)
    target = tl.load(targets_ptr + row)
    w = tl.load(weights_ptr + row)
    tl.store(loss_ptr + row, w * (lse - tl.load(base + target).to(tl.float32)))
    if WITH_GRAD:
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            keep = (cols < vocab_size) & (cols != mask_id)
            x = tl.load(base + cols, mask=keep, other=float("-inf")).to(tl.float32)
            grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(base + cols, (w * grad).to(logits_ptr.dtype.element_ty), mask=cols < n_cols)


@triton.jit
def _divergence_rows_kernel(s_ptr, s_stride, t_ptr, t_stride, weights_ptr, loss_ptr, mask_id, vocab_size, n_cols,
                            FORWARD_KL: tl.constexpr, WITH_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_base = s_ptr + row * s_stride
    t_base = t_ptr + row * t_stride
    offsets = tl.arange(0, BLOCK)
    m_s = -1e30   # running maxima before any kept column: exp(-inf - m) = 0, never NaN
    m_t = -1e30
    z_s = 0.0
    z_t = 0.0
    acc = 0.0   # sum of exp(s - m_s) (s - t) (reverse KL) or exp(t - m_t) (s - t) (forward KL)
    for start in range(0, vocab_size, BLOCK):
        cols = start + offsets
        keep = (cols < vocab_size) & (cols != mask_id)
        s = tl.load(s_base + cols, mask=keep, other=float("-inf")).to(tl.float32)
        t = tl.load(t_base + cols, mask=keep, other=float("-inf")).to(tl.float32)
        ms_new = tl.maximum(m_s, tl.max(s, axis=0))
        mt_new = tl.maximum(m_t, tl.max(t, axis=0))
        rescale_s = tl.exp(m_s - ms_new)
        rescale_t = tl.exp(m_t - mt_new)
        e_s = tl.exp(s - ms_new)
        e_t = tl.exp(t - mt_new)
        diff = tl.where(keep, s, 0.0) - tl.where(keep, t, 0.0)   # no -inf - -inf on dropped columns
        if FORWARD_KL:
            acc = acc * rescale_t + tl.sum(e_t * diff, axis=0)
        else:
            acc = acc * rescale_s + tl.sum(e_s * diff, axis=0)
        z_s = z_s * rescale_s + tl.sum(e_s, axis=0)
        z_t = z_t * rescale_t + tl.sum(e_t, axis=0)
        m_s = ms_new
        m_t = mt_new
    lse_s = m_s + tl.log(z_s)
    lse_t = m_t + tl.log(z_t)
    shift = lse_s - lse_t   # log p_s - log p_t = (s - t) - shift
    if FORWARD_KL:
        div = shift - acc / z_t
    else:
        div = acc / z_s - shift
    w = tl.load(weights_ptr + row)
    tl.store(loss_ptr + row, w * div)
    if WITH_GRAD:
        for start in range(0, n_cols, BLOCK):
            cols = start + offsets
            keep = (cols < vocab_size) & (cols != mask_id)
            s = tl.load(s_base + cols, mask=keep, other=float("-inf")).to(tl.float32)
            t = tl.load(t_base + cols, mask=keep, other=float("-inf")).to(tl.float32)
            p_s = tl.exp(s - lse_s)
            if FORWARD_KL:
                grad = p_s - tl.exp(t - lse_t)
            else:
                grad = p_s * (tl.where(keep, s, 0.0) - tl.where(keep, t, 0.0) - shift - div)
            tl.store(s_base + cols, (w * grad).to(s_ptr.dtype.element_ty), mask=cols < n_cols)


def nll_rows(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor, mask_id: int,
             vocab_size: int, with_grad: bool) -> torch.Tensor:
    """Triton version of masked_loss.nll_rows_eager."""
    n, n_cols = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _nll_rows_kernel[(n,)](logits, logits.stride(0), targets, row_weight, loss, mask_id, vocab_size, n_cols,
                               WITH_GRAD=with_grad, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return loss


def divergence_rows(student: torch.Tensor, teacher: torch.Tensor, row_weight: torch.Tensor, mask_id: int,
                    vocab_size: int, forward_kl: bool, with_grad: bool) -> torch.Tensor:
    """Triton version of masked_loss.divergence_rows_eager."""
    n, n_cols = student.shape
    loss = torch.empty(n, dtype=torch.float32, device=student.device)
    if n:
        _divergence_rows_kernel[(n,)](student, student.stride(0), teacher, teacher.stride(0), row_weight, loss,
                                      mask_id, vocab_size, n_cols, FORWARD_KL=forward_kl, WITH_GRAD=with_grad,
                                      BLOCK=BLOCK, num_warps=NUM_WARPS)
    return loss
