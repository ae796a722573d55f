"""The training loop: learning happens, resume is exact, interrupted saves are never resumed
from, a changed recipe is refused, checkpoints round-trip into sampling."""

import shutil
from pathlib import Path

import pytest
import torch

from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import recipe_from_dict
from imdm.recipe import RecipeError
from imdm.run_loading import load_run
from imdm.parallel import checkpoint as ckpt_mod
from imdm.parallel.checkpoint import CheckpointError, complete_checkpoints, latest_checkpoint
from imdm.train.trainer import Trainer


def _recipe(tmp_path, name="run", **train):
    table = {
        "run": {"output_dir": str(tmp_path), "name": name, "seed": 3},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 2, "n_heads": 2, "dropout": 0.1},
        "algorithm": {"name": "imdm", "noise_dim": 8},
        "data": {"vocab_size": 16, "seq_len": 6, "num_sequences": 500},
        "schedule": {"warmup_steps": 2},
        "train": {"steps": 6, "global_batch": 8, "micro_batch": 4, "eval_batches": 1, **train},
        "checkpoint": {"keep_last": 5},
        "logging": {"every_steps": 1, "progress": False},
        "sampling": {"steps": [1, 4], "num_samples": 8, "batch": 8},
    }
    return recipe_from_dict(table)


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _losses(run_dir):
    import json
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["loss"] for x in lines if '"loss"' in x]


def test_resume_is_bit_exact(tmp_path):
    dist = init_distributed("cpu")
    straight = Trainer(_recipe(tmp_path, "straight"), dist)
    straight.fit()
    split_recipe = _recipe(tmp_path, "split", steps=3)
    Trainer(split_recipe, dist).fit()
    resumed = Trainer(_recipe(tmp_path, "split", steps=6), dist)
    resumed.fit()
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in a)


def test_interrupted_save_is_never_resumed(tmp_path, monkeypatch):
    dist = init_distributed("cpu")
    Trainer(_recipe(tmp_path, "crash", steps=2, ), dist).fit()
    folder = tmp_path / "crash" / "checkpoints"
    assert [p.name for p in complete_checkpoints(folder)] == ["step_00000002"]

    real_save = ckpt_mod.dcp.save

    def dying_save(state, checkpoint_id):
        real_save(state, checkpoint_id=checkpoint_id)
        raise KeyboardInterrupt("killed after the tensors were written")

    monkeypatch.setattr(ckpt_mod.dcp, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_recipe(tmp_path, "crash", steps=4), dist).fit()
    monkeypatch.undo()
    assert latest_checkpoint(folder).name == "step_00000002"
    assert (folder / ".partial-step_00000004").exists()
    (folder / "step_00000009").mkdir()            # a folder with no meta is not complete either
    resumed = Trainer(_recipe(tmp_path, "crash", steps=4), dist)
    resumed.fit()
    assert resumed.step == 4 and latest_checkpoint(folder).name == "step_00000004"
    assert not (folder / ".partial-step_00000004").exists()


def test_changed_recipe_is_refused_on_resume(tmp_path):
    dist = init_distributed("cpu")
    Trainer(_recipe(tmp_path, "r", steps=2), dist).fit()
    changed = _recipe(tmp_path, "r", steps=4)
    changed.optimizer.lr = 1e-2
    with pytest.raises(RecipeError, match="optimizer.lr: differs from the run directory's recipe"):
        Trainer(changed, dist).fit()


def test_training_learns_and_checkpoint_loads_for_sampling(tmp_path):
    dist = init_distributed("cpu")
    recipe = _recipe(tmp_path, "learn", steps=60, global_batch=32, micro_batch=32)
    recipe.optimizer.lr = 3e-3
    result = Trainer(recipe, dist).fit()
    losses = _losses(result.run_dir)
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:5]) / 5
    run = load_run(result.run_dir, torch.device("cpu"))
    assert run.step == 60 and not run.model.training
    from imdm.build import sampler_settings
    from imdm.data.synthetic import synthetic_metrics
    many = run.process.sample(run.model, sampler_settings(run.recipe, 64), torch.arange(256), 6)
    one = run.process.sample(run.model, sampler_settings(run.recipe, 1), torch.arange(256), 6)
    assert many.tokens.shape == (256, 6) and int(many.tokens.max()) < 16
    many_m, one_m = synthetic_metrics(many.tokens, 16), synthetic_metrics(one.tokens, 16)
    assert many_m["validity"] > 0.6 and many_m["coverage"] == 16      # many steps: valid, every token used
    assert one_m["validity"] < 0.02                                   # one factorised step: ~16^-5


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    dist = init_distributed("cpu")
    result = Trainer(_recipe(tmp_path, "corrupt", steps=1), dist).fit()
    ckpt = latest_checkpoint(result.run_dir / "checkpoints")
    for f in ckpt.glob("*.distcp"):
        f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_run(result.run_dir, torch.device("cpu"))
    shutil.rmtree(result.run_dir / "checkpoints")
    with pytest.raises(CheckpointError, match="has no complete checkpoint"):
        load_run(result.run_dir, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path / "nothing", torch.device("cpu"))


def test_seed_checkpoint_changes_nothing(tmp_path):
    dist = init_distributed("cpu")
    plain = Trainer(_recipe(tmp_path, "plain", steps=3), dist)
    plain.fit()
    seeded_recipe = _recipe(tmp_path, "seeded", steps=3)
    seeded_recipe.checkpoint.seed_checkpoint = True
    seeded = Trainer(seeded_recipe, dist)
    seeded.fit()
    a, b = _params(plain), _params(seeded)
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = Trainer(_recipe(tmp_path, "from-seed", steps=3), dist)   # start from another run's step 0
    (tmp_path / "from-seed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "seeded" / "checkpoints" / "step_00000000",
                    tmp_path / "from-seed" / "checkpoints" / "step_00000000")
    resumed.fit()
    c = _params(resumed)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_resume_with_other_loader_workers(tmp_path):
    dist = init_distributed("cpu")
    straight = Trainer(_recipe(tmp_path, "straight", steps=4), dist)
    straight.fit()
    Trainer(_recipe(tmp_path, "workers", steps=2), dist).fit()
    more = _recipe(tmp_path, "workers", steps=4)
    more.data.num_workers = 2
    resumed = Trainer(more, dist)
    resumed.fit()
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_written_before_a_new_key_existed_still_resumes():
    from imdm.recipe import Recipe
    from imdm.recipe.writer import recipe_to_toml
    from imdm.train.run_dir import recipe_changes
    text = recipe_to_toml(Recipe())
    old = "\n".join(line for line in text.splitlines() if not line.startswith("from_run"))
    assert "from_run" in text and "from_run" not in old
    assert recipe_changes(old, text) == []
    assert recipe_changes(old, text.replace('from_run = ""', 'from_run = "other"')) == ["init.from_run"]
