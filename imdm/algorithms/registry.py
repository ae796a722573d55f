"""The algorithm registry: the recipe's `algorithm.name` picks a registered process and
`algorithm.objective` a registered training objective (imdm.algorithms.protocol). Every module
of this package registers what it defines when imported; `load_recipe` validates a recipe
against the registry, so an algorithm's own recipe rules live beside its code.

Adding an algorithm is one module here that calls `register_process` and/or
`register_objective`, plus its recipes and tests; the trainer, sampler, couplings and pipelines
only ever go through the lookups below."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from imdm.recipe.loader import load_recipe as load_recipe_schema
from imdm.recipe.loader import recipe_from_dict as recipe_from_dict_schema
from imdm.recipe.errors import RecipeError
from imdm.recipe.schema import Recipe


def no_problems(*_) -> list[str]:
    return []


@dataclass(frozen=True)
class ProcessContext:
    recipe: Recipe
    mask_id: int
    device: Any                  # torch.device: where the process's tensors live


@dataclass(frozen=True)
class ProcessSpec:
    """A generative process (`algorithm.name`)."""
    name: str
    summary: str
    build: Callable[[ProcessContext], Any]                # -> a Process
    sampler_settings: Callable[[Recipe, int], Any]        # (recipe, steps) -> settings for Process.sample
    model_options: Callable[[Recipe], dict] = lambda recipe: {}   # DiTConfig fields the process sets
    family: str = ""             # what objectives may ask of it: "masked" (absorbing-state diffusion), "autoregressive"
    mask_states: bool = False    # the network reads a continuous state at each masked position (IMDM)
    check: Callable[[Recipe], list[str]] = no_problems


@dataclass(frozen=True)
class ObjectiveContext:
    recipe: Recipe
    process: Any                 # the built Process
    spec: ProcessSpec
    make_teacher: Callable[[], Any]   # a frozen model built and sharded like the student


@dataclass(frozen=True)
class ObjectiveSpec:
    """A training objective (`algorithm.objective`)."""
    name: str
    summary: str
    build: Callable[[ObjectiveContext], Any]              # -> an Objective
    label: Callable[[ProcessSpec], str] = lambda process: process.name   # the method's short name
    owns: tuple[str, ...] = ()          # recipe sections or section.key settings only this objective reads
    data_source: str | None = None      # a data.source only this objective trains on
    check: Callable[[Recipe, ProcessSpec], list[str]] = no_problems


@dataclass
class _Registry:
    processes: dict[str, ProcessSpec] = field(default_factory=dict)
    objectives: dict[str, ObjectiveSpec] = field(default_factory=dict)
    discovered: bool = False


_REGISTRY = _Registry()


def _add(table: dict, spec, kind: str) -> None:
    if spec.name in table and table[spec.name] is not spec:
        raise ValueError(f"{kind} '{spec.name}' is registered twice")
    table[spec.name] = spec


def register_process(spec: ProcessSpec) -> ProcessSpec:
    _add(_REGISTRY.processes, spec, "algorithm")
    return spec


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    _add(_REGISTRY.objectives, spec, "objective")
    return spec


def _discover() -> None:
    """Import every module of this package once (each registers its algorithms)."""
    if _REGISTRY.discovered:
        return
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{__package__}.{module.name}")
    _REGISTRY.discovered = True


def processes() -> dict[str, ProcessSpec]:
    _discover()
    return dict(_REGISTRY.processes)


def objectives() -> dict[str, ObjectiveSpec]:
    _discover()
    return dict(_REGISTRY.objectives)


def process_spec(recipe: Recipe) -> ProcessSpec:
    """The registered process of a recipe (a RecipeError naming the nearest one if unknown)."""
    known = processes()
    if recipe.algorithm.name not in known:
        raise RecipeError("algorithm", [_unknown("algorithm.name", "algorithm", recipe.algorithm.name, list(known))])
    return known[recipe.algorithm.name]


def objective_spec(recipe: Recipe) -> ObjectiveSpec:
    """The registered objective of a recipe (a RecipeError naming the nearest one if unknown)."""
    known = objectives()
    if recipe.algorithm.objective not in known:
        raise RecipeError("algorithm", [_unknown("algorithm.objective", "objective", recipe.algorithm.objective,
                                                 list(known))])
    return known[recipe.algorithm.objective]


def method_label(recipe: Recipe) -> str:
    """The method's short name for tables: mdlm, imdm, sdtt, imsdtt, redi, imredi, ..."""
    return objective_spec(recipe).label(process_spec(recipe))


def _unknown(key: str, kind: str, value: str, known: Sequence[str]) -> str:
    match = difflib.get_close_matches(value, known, n=1, cutoff=0.4)
    hint = f"; did you mean '{match[0]}'?" if match else ""
    return f"{key}: {value!r} is not a registered {kind}{hint} (known: {', '.join(sorted(known))})"


def _setting(recipe: Recipe, key: str):
    """A section ('distill') or one setting ('algorithm.ignore_seed') of `recipe`."""
    section, _, name = key.partition(".")
    value = getattr(recipe, section)
    return getattr(value, name) if name else value


def _exclusive_source(objective: ObjectiveSpec) -> str:
    return (f"algorithm.objective: '{objective.name}' trains on a {objective.data_source} set and only it does: set "
            f"both algorithm.objective = '{objective.name}' and data.source = '{objective.data_source}', or neither")


def recipe_problems(recipe: Recipe) -> list[str]:
    """What the registered process and objective say is wrong with `recipe`."""
    procs, objs = processes(), objectives()
    a = recipe.algorithm
    problems = []
    if a.name not in procs:
        problems.append(_unknown("algorithm.name", "algorithm", a.name, list(procs)))
    if a.objective not in objs:
        problems.append(_unknown("algorithm.objective", "objective", a.objective, list(objs)))
    if problems:
        return problems
    proc, obj = procs[a.name], objs[a.objective]
    if obj.data_source and recipe.data.source != obj.data_source:
        problems.append(_exclusive_source(obj))
    for other in objs.values():
        if other is obj:
            continue
        problems += [f"{key}: {'this setting needs' if '.' in key else 'these settings need'} "
                     f"algorithm.objective = '{other.name}'"
                     for key in other.owns if _setting(recipe, key) != _setting(Recipe(), key)]
        if other.data_source and recipe.data.source == other.data_source:
            problems.append(_exclusive_source(other))
    return problems + proc.check(recipe) + obj.check(recipe, proc)


def load_recipe(path: str, overrides: Sequence[str] = (), world_size: int | None = None) -> Recipe:
    """Read, override and validate a recipe: its keys, types and values (imdm.recipe), then what
    its algorithm and objective require. Raises RecipeError listing every problem."""
    return load_recipe_schema(path, overrides, world_size, checks=(recipe_problems,))


def recipe_from_dict(table: dict, source: str = "<dict>", world_size: int | None = None) -> Recipe:
    """imdm.recipe.recipe_from_dict with the registry's checks (load_recipe for a parsed table)."""
    return recipe_from_dict_schema(table, source, world_size, checks=(recipe_problems,))


def _own_bound(ctx: ObjectiveContext):
    return ctx.process


register_objective(ObjectiveSpec("nelbo", "the process's own likelihood bound on the training data", _own_bound))
