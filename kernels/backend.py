"""Which implementation a kernel call runs: "auto" = the Triton kernel on CUDA tensors and the
eager PyTorch reference elsewhere, "triton" forces the kernel (on CPU tensors through the
interpreter, TRITON_INTERPRET=1), "eager" forces the reference."""

from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("auto", "triton", "eager")
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def kernel_chosen(backend: str, tensor: torch.Tensor) -> bool:
    """Whether `backend` means the fused path (rather than the eager reference) for inputs living
    where `tensor` lives."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")
    return backend == "triton" or (backend == "auto" and tensor.is_cuda)


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """Whether `backend` means the Triton kernel for inputs living where `tensor` lives. Without
    Triton installed (e.g. macOS) everything runs on the CPU references; asking for a kernel
    then fails with a message instead."""
    chosen = kernel_chosen(backend, tensor)
    if chosen and not TRITON_INSTALLED:
        raise RuntimeError(f"kernel backend {backend!r} on {tensor.device.type} tensors needs Triton, which is not "
                           "installed (pip install triton; Linux), or use the eager references (backend 'eager')")
    return chosen
