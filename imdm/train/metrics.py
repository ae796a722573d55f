"""Training metrics: a JSON line per record in RUN_DIR/metrics.jsonl, a console progress line,
and optionally TensorBoard scalars in RUN_DIR/tb. A non-finite number is written as null: NaN is
not JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path


def json_line(record: dict) -> str:
    """`record` as one line of strict JSON, non-finite floats as null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()},
                      allow_nan=False)


def tensorboard_problems(enabled: bool) -> list[str]:
    """The recipe line for logging.tensorboard = true without the tensorboard package."""
    if enabled and importlib.util.find_spec("tensorboard") is None:
        return ["logging.tensorboard: true needs the tensorboard package (pip install tensorboard)"]
    return []


class MetricsLog:
    def __init__(self, run_dir: Path | None, console: bool, tensorboard: bool = False):
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        self.console = console
        self.writer = None
        if tensorboard and run_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def logged(self, key: str, step: int) -> dict | None:
        """The last record holding `key` at `step` (None if there is none; a torn line is skipped)."""
        found = None
        lines = self.path.read_text().splitlines() if self.path is not None and self.path.is_file() else []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step") == step and key in record:
                found = record
        return found

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json_line(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        if self.console:
            parts = [f"step {record['step']}"] + [
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step"]
            print(" | ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
