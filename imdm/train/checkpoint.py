"""Checkpoints through torch.distributed.checkpoint (DCP), written atomically: each save goes
to a hidden partial folder that is renamed to step_NNNNNNNN only once every file is in place,
so an interrupted save never looks complete. The resolved recipe and a meta file sit beside
the tensors."""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from imdm.parallel.distributed import barrier

def _quiet(fn, *args, **kwargs):
    """Run a DCP call without its warning that no process group exists (one process is a
    supported layout here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        return fn(*args, **kwargs)


COMPLETE = re.compile(r"^step_(\d{8})$")
META = "meta.json"


class CheckpointError(RuntimeError):
    pass


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if COMPLETE.match(p.name) and (p / META).is_file()
             and (p / ".metadata").is_file()]
    return sorted(found, key=lambda p: int(COMPLETE.match(p.name).group(1)))


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: Path, step: int, state: dict, recipe_toml: str, is_main: bool,
                    keep_last: int) -> Path:
    """Write `state` (nested dicts of tensors and plain values) for `step`; every rank calls it."""
    final = folder / f"step_{step:08d}"
    partial = folder / f".partial-step_{step:08d}"
    if is_main:
        folder.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
    barrier()
    _quiet(dcp.save, state, checkpoint_id=str(partial))
    barrier()
    if is_main:
        (partial / "recipe.toml").write_text(recipe_toml)
        (partial / META).write_text(json.dumps({"step": step, "saved_at": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        for old in complete_checkpoints(folder)[:-keep_last]:
            shutil.rmtree(old)
    barrier()
    return final


def load_checkpoint(path: Path, state: dict) -> dict:
    """Fill `state` in place from the checkpoint at `path` (only the keys `state` holds)."""
    if not (path / META).is_file() or not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META} or .metadata)")
    try:
        _quiet(dcp.load, state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as err:  # DCP's own error derives from BaseException
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise CheckpointError(f"cannot load checkpoint {path}: {type(err).__name__}: {first_line}") from err
    return state


def checkpoint_step(path: Path) -> int:
    return json.loads((path / META).read_text())["step"]
