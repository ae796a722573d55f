"""Pipelines: one TOML file chains stages (e.g. MDLM -> IM-SDTT -> couplings -> IM-ReDi). Each
stage is a recipe plus overrides run by `train` or `couplings`; its identity is its run name,
and later stages name their inputs by run name (init.from_run, couplings.teacher_run,
data.couplings). Every stage recipe and every input is checked before anything runs; a
finished stage is not redone; a failed stage stops the pipeline with a message naming it.

    [pipeline]
    output_dir = "runs"            # every stage's run.output_dir
    [[stage]]
    recipe = "builtin:synthetic"
    command = "train"              # train | couplings
    overrides = ["run.name=synthetic-mdlm", "algorithm.name=mdlm"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imdm.recipe import Recipe, RecipeError
from imdm.algorithms.registry import load_recipe
from imdm.recipe.loader import read_toml

COMMANDS = ("train", "couplings")
PIPELINE_KEYS = {"output_dir"}
STAGE_KEYS = {"recipe", "command", "overrides"}


@dataclass(frozen=True)
class Stage:
    command: str
    recipe_path: str
    overrides: tuple[str, ...]
    recipe: Recipe

    @property
    def name(self) -> str:
        return self.recipe.run.name

    def inputs(self) -> list[str]:
        """Run names this stage reads."""
        r = self.recipe
        if self.command == "couplings":
            return [r.couplings.teacher_run]
        return [name for name in (r.init.from_run, r.data.couplings) if name]


def _stage_errors(index: int, table: dict) -> list[str]:
    problems = [f"stage[{index}].{k}: unknown key (known: {', '.join(sorted(STAGE_KEYS))})"
                for k in table if k not in STAGE_KEYS]
    if not isinstance(table.get("recipe"), str):
        problems.append(f"stage[{index}].recipe: a recipe path or builtin:NAME is required")
    if table.get("command", "train") not in COMMANDS:
        problems.append(f"stage[{index}].command: {table.get('command')!r} is not one of {', '.join(COMMANDS)}")
    overrides = table.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        problems.append(f"stage[{index}].overrides: a list of 'section.key=value' strings")
    return problems


def is_pipeline(path: str) -> bool:
    """Whether the TOML file (or builtin: name) at `path` is a pipeline rather than a recipe."""
    return bool({"pipeline", "stage"} & set(read_toml(path)[1]))


def load_pipeline(path: str, extra_overrides=(), output_dir: str | None = None,
                  world_size: int | None = None) -> tuple[Path, list[Stage]]:
    """The pipeline's output folder (`output_dir`, or the file's) and its validated stages.
    `extra_overrides` apply to every stage before the stage's own (e.g. train.device=cpu);
    `world_size` (when known) is checked against every stage's layout."""
    label, table = read_toml(path)
    problems = [f"{k}: unknown section (known: pipeline, stage)" for k in table if k not in ("pipeline", "stage")]
    head = table.get("pipeline", {})
    problems += [f"pipeline.{k}: unknown key (known: output_dir)" for k in head if k not in PIPELINE_KEYS]
    stages_table = table.get("stage", [])
    if not stages_table:
        problems.append("stage: a pipeline needs at least one [[stage]]")
    for i, stage in enumerate(stages_table):
        problems += _stage_errors(i, stage)
    if problems:
        raise RecipeError(label, problems)
    output_dir = Path(output_dir or head.get("output_dir", "runs"))
    stages = []
    for i, stage in enumerate(stages_table):
        overrides = (*extra_overrides, *stage.get("overrides", []), f"run.output_dir={output_dir}")
        try:
            recipe = load_recipe(stage["recipe"], list(overrides), world_size)
        except RecipeError as err:   # every stage is checked before the pipeline's problems are raised
            problems += [f"stage[{i}] ({stage['recipe']}): {p}" for p in err.problems]
            continue
        stages.append(Stage(stage.get("command", "train"), stage["recipe"], tuple(overrides), recipe))
    problems = problems or _wiring_errors(stages, output_dir)
    if problems:
        raise RecipeError(label, problems)
    return output_dir, stages


