"""The one error type a bad recipe raises: every problem, each naming the file and the key."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe that cannot run. `problems` holds one line per bad key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))
