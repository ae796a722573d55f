"""Device choice and host-to-device copies (no process groups: every layer may use these)."""

from __future__ import annotations

import torch


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' takes the GPU when there is one; 'cuda' without one is an error."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device = 'cuda' but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without synchronising the stream (pinned, non-blocking on GPU)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
