"""Training metrics: a JSON line per log step and a console progress line."""

from __future__ import annotations

import json
import sys
from pathlib import Path


class MetricsLog:
    def __init__(self, path: Path | None, console: bool):
        self.path, self.console = path, console

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.console:
            parts = [f"step {record['step']}"] + [
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items() if k != "step"]
            print(" | ".join(parts), file=sys.stderr, flush=True)
