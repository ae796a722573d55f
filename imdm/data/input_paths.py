"""The files a recipe's data reads (text files, a token store, a tokenizer), checked from the
current folder before anything runs, so that `imdm check` does not say ok to a run that cannot
find its inputs. Hub names (a tokenizer repo id, a dataset) are left to the run."""

from __future__ import annotations

from pathlib import Path

from imdm.data.local_text import DataSourceError, resolve_paths
from imdm.data.token_store import MANIFEST
from imdm.data.tokenizer import KIND_FILES
from imdm.recipe import Recipe

TOKENIZED_SOURCES = ("local", "hub", "store")


def _looks_like_path(location: str) -> bool:
    """A path rather than a hub repo id: absolute, starting with '.', '~', or with a suffix."""
    return Path(location).is_absolute() or location.startswith((".", "~")) or bool(Path(location).suffix)


def _tokenizer_problems(kind: str, location: str) -> list[str]:
    path = Path(location).expanduser()
    if path.is_dir():
        missing = [name for name in KIND_FILES[kind] if not (path / name).is_file()]
        return [f"tokenizer.path: folder '{location}' lacks {', '.join(missing)}"] if missing else []
    if path.is_file() or not _looks_like_path(location):
        return []
    return [f"tokenizer.path: '{location}' does not exist (looked in {Path.cwd()})"]


def missing_inputs(recipe: Recipe) -> list[str]:
    """'key: problem' lines for the recipe's data and tokenizer paths that are not there."""
    d, problems = recipe.data, []
    if d.source == "local":
        for pattern in d.paths:
            try:
                resolve_paths([pattern], Path.cwd())
            except DataSourceError as err:
                problems.append(str(err))
    if d.source == "store" and d.store and not (Path(d.store) / MANIFEST).is_file():
        problems.append(f"data.store: '{d.store}' is not a prepared token store (no {MANIFEST}; looked in "
                        f"{Path.cwd()})")
    if d.source == "hub" and d.hub_location and _looks_like_path(d.hub_location) and not Path(d.hub_location).exists():
        problems.append(f"data.hub_location: '{d.hub_location}' does not exist (looked in {Path.cwd()})")
    if d.source in TOKENIZED_SOURCES:
        problems += _tokenizer_problems(recipe.tokenizer.kind, recipe.tokenizer.path)
    return problems
