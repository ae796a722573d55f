"""The README's recipe reference is the one the schema generates, and CI runs its test command."""

import os

from imdm.recipe.reference import markdown_reference


def test_readme_recipe_reference_is_current(repo_root):
    with open(os.path.join(repo_root, "README.md")) as f:
        readme = f.read()
    assert markdown_reference() in readme, "regenerate with: python -m imdm.recipe.reference"


def test_ci_runs_the_readme_test_command(repo_root):
    with open(os.path.join(repo_root, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(repo_root, ".ci", "run")) as f:
        ci = f.read()
    assert "python -m pytest -q" in readme and "\npython -m pytest -q\n" in ci
