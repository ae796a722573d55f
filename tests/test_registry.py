"""The algorithm registry: a new algorithm, defined in this file alone, trains, checkpoints,
resumes exactly and samples through the registry; recipes are checked against it."""

import json

import pytest
import torch

from imdm import rng
from imdm.algorithms import registry
from imdm.algorithms.protocol import Objective
from imdm.cli import main as cli_main
from imdm.diffusion.categorical import categorical_from_uniform
from imdm.diffusion.subs import without_mask
from imdm.models.dit import count_parameters
from imdm.parallel.distributed import init_distributed
from imdm.recipe import RecipeError
from imdm.run_loading import load_run
from imdm.sampling.ancestral import SampleResult
from imdm.train.trainer import Trainer

TOY_STREAM = 1 << 30


class ToyUnigram(Objective):
    """A toy process: the network sees an all-mask sequence and predicts each position's token
    (a per-position unigram model); it samples in one seeded draw."""

    def __init__(self, mask_id: int, seed: int):
        self.mask_id, self.seed = mask_id, seed

    def _log_probs(self, model, batch: int, seq_len: int, device) -> torch.Tensor:
        z = torch.full((batch, seq_len), self.mask_id, dtype=torch.int64, device=device)
        return torch.log_softmax(without_mask(model(z).float(), self.mask_id), dim=-1)

    def loss(self, model, x0, global_index, global_batch, step, seed=None, valid=None, **extras):
        nll = -self._log_probs(model, *x0.shape, x0.device).gather(-1, x0[..., None]).squeeze(-1)
        return nll.sum() if valid is None else (nll * valid.to(nll.device)).sum()

    @torch.no_grad()
    def sample(self, model, settings, seeds, seq_len, prefix=None, start=None, t_start=1.0, noise_seeds=None):
        probs = self._log_probs(model, len(seeds), seq_len, seeds.device).exp().double()
        positions = torch.arange(seq_len, device=seeds.device).expand(len(seeds), -1)
        u = rng.uniform53(seeds[:, None].expand(-1, seq_len), positions, TOY_STREAM)
        tokens = categorical_from_uniform(probs.reshape(-1, probs.shape[-1]), u.reshape(-1))
        return SampleResult(tokens.view(len(seeds), seq_len), 1)


TOY = registry.ProcessSpec("toy", "a per-position unigram model (tests only)",
                           build=lambda ctx: ToyUnigram(ctx.mask_id, ctx.recipe.run.seed),
                           sampler_settings=lambda recipe, steps: steps)


@pytest.fixture
def toy():
    registry.register_process(TOY)
    yield TOY
    del registry._REGISTRY.processes["toy"]


def _recipe(tmp_path, run_name, steps, **algorithm):
    return registry.recipe_from_dict({
        "run": {"output_dir": str(tmp_path), "name": run_name, "seed": 4},
        "model": {"size": "custom", "d_model": 16, "n_blocks": 1, "n_heads": 2, "dropout": 0.1},
        "algorithm": {"name": "toy", **algorithm},
        "data": {"vocab_size": 8, "seq_len": 5, "num_sequences": 64},
        "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 1},
        "train": {"steps": steps, "global_batch": 8, "micro_batch": 4, "eval_batches": 1},
        "checkpoint": {"keep_last": 3},
        "logging": {"every_steps": 1, "progress": False},
        "sampling": {"steps": [1], "num_samples": 8, "batch": 8},
    })


def test_a_toy_algorithm_trains_resumes_and_samples(toy, tmp_path, capsys):
    dist = init_distributed("cpu")
    straight = Trainer(_recipe(tmp_path, "straight", 6), dist)
    first = straight.validation_nelbo(straight.model)
    straight.fit()
    assert straight.validation_nelbo(straight.model) < first   # it learns
    Trainer(_recipe(tmp_path, "split", 3), dist).fit()
    resumed = Trainer(_recipe(tmp_path, "split", 6), dist)
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    first_line = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[0])
    assert first_line["event"] == f"model of {count_parameters(straight.model):,} parameters"
    run = load_run(tmp_path / "straight", torch.device("cpu"))
    assert isinstance(run.process, ToyUnigram) and run.model.mask_state is None
    assert cli_main(["sample", str(tmp_path / "straight"), "--num-samples", "4", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    again = run.process.sample(run.model, 1, torch.tensor([int(s) for s in _seeds(4)]), 5).tokens
    assert out["samples"] == again.tolist() and out["nfe"] == 1
    assert cli_main(["eval", str(tmp_path / "straight")]) == 0
    rows = json.loads((tmp_path / "straight" / "eval.json").read_text())["rows"]
    assert [r["steps"] for r in rows] == [1] and rows[0]["method"] == "toy" and 0 <= rows[0]["validity"] <= 1


def _seeds(n):
    from imdm.sampling.ancestral import generation_seeds
    return generation_seeds(42, 0, n, rng.STREAM_EVAL_SEED)


def test_recipes_are_checked_against_the_registry(toy):
    with pytest.raises(RecipeError, match="algorithm.name: 'toys' is not a registered algorithm; did you mean 'toy'"):
        _recipe("runs", "r", 2, name="toys")
    with pytest.raises(RecipeError, match="algorithm.objective: 'sdtt' distils masked diffusion"):
        _recipe("runs", "r", 2, objective="sdtt")
    assert registry.method_label(_recipe("runs", "r", 2)) == "toy"


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_process(registry.ProcessSpec("imdm", "another imdm", build=None, sampler_settings=None))
