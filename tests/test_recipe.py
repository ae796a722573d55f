"""Strict recipes: every shipped recipe validates; bad keys, types and values fail early with
the file, the key and the nearest valid key; overrides; the resolved recipe round-trips."""

import glob
import os
import subprocess
import sys

import pytest

from imdm.algorithms.registry import load_recipe, recipe_from_dict
from imdm.recipe import RecipeError
from imdm.recipe.loader import tomllib
from imdm.recipe.writer import recipe_to_toml


def _recipes(repo_root):
    paths = sorted(glob.glob(os.path.join(repo_root, "recipes", "*.toml")))
    assert paths, "no recipes found"
    return paths


def test_every_shipped_recipe_validates(repo_root):
    for path in _recipes(repo_root):
        recipe = load_recipe(path)
        assert recipe_from_dict(tomllib.loads(recipe_to_toml(recipe))).model.dims() == recipe.model.dims()
    assert load_recipe("builtin:quickstart") == load_recipe(os.path.join(repo_root, "recipes", "quickstart.toml"))


def _problems(table, world_size=None):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(table, "bad.toml", world_size)
    text = str(info.value)
    assert all(line.startswith("bad.toml: ") for line in text.splitlines())
    return text


@pytest.mark.parametrize("table,needle", [
    ({"trian": {"steps": 3}}, "[trian]: unknown section; did you mean 'train'?"),
    ({"model": {"d_modle": 3}}, "model.d_modle: unknown key; did you mean 'model.d_model'?"),
    ({"optimizer": {"learning_rate": 1e-3}}, "did you mean 'optimizer.lr'?"),
    ({"optimizer": {"lr": -1.0}}, "optimizer.lr: must be > 0.0, got -1.0"),
    ({"algorithm": {"noise_dim": 0}}, "algorithm.noise_dim: must be > 0, got 0"),
    ({"train": {"steps": 0}}, "train.steps: must be > 0, got 0"),
    ({"train": {"steps": 1.5}}, "train.steps: expected an integer, got 1.5"),
    ({"train": {"steps": True}}, "train.steps: expected an integer, got True"),
    ({"model": {"dropout": "high"}}, "model.dropout: expected a number, got 'high'"),
    ({"algorithm": {"name": "imdn"}}, "algorithm.name: 'imdn' is not a registered algorithm; did you mean 'imdm'?"),
    ({"algorithm": {"objective": "sdt"}}, "algorithm.objective: 'sdt' is not a registered objective; did you mean 'sdtt'?"),
    ({"sampling": {"steps": [1, 0]}}, "sampling.steps: every entry must be an integer >= 1"),
    ({"sampling": {"steps": [1, "x"]}}, "sampling.steps: expected a list of an integer"),
    ({"train": {"global_batch": 100, "micro_batch": 16}}, "train.global_batch: 100 is not divisible"),
    ({"model": {"softcap": 50.0}}, "model.softcap: soft-capping needs"),
    ({"model": {"size": "custom"}}, "model.size: 'custom' needs"),
    ({"model": "small"}, "model: expected a [model] table"),
])
def test_bad_recipes_name_the_key(table, needle):
    assert needle in _problems(table)


def test_all_problems_reported_at_once():
    text = _problems({"model": {"d_modle": 3}, "optimizer": {"lr": 0.0}})
    assert "model.d_modle" in text and "optimizer.lr" in text


def test_data_parallel_layout_checked_against_world_size():
    table = {"train": {"global_batch": 64, "micro_batch": 16}}
    recipe_from_dict(table, world_size=4)
    assert "data-parallel size (8)" in _problems(table, world_size=8)
    assert "launcher started 2 ranks" in _problems({**table, "parallelism": {"data_parallel": 4}}, world_size=2)
    assert "each rank's share is 8 per step, which train.micro_batch=8 divides" in _problems(table, world_size=8)
    wide = {"train": {"global_batch": 96, "micro_batch": 16}}
    assert "each rank's share is 12 per step, which train.micro_batch=12 divides" in _problems(wide, world_size=8)
    assert "must be a multiple of the data-parallel size" in _problems(wide, world_size=5)


def test_overrides(tmp_path, repo_root):
    path = os.path.join(repo_root, "recipes", "quickstart.toml")
    recipe = load_recipe(path, ["optimizer.lr=1e-4", "sampling.steps=[1, 8]", "run.name=other", "model.qk_norm=true"])
    assert recipe.optimizer.lr == 1e-4 and recipe.sampling.steps == [1, 8]
    assert recipe.run.name == "other" and recipe.model.qk_norm is True
    with pytest.raises(RecipeError, match="optimizer.lrr: unknown key; did you mean 'optimizer.lr'"):
        load_recipe(path, ["optimizer.lrr=1"])
    with pytest.raises(RecipeError, match="must look like section.key=value"):
        load_recipe(path, ["optimizer.lr"])


def test_missing_file_and_broken_toml(tmp_path):
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(str(tmp_path / "nope.toml"))
    bad = tmp_path / "broken.toml"
    bad.write_text("[train\nsteps = 3")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="no packaged recipe 'quickstrat'; did you mean 'quickstart'"):
        load_recipe("builtin:quickstrat")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "imdm", *args], capture_output=True, text=True, cwd=cwd)


def test_check_command_errors_cleanly(tmp_path, repo_root):
    good = _cli("check", os.path.join(repo_root, "recipes", "synthetic.toml"))
    assert good.returncode == 0 and "ok (imdm, model synthetic d=128 blocks=4 heads=4" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[optimizer]\nlr = -3e-4\n[model]\nd_modle = 64\n[algorithm]\nname = 'imdn'\n")
    result = _cli("check", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{bad}: optimizer.lr: must be > 0.0" in result.stderr
    assert "did you mean 'model.d_model'" in result.stderr
    bad.write_text("[algorithm]\nname = 'imdn'\n")   # the registry's rules, once the schema's pass
    result = _cli("check", str(bad))
    assert result.returncode == 2 and "algorithm.name: 'imdn' is not a registered algorithm" in result.stderr


def test_check_describes_a_coupling_recipe_as_generation():
    result = _cli("check", "builtin:synthetic_couplings", "couplings.num=512")
    assert result.returncode == 0, result.stderr
    assert "ok (imdm couplings: 512 perturbed couplings of synthetic data, completed by run 'synthetic-imsdtt'" \
        in result.stdout
