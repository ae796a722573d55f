"""Training metrics: a JSON line per record in RUN_DIR/metrics.jsonl, a console progress line,
and optionally TensorBoard scalars in RUN_DIR/tb."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class MetricsLog:
    def __init__(self, run_dir: Path | None, console: bool, tensorboard: bool = False):
        self.path = run_dir / "metrics.jsonl" if run_dir is not None else None
        self.console = console
        self.writer = None
        if tensorboard and run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("logging.tensorboard = true needs the tensorboard package") from err
            self.writer = SummaryWriter(str(run_dir / "tb"))

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
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
