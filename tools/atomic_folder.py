"""A folder that appears whole or not at all: written under a hidden name beside its final
place and renamed there once complete; removed if writing fails."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from imdm.parallel.checkpoint import CheckpointError


@contextmanager
def atomic_folder(final: Path):
    """Yield a fresh folder to fill; on success it becomes `final` (which must not exist)."""
    if final.exists():
        raise CheckpointError(f"{final} exists already; choose another name")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{final.name}-", dir=final.parent))
    try:
        yield staging
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
