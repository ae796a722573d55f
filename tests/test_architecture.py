"""The layers of docs/architecture.md point one way: a module imports only from its own layer or
the layers below it (function-level imports included), so kernels never import models, the
model never imports process-group helpers and nothing below the training loop imports it."""

import ast
from pathlib import Path

import pytest

# lowest first; a package's modules belong to its layer (the longest matching prefix wins)
LAYERS = [
    ("imdm.rng", "imdm.devices", "imdm.recipe"),
    ("imdm.diffusion",),
    ("imdm.kernels",),
    ("imdm.models", "imdm.sampling"),
    ("imdm.parallel",),
    ("imdm.data",),
    ("imdm.algorithms",),
    ("imdm.build", "imdm.eval", "imdm.run_loading", "imdm.couplings"),
    ("imdm.train",),
    ("imdm.pipeline", "imdm.quickstart", "imdm.cli", "imdm.cli_help", "imdm.sample_command", "imdm.sample_output",
     "imdm.__main__", "imdm.tools"),
]
SOURCE_ROOTS = {"imdm": "imdm", "kernels": "imdm.kernels", "parallel": "imdm.parallel", "tools": "imdm.tools"}


def layer_of(module: str) -> int | None:
    """The layer index of a dotted module name (None: not a layered imdm module)."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def imported_modules(tree: ast.AST) -> set[str]:
    """Absolute imdm modules a source file imports, anywhere in it ('from imdm import rng' -> imdm.rng)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("imdm.")}


def source_modules(repo_root: Path):
    for folder, package in SOURCE_ROOTS.items():
        for path in sorted((repo_root / folder).rglob("*.py")):
            parts = path.relative_to(repo_root / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield ".".join((package, *parts)), path


def violations(modules) -> list[str]:
    """'source -> target' for every import from a higher layer; `modules` yields (name, source text)."""
    bad = []
    for name, text in modules:
        own = layer_of(name)
        if own is None:
            continue
        for target in imported_modules(ast.parse(text)):
            layer = layer_of(target)
            if layer is not None and layer > own:
                bad.append(f"{name} -> {target}")
    return bad


def test_every_source_module_has_a_layer(repo_root):
    unplaced = [name for name, _ in source_modules(Path(repo_root)) if name != "imdm" and layer_of(name) is None]
    assert not unplaced, f"add these to LAYERS (and docs/architecture.md): {unplaced}"


def test_imports_point_down(repo_root):
    modules = ((name, path.read_text()) for name, path in source_modules(Path(repo_root)))
    assert violations(modules) == []


@pytest.mark.parametrize("name,text", [
    ("imdm.kernels.masked_loss", "from imdm.models.gemm_grad_linear import accumulate_weight_grad"),
    ("imdm.models.dit", "def f():\n    from imdm.parallel.distributed import barrier"),
    ("imdm.couplings", "from imdm.train import trainer"),
    ("imdm.algorithms.sdtt", "import imdm.train.ema"),
])
def test_upward_imports_are_caught(name, text):
    assert violations([(name, text)]) != []
