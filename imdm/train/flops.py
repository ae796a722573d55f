"""Model FLOPs per token and utilisation (MFU): 6 N + 12 * layers * d * L per token, N the
matmul weights (the head's real rows included), against the device's dense bf16 peak."""

from __future__ import annotations

import torch
from torch import nn

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def matmul_parameters(model: nn.Module) -> int:
    """Weights of every nn.Linear (the output head counted at its real vocabulary size)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            rows = module.weight.shape[0]
            if name.endswith("head.linear"):
                rows = min(rows, model.cfg.vocab_size)
            total += rows * module.weight.shape[1]
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    cfg = model.cfg
    return 6 * matmul_parameters(model) + 12 * cfg.n_blocks * cfg.d_model * seq_len


def device_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the device (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
