"""A step's device scalars (gradient norm, the ranks' agreed stop flag) read on the host one
step late: the copy to pinned memory is queued behind the step's work and read after the next
step's forward and backward are queued, so the loop never drains the GPU's queue to decide
what to do."""

from __future__ import annotations

import torch


class StepReport:
    """Holds at most one unread report."""

    def __init__(self, device: torch.device, size: int):
        self._host = torch.empty(size, dtype=torch.float64, pin_memory=device.type == "cuda")
        self._event = torch.cuda.Event() if device.type == "cuda" else None
        self.step: int | None = None

    def write(self, step: int, values: torch.Tensor) -> None:
        """Queue the copy of `values` (1-D, `size` entries) for `step`; the last report must be read."""
        if self.step is not None:
            raise RuntimeError(f"the report of step {self.step} was never read")
        self._host.copy_(values.detach().to(torch.float64), non_blocking=True)
        if self._event is not None:
            self._event.record()
        self.step = step

    def discard(self) -> None:
        """Forget the unread report (its step's state is being replaced)."""
        self.step = None

    def read(self) -> tuple[int, list[float]] | None:
        """(step, values) of the unread report, waiting only for the work queued before it; None
        when there is none."""
        if self.step is None:
            return None
        if self._event is not None:
            self._event.synchronize()
        step, self.step = self.step, None
        return step, self._host.tolist()
