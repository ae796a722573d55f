"""The packaged recipes and pipelines (the imdm.recipes package): `builtin:NAME` names a recipe,
`builtin:pipelines/NAME` a pipeline."""

from __future__ import annotations

import difflib
from importlib import resources

PACKAGED_PREFIX = "builtin:"
PIPELINES = "pipelines"


def packaged_names(folder: str = "") -> list[str]:
    """The names of the packaged TOML files in `folder` ('' for recipes, PIPELINES for pipelines)."""
    root = resources.files("imdm.recipes")
    if folder:
        root = root / folder
    if not root.is_dir():
        return []
    return sorted(p.name[:-len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def unknown_packaged(name: str) -> str:
    """The problem with a `builtin:` name that has no file: the nearest packaged name of the same
    kind (pipelines for 'pipelines/NAME', recipes otherwise) and the list of them."""
    folder, _, base = name.rpartition("/")
    kind, wanted = ("pipeline", base) if folder == PIPELINES else ("recipe", name)
    known = packaged_names(PIPELINES if kind == "pipeline" else "")
    match = difflib.get_close_matches(wanted, known, n=1, cutoff=0.4)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"no packaged {kind} '{wanted}'{hint} (known: {', '.join(known)})"
