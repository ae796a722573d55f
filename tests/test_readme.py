"""docs/recipes.md is what the schema and the registry generate, and CI runs the README's test
command."""

import os

from imdm.tools.recipe_reference import document


def _read(repo_root: str, *path: str) -> str:
    with open(os.path.join(repo_root, *path)) as f:
        return f.read()


def test_recipe_reference_is_current(repo_root):
    assert document() == _read(repo_root, "docs", "recipes.md"), "regenerate: python -m imdm.tools.recipe_reference"


def test_ci_runs_the_readme_test_command(repo_root):
    readme = _read(repo_root, "README.md")
    ci_lines = [line.strip() for line in _read(repo_root, ".ci", "run").splitlines()]
    assert "bash scripts/test.sh" in readme, "the README names the test command"
    assert "bash scripts/test.sh" in ci_lines, ".ci/run runs the README's test command"
