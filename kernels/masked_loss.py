"""Fused masked loss: the output head's matmul and the SUBS cross-entropy (or a distillation
divergence) with its backward, chunked over rows.

Fuses:    logits = h W^T + b -> float32 log-softmax over the real tokens (the mask column and the
          padding columns >= vocab_size dropped) -> per-row weighted NLL or KL -> sum, and the
          gradients w.r.t. h, W and b.
Replaces: the gathered head matmul + log-softmax cross-entropy (OutputHead with `select`, then
          imdm.diffusion.nelbo.masked_token_nll), which materialises [N, V] logits for the N
          masked rows, a float32 copy of them and their gradient.
Measured (benchmarks/kernel_masked_loss.py, one H100, d 768, N = 16384, V 50258, bf16, fwd+bwd):
          fused 8.3 ms / +1.2 GiB; unfused 38.7 ms / +15.4 GiB; torch.compile'd unfused 12.0 ms /
          +4.7 GiB. Reverse KL: fused 13.0 ms / +1.2 GiB; unfused 60.0 ms / +18.5 GiB. One H200,
          with grad W accumulated inside the GEMM: 7.52 ms, against 7.75 before. Training
          uses the NLL (OutputHead); `fused_divergence` is not wired into SDTT yet, which still
          computes the student's logits and imdm.algorithms.divergences.

Per chunk of rows: cuBLAS computes the chunk's logits in the input dtype; a row kernel takes a
float32 online logsumexp, writes the row's weighted loss and overwrites the logits in place with
their weighted gradient; two matmuls and a column sum turn that into the chunk's share of grad h,
grad W (added into a float32 accumulator: on CUDA by the GEMM itself, as GemmGradLinear's weight
gradients are; elsewhere after an upcast) and grad b. Gradients are thus computed in the forward (Liger-Kernel's
scheme) and the backward only scales them by the incoming gradient; no logits outlive a chunk.
Row kernels: Triton (masked_loss_triton.py; on CPU through TRITON_INTERPRET=1) or the eager
PyTorch references below. backend "auto" = Triton on CUDA tensors, eager otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from imdm.kernels.backend import use_triton as wants_triton   # `use_triton` is an op argument here
from imdm.kernels.weight_grad import accumulate_weight_grad

CHUNK_BYTES = 1 << 30   # logits buffers of one chunk: 8192 rows of bf16 GPT-2 logits for the NLL
DIVERGENCES = ("kl_bwd", "kl_fwd")


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


def divergence_rows_eager(student: Tensor, teacher: Tensor, row_weight: Tensor, mask_id: int, vocab_size: int,
                          forward_kl: bool, with_grad: bool) -> Tensor:
    """Per row, row_weight * KL in float32 between the SUBS distributions of two logits chunks:
    reverse KL(p_s || p_t) or, with `forward_kl`, KL(p_t || p_s). With `with_grad`, the student
    logits are overwritten by row_weight * d KL / d student_logits."""
    keep = _kept_columns(student.shape[1], mask_id, vocab_size, student.device)
    log_ps = torch.log_softmax(student.float().masked_fill(~keep, -torch.inf), dim=1)
    log_pt = torch.log_softmax(teacher.float().masked_fill(~keep, -torch.inf), dim=1)
    diff = torch.where(keep, log_ps - log_pt, 0.0)
    p_s, p_t = log_ps.exp(), log_pt.exp()
    if forward_kl:
        div = -(p_t * diff).sum(1)
        grad = p_s - p_t
    else:
        div = (p_s * diff).sum(1)
        grad = p_s * (diff - div[:, None])
    if with_grad:
        student.copy_(grad * row_weight[:, None])
    return row_weight * div


def _chunk_rows(n: int, n_cols: int, dtype: torch.dtype, buffers: int) -> int:
    """Rows per chunk: balanced chunks whose logits buffers fit CHUNK_BYTES."""
    most = max(1, CHUNK_BYTES // (n_cols * dtype.itemsize * buffers))
    chunks = max(1, -(-n // most))
    return max(1, -(-n // chunks))


def _chunked_head_loss(h: Tensor, weight: Tensor, bias: Tensor, with_grad: bool, row_loss, teacher=None):
    """(loss sum, grad h, grad W, grad b) of sum over rows of row_loss(logits chunk, rows), where
    row_loss returns the chunk's float32 row losses and, with `with_grad`, leaves the gradient
    w.r.t. the logits in the chunk. `teacher` = (h_t, W_t, b_t) computes frozen second logits
    per chunk, handed to row_loss as a third argument. Gradients are empty without `with_grad`."""
    n, dtype = h.shape[0], h.dtype
    w, b = weight.to(dtype), bias.to(dtype)
    rows = _chunk_rows(n, w.shape[0], dtype, 1 if teacher is None else 2)
    buffer = h.new_empty(min(rows, n), w.shape[0])
    if teacher is not None:
        h_t, w_t, b_t = teacher
        t_dtype = h_t.dtype
        w_t, b_t = w_t.to(t_dtype), b_t.to(t_dtype)
        t_buffer = h_t.new_empty(min(rows, n), w_t.shape[0])
    losses = torch.empty(n, dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if with_grad else h.new_empty(0)
    grad_w = torch.zeros(w.shape, dtype=torch.float32, device=h.device) if with_grad else weight.new_empty(0)
    grad_b = torch.zeros(b.shape, dtype=torch.float32, device=h.device) if with_grad else bias.new_empty(0)
    for start in range(0, n, rows):
        end = min(n, start + rows)
        h_c, logits = h[start:end], buffer[: end - start]
        torch.addmm(b, h_c, w.t(), out=logits)
        if teacher is None:
            losses[start:end] = row_loss(logits, slice(start, end))
        else:
            t_logits = torch.addmm(b_t, h_t[start:end], w_t.t(), out=t_buffer[: end - start])
            losses[start:end] = row_loss(logits, slice(start, end), t_logits)
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


@torch.library.custom_op("imdm::masked_divergence", mutates_args=())
def _divergence_op(h_student: Tensor, w_student: Tensor, b_student: Tensor, h_teacher: Tensor, w_teacher: Tensor,
                   b_teacher: Tensor, row_weight: Tensor, mask_id: int, vocab_size: int, forward_kl: bool,
                   use_triton: bool, with_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if use_triton:
        from imdm.kernels.masked_loss_triton import divergence_rows
    else:
        divergence_rows = divergence_rows_eager
    row_weight = row_weight.float().contiguous()

    def row_loss(logits, rows, t_logits):
        return divergence_rows(logits, t_logits, row_weight[rows], mask_id, vocab_size, forward_kl, with_grad)

    with torch.autocast(h_student.device.type, enabled=False):
        return _chunked_head_loss(h_student, w_student, b_student, with_grad, row_loss,
                                  (h_teacher, w_teacher, b_teacher))


def _fake_outputs(h: Tensor, weight: Tensor, bias: Tensor, with_grad: bool):
    loss = h.new_empty((), dtype=torch.float32)
    if not with_grad:
        return loss, h.new_empty(0), weight.new_empty(0), bias.new_empty(0)
    return loss, torch.empty_like(h), torch.empty_like(weight), torch.empty_like(bias)


@_masked_nll_op.register_fake
def _(h, weight, bias, targets, row_weight, mask_id, vocab_size, use_triton, with_grad):
    return _fake_outputs(h, weight, bias, with_grad)


@_divergence_op.register_fake
def _(h_student, w_student, b_student, h_teacher, w_teacher, b_teacher, row_weight, mask_id, vocab_size,
      forward_kl, use_triton, with_grad):
    return _fake_outputs(h_student, w_student, b_student, with_grad)


def _save_grads(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*output[1:])
    ctx.undifferentiated = len(inputs) - 3      # every input after (h, W, b)


def _backward(ctx, grad_loss, *_):
    """The gradients computed in the forward, scaled by the incoming one."""
    return (*(grad_loss * g for g in ctx.saved_tensors), *(None,) * ctx.undifferentiated)


_masked_nll_op.register_autograd(_backward, setup_context=_save_grads)
_divergence_op.register_autograd(_backward, setup_context=_save_grads)


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


def fused_divergence(h_student: Tensor, w_student: Tensor, b_student: Tensor, h_teacher: Tensor, w_teacher: Tensor,
                     b_teacher: Tensor, row_weight: Tensor, mask_id: int, vocab_size: int, kind: str = "kl_bwd",
                     backend: str = "auto") -> Tensor:
    """sum_i row_weight[i] * D(p_student_i, p_teacher_i), a 0-dim float32 tensor, with p = SUBS
    softmax of h W^T + b (as in fused_masked_nll) on each side; "kl_bwd" (reverse KL, SDTT's
    default) = sum_v p_s (log p_s - log p_t), "kl_fwd" = sum_v p_t (log p_t - log p_s).
    Differentiable w.r.t. the student's h, W, b only; the teacher is treated as a constant."""
    if kind not in DIVERGENCES:
        raise ValueError(f"kind must be one of {DIVERGENCES}, got {kind!r}")
    return _divergence_op(h_student, w_student, b_student, h_teacher, w_teacher, b_teacher, row_weight, mask_id,
                          vocab_size, kind == "kl_fwd", wants_triton(backend, h_student),
                          _needs_grad(h_student, w_student, b_student))[0]
