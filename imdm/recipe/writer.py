"""Write a Recipe back to TOML, every field resolved, so a run directory records what ran."""

from __future__ import annotations

import json
from dataclasses import fields

from imdm.recipe.schema import Recipe


def _literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def recipe_to_toml(recipe: Recipe) -> str:
    """The full recipe as TOML text; optional fields left to their preset are written resolved."""
    lines = []
    for section in fields(recipe):
        body = getattr(recipe, section.name)
        lines.append(f"[{section.name}]")
        for f in fields(body):
            value = getattr(body, f.name)
            if value is None and section.name == "model":
                value = dict(zip(("d_model", "n_blocks", "n_heads"), body.dims()))[f.name]
            lines.append(f"{f.name} = {_literal(value)}")
        lines.append("")
    return "\n".join(lines)
