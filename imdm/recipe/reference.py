"""The recipe keys as Markdown tables, generated from the schema (imdm.tools.recipe_reference
writes them into docs/recipes.md)."""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields

from imdm.recipe.schema import SECTIONS


def _type(hint) -> str:
    if typing.get_origin(hint) is list:
        return f"list of {_type(typing.get_args(hint)[0])}"
    args = [h for h in typing.get_args(hint) if h is not type(None)]
    return _type(args[0]) if args else getattr(hint, "__name__", str(hint))


def _allowed(meta: dict) -> str:
    if meta.get("choices"):
        return " / ".join(f"`{c}`" for c in meta["choices"])
    bounds = [f"{op} {meta[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("le", "<=")) if meta.get(k) is not None]
    return ", ".join(bounds)


def markdown_reference() -> str:
    """One table per recipe section: key, type, default, allowed values, meaning."""
    out = []
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        out += [f"**[{name}]**", "", "| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        for f in fields(cls):
            default = f.default_factory() if f.default is MISSING else f.default
            shown = "(from size)" if default is None else f"`{default!r}`".replace("'", '"')
            out.append(f"| `{f.name}` | {_type(hints[f.name])} | {shown} | {_allowed(f.metadata)} | "
                       f"{f.metadata.get('doc', '')} |")
        out.append("")
    return "\n".join(out)

