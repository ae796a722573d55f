"""The Triton row kernel of the fused masked loss (see imdm.kernels.masked_loss): one program
per row of a logits chunk takes a float32 online logsumexp over the kept columns (not the mask,
not the padding >= vocab_size), writes the row's weighted NLL, and overwrites the row in place
with the weighted gradient of that loss w.r.t. the logits (0 on the dropped columns). The eager
reference is `nll_rows_eager` in masked_loss.py."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096
NUM_WARPS = 4   # tuned with benchmarks/kernel_masked_loss.py (docs/performance.md)


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


def nll_rows(logits: torch.Tensor, targets: torch.Tensor, row_weight: torch.Tensor, mask_id: int,
             vocab_size: int, with_grad: bool) -> torch.Tensor:
    """Triton version of masked_loss.nll_rows_eager."""
    n, n_cols = logits.shape
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    if n:
        _nll_rows_kernel[(n,)](logits, logits.stride(0), targets, row_weight, loss, mask_id, vocab_size, n_cols,
                               WITH_GRAD=with_grad, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return loss

