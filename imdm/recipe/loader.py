"""Load a recipe from TOML (or the packaged default), apply dotted overrides, and validate
every key, type and value before anything else runs."""

from __future__ import annotations

import difflib
import sys
import typing
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from imdm.recipe.errors import RecipeError
from imdm.recipe.packaged import PACKAGED_PREFIX, unknown_packaged
from imdm.recipe.schema import SECTIONS, Recipe

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Keys the schema no longer has -> (the value that left them inert, what replaced them). Run
# directories written before a removal keep loading; any other value is refused.
RETIRED_KEYS = {
    "sampling.prefix_len": (0, "a prompt's length is that of the prompt given to imdm sample --prefix, or "
                               "conditional.prefix_tokens for imdm eval"),
}


def _nearest(word: str, candidates: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.4)
    return f"; did you mean '{match[0]}'?" if match else ""


def _read_text(file: Path) -> str:
    """A TOML file's text: it must be a readable UTF-8 file (TOML's only encoding)."""
    if file.is_dir():
        raise RecipeError(str(file), ["is a folder, not a TOML file"])
    if not file.is_file():
        raise RecipeError(str(file), ["file not found"])
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise RecipeError(str(file), [f"cannot be read: {err.strerror}"]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        found = "UTF-16 text" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else \
            f"not UTF-8 text (byte {err.start} is {raw[err.start]:#04x})"
        raise RecipeError(str(file), [f"{found}; TOML files are UTF-8: save it again as UTF-8"]) from None


def _unnamed(table: dict) -> list[str]:
    """A recipe names at least its run and its algorithm (a coupling recipe: its teacher run), so
    that an empty or stray file never stands for the defaults."""
    if not table:
        return ["the recipe is empty (or only comments): it needs at least [run] name and [algorithm] name"]
    named = {f"{s}.{k}" for s, body in table.items() if isinstance(body, dict) for k in body}
    problems = [] if "run.name" in named else ["run.name: missing; a recipe names its run ([run] name = ...)"]
    if not {"algorithm.name", "couplings.teacher_run"} & named:
        problems.append("algorithm.name: missing; a recipe names its algorithm ([algorithm] name = ...)")
    return problems


def read_toml(path: str) -> tuple[str, dict]:
    """Read a recipe file, or a packaged one named 'builtin:NAME'. Returns (label, table)."""
    if path.startswith(PACKAGED_PREFIX):
        name = path[len(PACKAGED_PREFIX):]
        resource = resources.files("imdm.recipes") / f"{name}.toml"
        if not resource.is_file():
            raise RecipeError(path, [unknown_packaged(name)])
        text = resource.read_text()
    else:
        text = _read_text(Path(path))
    try:
        return path, tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise RecipeError(path, [f"not valid TOML: {err}"]) from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001); the value is read as a TOML literal,
    falling back to a bare string."""
    if "=" not in item:
        raise RecipeError("command line", [f"override '{item}' must look like section.key=value"])
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, h) for h in typing.get_args(hint) if h is not type(None))
    if origin is list:
        (inner,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    args = [h for h in typing.get_args(hint) if h is not type(None)]
    if args:
        return _type_name(args[0])
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _check_value(key: str, value: Any, meta: dict) -> str | None:
    if meta.get("choices") and value not in meta["choices"]:
        options = ", ".join(repr(c) for c in meta["choices"])
        return f"{key}: {value!r} is not one of {options}{_nearest(str(value), map(str, meta['choices']))}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if meta.get("gt") is not None and not value > meta["gt"]:
            return f"{key}: must be > {meta['gt']}, got {value}"
        if meta.get("ge") is not None and not value >= meta["ge"]:
            return f"{key}: must be >= {meta['ge']}, got {value}"
        if meta.get("le") is not None and not value <= meta["le"]:
            return f"{key}: must be <= {meta['le']}, got {value}"
    return None


def _build_section(name: str, cls: type, table: dict, problems: list[str]):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in table.items():
        dotted = f"{name}.{key}"
        if dotted in RETIRED_KEYS:
            inert, replacement = RETIRED_KEYS[dotted]
            if value != inert:
                problems.append(f"{dotted}: removed; {replacement}")
            continue
        if key not in known:
            problems.append(f"{dotted}: unknown key{_nearest(dotted, [f'{name}.{k}' for k in known])}")
            continue
        if not _type_ok(value, hints[key]):
            problems.append(f"{dotted}: expected {_type_name(hints[key])}, got {value!r}")
            continue
        bad = _check_value(dotted, value, known[key].metadata)
        if bad:
            problems.append(bad)
            continue
        kwargs[key] = float(value) if hints[key] is float else value
    return cls(**kwargs)


Check = typing.Callable[[Recipe], list]


def recipe_from_dict(table: dict, source: str = "<dict>", world_size: int | None = None,
                     checks: typing.Sequence[Check] = ()) -> Recipe:
    """Validate a parsed TOML table into a Recipe, or raise RecipeError listing every problem.
    `checks` add rules beyond the schema (the algorithm registry's), as 'key: message' lines."""
    problems: list[str] = []
    sections = {}
    for name, body in table.items():
        if name not in SECTIONS:
            problems.append(f"[{name}]: unknown section{_nearest(name, SECTIONS)}")
        elif not isinstance(body, dict):
            problems.append(f"{name}: expected a [{name}] table, got {body!r}")
        else:
            sections[name] = _build_section(name, SECTIONS[name], body, problems)
    if problems:
        raise RecipeError(source, problems)
    recipe = Recipe(**sections)
    problems = recipe.cross_checks(world_size)
    for check in checks:
        problems += check(recipe)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def load_recipe(path: str, overrides: typing.Sequence[str] = (), world_size: int | None = None,
                checks: typing.Sequence[Check] = ()) -> Recipe:
    """Read, override and validate a recipe's keys, types and values. `world_size` (when known)
    is checked against the data-parallel layout. The algorithm registry's rules come in as
    `checks`: applications load recipes through imdm.algorithms.registry.load_recipe."""
    source, table = read_toml(path)
    empty = not table
    for item in overrides:
        keys, value = parse_override(item)
        if len(keys) != 2:
            raise RecipeError("command line", [f"override '{item}': use section.key=value"])
        table.setdefault(keys[0], {})
        if not isinstance(table[keys[0]], dict):
            raise RecipeError("command line", [f"override '{item}': {keys[0]} is not a section"])
        table[keys[0]][keys[1]] = value
    label = source if not overrides else f"{source} (with overrides {' '.join(overrides)})"
    unnamed = _unnamed({} if empty else table)
    try:
        recipe = recipe_from_dict(table, label, world_size, checks)
    except RecipeError as err:
        raise RecipeError(label, unnamed + err.problems) from None
    if unnamed:
        raise RecipeError(label, unnamed)
    return recipe
