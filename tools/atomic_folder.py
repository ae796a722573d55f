"""A folder that appears whole or not at all: written under a hidden name beside its final
place and renamed there once complete; removed if writing fails. It and its files get the
permissions mkdir and open give (the user's umask), not the owner-only ones of a temporary
folder or of writers that go through one (safetensors)."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from imdm.parallel.checkpoint import CheckpointError


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def give_usual_permissions(folder: Path) -> None:
    """Folders 0o777 and files 0o666, less the umask, under `folder` and `folder` itself."""
    mask = current_umask()
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_folder(final: Path):
    """Yield a fresh folder to fill; on success it becomes `final` (which must not exist)."""
    if final.exists():
        raise CheckpointError(f"{final} exists already; choose another name")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{final.name}-", dir=final.parent))
    try:
        yield staging
        give_usual_permissions(staging)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
