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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from imdm.parallel.distributed import barrier
from imdm.parallel.staging import PinnedStager

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


def _finalize(partial: Path, final: Path, folder: Path, step: int, recipe_toml: str, keep_last: int) -> None:
    (partial / "recipe.toml").write_text(recipe_toml)
    (partial / META).write_text(json.dumps({"step": step, "saved_at": time.time()}))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    for old in complete_checkpoints(folder)[:-keep_last]:
        shutil.rmtree(old)


class CheckpointManager:
    """Saves every rank's share of the state for a step; the main rank renames the folder once
    the save is complete. With `async_save` the loop waits only to launch the copy to pinned host
    memory (call `wait_for_staging` before the next optimizer step changes the parameters); the
    write finishes in the background and is finalised at the next save, `poll` or `close`."""

    def __init__(self, folder: Path, keep_last: int, is_main: bool, async_save: bool = False,
                 process_group=None):
        self.folder, self.keep_last, self.is_main = folder, keep_last, is_main
        self.async_save, self.process_group = async_save, process_group
        self._stager = PinnedStager() if async_save and torch.cuda.is_available() else None
        self._writer = ThreadPoolExecutor(max_workers=1) if self._stager is not None else None
        self._pending = None          # (future, partial, final, step, recipe_toml)

    def save(self, step: int, state: dict, recipe_toml: str) -> float:
        """Start (async) or do (sync) the save of `state` for `step`; returns seconds the caller waited."""
        start = time.perf_counter()
        self.wait()
        final, partial = self.folder / f"step_{step:08d}", self.folder / f".partial-step_{step:08d}"
        if self.is_main:
            self.folder.mkdir(parents=True, exist_ok=True)
            if partial.exists():
                shutil.rmtree(partial)
        barrier()
        if self._stager is not None:
            staged = self._stager.stage(state)

            def write():
                self._stager.synchronize()
                _quiet(dcp.save, staged, checkpoint_id=str(partial), process_group=self.process_group)

            self._pending = (self._writer.submit(write), partial, final, step, recipe_toml)
        elif self.async_save:
            future = _quiet(dcp.async_save, state, checkpoint_id=str(partial), process_group=self.process_group)
            self._pending = (future, partial, final, step, recipe_toml)
        else:
            _quiet(dcp.save, state, checkpoint_id=str(partial))
            barrier()
            if self.is_main:
                _finalize(partial, final, self.folder, step, recipe_toml, self.keep_last)
            barrier()
        return time.perf_counter() - start

    def wait_for_staging(self) -> float:
        """Block until the state is copied off the parameters (before they change); seconds waited."""
        if self._stager is None:
            return 0.0
        start = time.perf_counter()
        self._stager.synchronize()
        return time.perf_counter() - start

    def poll(self) -> None:
        """Finalise a background save that has finished (never blocks)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Block until a background save is written and finalised."""
        self.wait_for_staging()
        if self._pending is None:
            return
        future, partial, final, step, recipe_toml = self._pending
        self._pending = None
        future.result()
        if self.is_main:
            _finalize(partial, final, self.folder, step, recipe_toml, self.keep_last)

    def close(self) -> None:
        self.wait()
        if self._writer is not None:
            self._writer.shutdown()


def recovery_advice(path: Path) -> str:
    """What to do about the unreadable checkpoint `path`: fall back to the previous complete one,
    or start over under another run name."""
    step = COMPLETE.match(path.name)
    earlier = [p for p in complete_checkpoints(path.parent) if step and int(COMPLETE.match(p.name).group(1))
               < int(step.group(1))]
    if earlier:
        return f"delete {path} to go back to the previous complete checkpoint {earlier[-1].name}, or use a new run.name"
    return f"there is no earlier complete checkpoint: use a new run.name (or delete {path.parent.parent})"


def load_checkpoint(path: Path, state: dict) -> dict:
    """Fill `state` in place from the checkpoint at `path` (only the keys `state` holds). An
    unreadable one raises CheckpointError saying what to do."""
    if not (path / META).is_file() or not (path / ".metadata").is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META} or .metadata)")
    try:   # read first: DCP logs a traceback for a metadata file it cannot read
        dcp.FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is damaged (its .metadata cannot be read: {type(err).__name__}); "
                              f"{recovery_advice(path)}") from None
    try:
        _quiet(dcp.load, state, checkpoint_id=str(path))
    except (Exception, CheckpointException) as err:  # DCP's own error derives from BaseException
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise CheckpointError(f"cannot load checkpoint {path}: {type(err).__name__}: {first_line}; "
                              f"{recovery_advice(path)}") from err
    return state


def checkpoint_step(path: Path) -> int:
    try:
        return int(json.loads((path / META).read_text())["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged ({META} has no step: {type(err).__name__}); "
                              f"{recovery_advice(path)}") from None
