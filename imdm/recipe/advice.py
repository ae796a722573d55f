"""Settings that are valid but rarely meant: `imdm check` and `imdm train` print them as warnings
instead of running on in silence."""

from __future__ import annotations

from imdm.recipe.schema import Recipe


def recipe_warnings(recipe: Recipe) -> list[str]:
    """'key: warning' lines (none for a coupling recipe: its training settings are the teacher's)."""
    if recipe.couplings.teacher_run:
        return []
    warmup, steps = recipe.schedule.warmup_steps, recipe.train.steps
    if warmup > steps:
        return [f"schedule.warmup_steps: {warmup} is more than train.steps ({steps}): the learning rate peaks at "
                f"{steps / warmup:.0%} of optimizer.lr"]
    return []
