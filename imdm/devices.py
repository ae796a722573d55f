"""Device choice and host-to-device copies (no process groups: every layer may use these)."""

from __future__ import annotations

import torch

from imdm.recipe.errors import RecipeError


def pick_device(preference: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """'auto' takes the GPU when there is one; 'cuda' without one is an error naming `key`."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RecipeError(key, ["'cuda' but no CUDA device is visible (use cpu or auto)"])
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without synchronising the stream (pinned, non-blocking on GPU)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
