"""Write one benchmark result in the project's format:
benchmarks/results/<benchmark>/<UTC date>-<short device>-<short git sha>.json."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def _short_device(name: str) -> str:
    match = re.search(r"(H100|H200|A100|B200|L40S?)", name)
    return match.group(1).lower() if match else "cpu"


def git_sha() -> str:
    """HEAD of the checkout (IMDM_GIT_SHA when the code runs from a copy without .git)."""
    if os.environ.get("IMDM_GIT_SHA"):
        return os.environ["IMDM_GIT_SHA"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def software_versions() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
            "cuda": torch.version.cuda}


def write_result(benchmark: str, recipe: str, config: dict, metrics: dict, world_size: int = 1,
                 out_dir: str | Path | None = None) -> Path:
    """Write the result JSON under `out_dir` (default benchmarks/results) and return its path."""
    device, sha = device_name(), git_sha()
    record = {"benchmark": benchmark, "device": device, "world_size": world_size, **software_versions(),
              "git_sha": sha, "recipe": recipe, "config": config, "metrics": metrics}
    folder = Path(out_dir or RESULTS) / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{_short_device(device)}-{sha[:8]}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)   # a result is whole or absent
    return path
