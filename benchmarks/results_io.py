"""Write one benchmark result in the project's format (DESIGN.md, "Benchmark results format"):
benchmarks/results/<benchmark>/<UTC date>-<short device>-<short git sha>.json holding the
benchmark's name, the device, world size, torch / Triton / Python / CUDA versions, the git sha
(and whether the tree had uncommitted changes), the recipe, the config and the metrics."""

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


_VENDOR_WORDS = {"nvidia", "geforce", "tesla", "quadro", "amd", "instinct", "radeon", "intel", "cpu"}


def short_device(name: str) -> str:
    """The device part of a result's file name: 'h100' for 'NVIDIA H100 80GB HBM3', 'rtx4090'
    for 'NVIDIA GeForce RTX 4090', 'a100' for 'NVIDIA A100-SXM4-80GB', 'cpu' for a CPU."""
    if name.startswith("CPU"):
        return "cpu"
    match = re.search(r"\b(GH200|GB200|[HBA]\d{2,3}|L40S?|L4|MI\d{3}X?)\b", name, re.IGNORECASE)
    if match:
        return match.group(1).lower()
    words = [w for w in re.findall(r"[A-Za-z0-9]+", name) if w.lower() not in _VENDOR_WORDS]
    model = [w for w in words if not re.fullmatch(r"\d+GB|HBM\w*|PCIE|SXM\d*|NVL", w, re.IGNORECASE)]
    return "".join(model[:2]).lower() or "gpu"


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_sha() -> str:
    """HEAD of the checkout (IMDM_GIT_SHA when the code runs from a copy without .git)."""
    if os.environ.get("IMDM_GIT_SHA"):
        return os.environ["IMDM_GIT_SHA"]
    return _git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from HEAD (the result is then not exactly of `git_sha`); None
    when that cannot be told (no git, or IMDM_GIT_SHA set)."""
    if os.environ.get("IMDM_GIT_SHA"):
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


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
              "git_sha": sha, "git_dirty": git_dirty(), "recipe": recipe, "config": config, "metrics": metrics}
    folder = Path(out_dir or RESULTS) / benchmark
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{short_device(device)}-{sha[:8]}.json"
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)   # a result is whole or absent
    return path
