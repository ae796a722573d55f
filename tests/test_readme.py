"""docs/recipes.md holds the recipe reference the schema generates, and CI runs the README's test
command."""

import os

from imdm.recipe.reference import markdown_reference

REGENERATE = ("regenerate with: { head -4 docs/recipes.md; python -m imdm.recipe.reference; } > /tmp/recipes.md "
              "&& mv /tmp/recipes.md docs/recipes.md")


def _read(repo_root: str, *path: str) -> str:
    with open(os.path.join(repo_root, *path)) as f:
        return f.read()


def test_recipe_reference_is_current(repo_root):
    assert markdown_reference() in _read(repo_root, "docs", "recipes.md"), REGENERATE


def test_ci_runs_the_readme_test_command(repo_root):
    readme = _read(repo_root, "README.md")
    ci_lines = [line.strip() for line in _read(repo_root, ".ci", "run").splitlines()]
    assert "bash scripts/test.sh" in readme, "the README names the test command"
    assert "bash scripts/test.sh" in ci_lines, ".ci/run runs the README's test command"