def _wiring_errors(stages: list[Stage], output_dir: Path) -> list[str]:
    """Each input must be an earlier stage or a run already under output_dir; names are unique."""
    problems, seen = [], set()
    for i, stage in enumerate(stages):
        if stage.name in seen:
            problems.append(f"stage[{i}]: run name '{stage.name}' is used by an earlier stage")
        for name in stage.inputs():
            if name not in seen and not (output_dir / name).is_dir():
                problems.append(f"stage[{i}] ({stage.name}): input run '{name}' is neither an earlier stage "
                                f"nor a run under {output_dir}")
        seen.add(stage.name)
    return problems


def stage_finished(stage: Stage) -> bool:
    """A train stage is finished when its newest complete checkpoint is at train.steps; a
    couplings stage when its set is marked complete."""
    run_dir = Path(stage.recipe.run.output_dir) / stage.name
    if stage.command == "couplings":
        from imdm.data.coupling_store import coupling_path, read_manifest
        manifest = read_manifest(coupling_path(stage.recipe.run.output_dir, stage.name))
        return bool(manifest and manifest.get("complete"))
    from imdm.parallel.checkpoint import checkpoint_step, latest_checkpoint
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    return ckpt is not None and checkpoint_step(ckpt) >= stage.recipe.train.steps


class StageFailed(RuntimeError):
    """A stage that failed, or was stopped by a signal (exit status 128 + the signal)."""

    def __init__(self, message: str, exit_status: int = 1):
        super().__init__(message)
        self.exit_status = exit_status


def run_stage(stage: Stage, dist) -> None:
    if stage.command == "couplings":
        from imdm.couplings import generate_couplings
        generate_couplings(stage.recipe, dist)
        return
    from imdm.train.trainer import Trainer
    result = Trainer(stage.recipe, dist).fit()
    if result.stopped_early:
        raise StageFailed(f"training stopped at step {result.step} of {stage.recipe.train.steps}",
                          128 + result.stop_signal)


def run_pipeline(path: str, extra_overrides=(), log=print, only: tuple[str, ...] = (),
                 output_dir: str | None = None) -> list[Stage]:
    """Run every unfinished stage in order (with `only`, just the stages of those run names:
    independent branches of one pipeline can then run side by side); returns the stages. A
    failing stage raises StageFailed naming it; the stages after it do not run."""
    from imdm.parallel.distributed import init_distributed
    output_dir, stages = load_pipeline(path, extra_overrides, output_dir)
    unknown = sorted(set(only) - {s.name for s in stages})
    if unknown:
        raise RecipeError(path, [f"--only: no stage named {', '.join(unknown)} (stages: "
                                 f"{', '.join(s.name for s in stages)})"])
    by_name = {s.name: s for s in stages}
    unfinished = [f"--only: input '{name}' of '{s.name}' is not finished" for s in stages if s.name in only
                  for name in s.inputs() if name in by_name and name not in only and not stage_finished(by_name[name])]
    if unfinished:
        raise RecipeError(path, unfinished)
    dist = init_distributed(stages[0].recipe.train.device)
    for i, stage in enumerate(stages):
        where = f"stage {i + 1}/{len(stages)} {stage.command} {stage.name}"
        if only and stage.name not in only:
            continue
        if stage_finished(stage):
            log(f"{where}: finished earlier, skipped")
            continue
        log(f"{where}: running ({stage.recipe_path})")
        try:
            run_stage(stage, dist)
        except Exception as err:
            status = err.exit_status if isinstance(err, StageFailed) else 1
            raise StageFailed(f"pipeline {path} stopped at {where}: {type(err).__name__}: {err}", status) from err
        if not stage_finished(stage):
            raise StageFailed(f"pipeline {path} stopped at {where}: the stage ended without finishing")
    return stages
