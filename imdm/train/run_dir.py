"""The run directory: created once, holding the resolved recipe; a resumed run must not
silently change what it trains."""

from __future__ import annotations

import sys
from pathlib import Path

from imdm.parallel.distributed import barrier
from imdm.recipe import Recipe, RecipeError
from imdm.recipe.loader import tomllib
from imdm.recipe.writer import recipe_to_toml

# Keys that may differ between a run directory's recipe and a resumed run's recipe.
RESUMABLE_CHANGES = {"train.steps", "train.eval_every", "train.eval_batches", "train.micro_batch",
                     "train.nonfinite", "train.max_nonfinite", "data.num_workers", "checkpoint.every_steps",
                     "checkpoint.keep_last", "checkpoint.resume", "checkpoint.async_save",
                     "checkpoint.seed_checkpoint", "train.device"}
RESUMABLE_SECTIONS = {"logging", "sampling", "parallelism", "eval", "conditional"}


def _flat(text: str) -> dict:
    return {f"{s}.{k}": v for s, body in tomllib.loads(text).items() for k, v in body.items()}


def recipe_changes(old_toml: str, new_toml: str) -> list[str]:
    """Keys whose values differ and that would change what a resumed run trains. A key missing
    from either recipe (written before the key existed) counts as its default."""
    defaults = _flat(recipe_to_toml(Recipe()))
    old, new = {**defaults, **_flat(old_toml)}, {**defaults, **_flat(new_toml)}
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [k for k in changed if k not in RESUMABLE_CHANGES and k.split(".")[0] not in RESUMABLE_SECTIONS]


def prepare_run_dir(run_dir: Path, recipe: Recipe, is_main: bool) -> None:
    """Create the run directory and write recipe.toml; refuse to continue a run whose recipe
    differs in anything that changes training."""
    text = recipe_to_toml(recipe)
    path = run_dir / "recipe.toml"
    if is_main:
        if path.is_file() and (run_dir / "checkpoints").is_dir():
            changes = recipe_changes(path.read_text(), text)
            if changes:
                raise RecipeError(str(path), [f"{k}: differs from the run directory's recipe; use a new "
                                              f"run.name or delete {run_dir}" for k in changes])
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"run directory: {run_dir}", file=sys.stderr)
    barrier()
