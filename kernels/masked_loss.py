"""Fused masked loss: the output head's matmul and the SUBS cross-entropy with its backward,
chunked over rows.

Fuses:    logits = h W^T + b -> float32 log-softmax over the real tokens (the mask column and the
          padding columns >= vocab_size dropped) -> per-row weighted NLL -> sum, and the
          gradients w.r.t. h, W and b.
Replaces: the gathered head matmul + log-softmax cross-entropy (OutputHead with `select`, then
          imdm.diffusion.nelbo.masked_token_nll), which materialises [N, V] logits for the N
          masked rows, a float32 copy of them and their gradient. Training uses it through
          OutputHead.
Measured: docs/performance.md (benchmarks/kernel_masked_loss.py).

Per chunk of rows: cuBLAS computes the chunk's logits in the input dtype; a row kernel takes a
float32 online logsumexp, writes the row's weighted loss and overwrites the logits in place with
their weighted gradient; two matmuls and a column sum turn that into the chunk's share of grad h,
grad W (added into a float32 accumulator: on CUDA by the GEMM itself, as GemmGradLinear's weight
gradients are; elsewhere after an upcast) and grad b. Gradients are thus computed in the forward (Liger-Kernel's
scheme) and the backward only scales them by the incoming gradient; no logits outlive a chunk.
The row kernel: Triton (masked_loss_triton.py; on CPU through TRITON_INTERPRET=1) or the eager
PyTorch reference below (nll_rows_eager). backend "auto" = Triton on CUDA tensors, eager otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imdm.kernels.backend import use_triton as wants_triton   # `use_triton` is an op argument here
from imdm.kernels.weight_grad import accumulate_weight_grad

CHUNK_BYTES = 1 << 30   # the logits buffer of one chunk: 8192 rows of bf16 GPT-2 logits


def _kept_columns(n_cols: int, mask_id: int, vocab_size: int, device) -> Tensor:
    cols = torch.arange(n_cols, device=device)
    return (cols < vocab_size) & (cols != mask_id)


def nll_rows_eager(logits: Tensor, targets: Tensor, row_weight: Tensor, mask_id: int, vocab_size: int,
                   with_grad: bool) -> Tensor:
    """Per row, row_weight * -log softmax_SUBS(logits)[target] in float32 (the mask column and
    columns >= vocab_size dropped); with `with_grad`, the logits [n, Vp] are overwritten by
    row_weight * (softmax - onehot(target)), 0 on the dropped columns."""
    x = logits.float().masked_fill(~_kept_columns(logits.shape[1], mask_id, vocab_size, logits.device), -torch.inf)
    lse = torch.logsumexp(x, dim=1)
    loss = row_weight * (lse - x.gather(1, targets[:, None]).squeeze(1))
    if with_grad:
        grad = torch.exp(x - lse[:, None])
        grad.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
        logits.copy_(grad * row_weight[:, None])
    return loss


def _chunk_rows(n: int, n_cols: int, dtype: torch.dtype) -> int:
    """Rows per chunk: balanced chunks whose logits buffer fits CHUNK_BYTES."""
    most = max(1, CHUNK_BYTES // (n_cols * dtype.itemsize))
    chunks = max(1, -(-n // most))
    return max(1, -(-n // chunks))


def _chunked_head_loss(h: Tensor, weight: Tensor, bias: Tensor, with_grad: bool, row_loss):
    """(loss sum, grad h, grad W, grad b) of sum over rows of row_loss(logits chunk, rows), where
    row_loss returns the chunk's float32 row losses and, with `with_grad`, leaves the gradient
    w.r.t. the logits in the chunk. Gradients are empty without `with_grad`."""
    n, dtype = h.shape[0], h.dtype
    w, b = weight.to(dtype), bias.to(dtype)
    rows = _chunk_rows(n, w.shape[0], dtype)
    buffer = h.new_empty(min(rows, n), w.shape[0])
    losses = torch.empty(n, dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if with_grad else h.new_empty(0)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if with_grad else weight.new_empty(0)
    grad_b = torch.zeros(b.shape, dtype=torch.float32, device=h.device) if with_grad else bias.new_empty(0)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        h_c, logits = h[start:end], buffer[: end - start]
        torch.addmm(b, h_c, w.t(), out=logits)
        losses[start:end] = row_loss(logits, slice(start, end))
        if with_grad:
            torch.mm(logits, w, out=grad_h[start:end])
            accumulate_weight_grad(grad_w, logits, h_c)   # float32 accumulation inside the GEMM on CUDA
            grad_b.add_(logits.sum(0, dtype=torch.float32))
    return losses.sum(), grad_h, grad_w.to(weight.dtype), grad_b.to(bias.dtype)


@torch.library.custom_op("imdm::masked_nll", mutates_args=())
def _masked_nll_op(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, row_weight: Tensor, mask_id: int,
                   vocab_size: int, use_triton: bool, with_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if use_triton:
        from imdm.kernels.masked_loss_triton import nll_rows
    else:
        nll_rows = nll_rows_eager
    row_weight = row_weight.float().contiguous()
    targets = targets.contiguous()

    def row_loss(logits, rows):
        return nll_rows(logits, targets[rows], row_weight[rows], mask_id, vocab_size, with_grad)

    with torch.autocast(h.device.type, enabled=False):
        return _chunked_head_loss(h, weight, bias, with_grad, row_loss)


def _fake_outputs(h: Tensor, weight: Tensor, bias: Tensor, with_grad: bool):
    loss = h.new_empty((), dtype=torch.float32)
    if not with_grad:
        return loss, h.new_empty(0), weight.new_empty(0), bias.new_empty(0)
    return loss, torch.empty_like(h), torch.empty_like(weight), torch.empty_like(bias)


@_masked_nll_op.register_fake
def _(h, weight, bias, targets, row_weight, mask_id, vocab_size, use_triton, with_grad):
    return _fake_outputs(h, weight, bias, with_grad)


def _save_grads(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.undifferentiated = len(inputs) - 3      # every input after (h, W, b)


def _backward(ctx, grad_loss, *_):
    """The gradients computed in the forward, scaled by the incoming one."""
    return (*(grad_loss * g for g in ctx.saved_tensors), *(None,) * ctx.undifferentiated)


_masked_nll_op.register_autograd(_backward, setup_context=_save_grads)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def fused_masked_nll(h: Tensor, weight: Tensor, bias: Tensor, targets: Tensor, row_weight: Tensor, mask_id: int,
                     vocab_size: int, backend: str = "auto") -> Tensor:
    """sum_i row_weight[i] * -log softmax_SUBS(h_i W^T + b)[targets[i]], a 0-dim float32 tensor,
    differentiable w.r.t. h [N, d], weight [Vp, d] and bias [Vp]. SUBS drops the mask column and
    the padding columns >= vocab_size from the normalisation. The matmuls run in h's dtype, the
    softmax in float32. targets [N] int64 must be real tokens; row_weight [N] is not differentiated."""
    return _masked_nll_op(h, weight, bias, targets, row_weight, mask_id, vocab_size, wants_triton(backend, h),
                          _needs_grad(h, weight, bias))[0]

