"""Which implementation a kernel call runs: "auto" = the Triton kernel on CUDA tensors and the
eager PyTorch reference elsewhere, "triton" forces the kernel (on CPU tensors through the
interpreter, TRITON_INTERPRET=1), "eager" forces the reference."""

from __future__ import annotations

import torch

BACKENDS = ("auto", "triton", "eager")


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """Whether `backend` means the Triton kernel for inputs living where `tensor` lives."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    return backend == "triton" or (backend == "auto" and tensor.is_cuda)
