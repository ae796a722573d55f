"""Staging a training state for an asynchronous checkpoint: its GPU tensors are copied into
pinned host buffers (allocated at the first save, reused after) on a side CUDA stream, so the
loop only waits to launch the copies, and again only if the copy is still running when the
next optimizer step would change the parameters."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def _is_gpu_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cuda"


def _pinned_like(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, DTensor):
        local = torch.empty_like(t.to_local(), device="cpu").pin_memory()
        return DTensor.from_local(local, t.device_mesh, t.placements, run_check=False, shape=t.shape, stride=t.stride())
    return torch.empty_like(t, device="cpu").pin_memory()


class PinnedStager:
    def __init__(self):
        self.stream = torch.cuda.Stream()
        self.buffers: dict = {}
        self.event: torch.cuda.Event | None = None

    def _copy(self, value, key: str):
        if isinstance(value, dict):
            return {k: self._copy(v, f"{key}/{k}") for k, v in value.items()}
        if not _is_gpu_tensor(value):
            return value.clone() if isinstance(value, torch.Tensor) else value
        if key not in self.buffers:
            self.buffers[key] = _pinned_like(value)
        buffer = self.buffers[key]
        src = value.to_local() if isinstance(value, DTensor) else value
        dst = buffer.to_local() if isinstance(buffer, DTensor) else buffer
        src.record_stream(self.stream)
        dst.copy_(src, non_blocking=True)
        return buffer

    def stage(self, state: dict) -> dict:
        """A host copy of `state` (nested dicts), complete once `synchronize` returns."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            staged = self._copy(state, "")
        self.event = torch.cuda.Event()
        self.event.record(self.stream)
        return staged

    def synchronize(self) -> None:
        if self.event is not None:
            self.event.synchronize()
