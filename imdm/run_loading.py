"""Open a finished (or running) run directory for sampling and evaluation: its recipe, its
data source, and its newest complete checkpoint's EMA weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from imdm.algorithms.protocol import Process
from imdm.algorithms.registry import load_recipe
from imdm.build import Vocabulary, build_model, build_process, build_vocabulary
from imdm.recipe import Recipe
from imdm.parallel.checkpoint import CheckpointError, checkpoint_step, latest_checkpoint, load_checkpoint
from imdm.parallel.ema import EMA

LOADED_RUN_OVERRIDES = ("sampling.", "eval.", "conditional.", "logging.")   # how a finished run is sampled and evaluated


@dataclass
class LoadedRun:
    recipe: Recipe
    vocab: Vocabulary
    model: torch.nn.Module
    process: Process
    step: int
    checkpoint: Path


def load_run(run_dir: str | Path, device: torch.device, overrides=()) -> LoadedRun:
    """The run's model with EMA weights, in eval mode, on `device`. `overrides` may change
    how the run is sampled and evaluated only (sampling.*, eval.*, conditional.*)."""
    run_dir = Path(run_dir)
    if not (run_dir / "recipe.toml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no recipe.toml)")
    bad = [o for o in overrides if not o.startswith(LOADED_RUN_OVERRIDES)]
    if bad:
        raise CheckpointError(f"only sampling.*, eval.*, conditional.* and logging.* may be overridden when loading a run, not {bad}")
    recipe = load_recipe(str(run_dir / "recipe.toml"), overrides)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint yet")
    vocab = build_vocabulary(recipe)
    model = build_model(recipe, vocab.model_vocab, vocab.mask_id, device)
    ema = EMA(model, recipe.train.ema_decay)
    state = load_checkpoint(ckpt, {"ema": ema.state_dict()})
    ema.load_state_dict(state["ema"])
    ema.copy_to(model)
    return LoadedRun(recipe, vocab, model.eval(), build_process(recipe, vocab.mask_id, device),
                     checkpoint_step(ckpt), ckpt)


def load_named_run(output_dir: str | Path, name: str, key: str, device: torch.device) -> LoadedRun:
    """load_run of the run called `name` under `output_dir`, for the recipe key `key` that names
    it: its errors say which key, and a missing run lists the runs that are there."""
    output_dir = Path(output_dir)
    if not (output_dir / name / "recipe.toml").is_file():
        runs = sorted(p.name for p in output_dir.iterdir() if (p / "recipe.toml").is_file()) if output_dir.is_dir() else []
        known = f"runs there: {', '.join(runs)}" if runs else "no runs there"
        raise CheckpointError(f"{key}: no run named '{name}' under {output_dir} ({known})")
    try:
        return load_run(output_dir / name, device)
    except CheckpointError as err:
        raise CheckpointError(f"{key}: run '{name}' ({err})") from None
