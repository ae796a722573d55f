"""Fault handling: SIGTERM asks for a clean stop (checkpoint, then exit), non-finite losses
follow the recipe's policy, and IMDM_FAIL_AT_STEP injects a crash for restart tests."""

from __future__ import annotations

import os
import signal


class StopRequest:
    """Set by SIGTERM (or SIGINT) so the loop can save and exit between steps."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None   # the signal that asked (the exit status is 128 + it)
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.signum = signum

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class NonFiniteLoss(RuntimeError):
    pass


class NonFinitePolicy:
    """'skip': skip the optimizer step and count; 'stop': the same, but K in a row end the run."""

    def __init__(self, mode: str, max_in_a_row: int):
        self.mode, self.max_in_a_row = mode, max_in_a_row
        self.total, self.in_a_row = 0, 0

    def observe(self, finite: bool, step: int) -> bool:
        """Whether to apply this step's update."""
        if finite:
            self.in_a_row = 0
            return True
        self.total += 1
        self.in_a_row += 1
        if self.mode == "stop" and self.in_a_row >= self.max_in_a_row:
            raise NonFiniteLoss(f"step {step}: {self.in_a_row} non-finite losses in a row (train.max_nonfinite = "
                                f"{self.max_in_a_row}); the last complete checkpoint is intact")
        return False


def maybe_inject_failure(step: int, rank: int) -> None:
    """IMDM_FAIL_AT_STEP=STEP[:RANK] kills this process at STEP on the first attempt only
    (torchrun's TORCHELASTIC_RESTART_COUNT = 0), to test restart-and-resume."""
    spec = os.environ.get("IMDM_FAIL_AT_STEP")
    if not spec or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    at, _, who = spec.partition(":")
    if step == int(at) and (not who or int(who) == rank):
        os._exit(17)
