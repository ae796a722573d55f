"""ReDi / IM-ReDi training: the student's mask states are exactly the eps the teacher started
from (or fresh ones with ignore_seed), the loss is the NELBO-weighted cross-entropy toward the
teacher's completion, and a synthetic couplings -> IM-ReDi run trains end to end."""

import json

import pytest
import torch

from imdm import rng
from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.algorithms.redi import Rectification
from imdm.build import data_origin
from imdm.couplings import complete, coupling_starts, generate_couplings
from imdm.data.local_text import DataSourceError
from imdm.data.synthetic import SyntheticRepeat
from imdm.diffusion.forward_process import mask_noise, mask_noise_rows
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.diffusion.subs import without_mask
from imdm.diffusion.times import sample_seeds
from imdm.eval.synthetic_eval import evaluate_synthetic
from imdm.models.dit import DiT, DiTConfig
from imdm.models.mask_state import MaskStateConfig
from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import recipe_from_dict
from imdm.recipe import RecipeError
from imdm.run_loading import load_run
from imdm.sampling.ancestral import SamplerSettings, generation_seeds
from imdm.train.trainer import Trainer

V, L, D, B = 12, 6, 8, 6
MASK = V


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread (and do not fight over shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(mask_states=True, randomise=False):
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=V + 1, mask_id=MASK, d_model=32, n_blocks=2, n_heads=2, dropout=0.0,
                    mask_state=MaskStateConfig(D) if mask_states else None)
    model = DiT(cfg)
    if randomise:   # zero-initialised layers (head, adaLN, mask-state output) would hide mistakes
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
    return model


def _recording(model):
    """Record the base noise every mask-state embedding call receives."""
    seen, inner = [], model.mask_state.forward
    model.mask_state.forward = lambda base: (seen.append(base.detach().clone()), inner(base))[1]
    return seen


def _couplings(model, steps=4):
    algorithm = MaskedDiffusion(LogLinearSchedule(), MASK, seed=5, mask_state=model.cfg.mask_state)
    seeds = generation_seeds(42, 0, B, rng.STREAM_COUPLING_SEED)
    clean = SyntheticRepeat(V, L, 100).rows(torch.arange(B))[0]
    t, z = coupling_starts(seeds, clean, algorithm.schedule, MASK, L, "perturbed")
    settings = SamplerSettings(steps=steps, posterior="imdm")
    return algorithm, settings, seeds, t, z, complete(algorithm, model, settings, seeds, z, t)


def test_imredi_eps_is_the_eps_the_teacher_used():
    model = _model()
    algorithm, settings, seeds, t, z, x0 = _couplings(model)
    seen = _recording(model)
    teacher_eps = []
    for i in range(B):   # the teacher's first call sees each coupling's starting mask states
        seen.clear()
        algorithm.sample(model, settings, seeds[i:i + 1], L, start=z[i:i + 1], t_start=float(t[i]))
        teacher_eps.append(seen[0][0])
    masked = z == MASK
    assert 0 < int(masked.sum()) < masked.numel()
    seen.clear()
    Rectification(algorithm).loss(model, x0, torch.arange(B), B, 0, valid=torch.ones_like(masked), z_t=z, t=t,
                                  coupling_seed=seeds)
    assert torch.equal(seen[0], torch.stack(teacher_eps)[masked])


def test_ignore_seed_draws_fresh_eps():
    model = _model()
    algorithm, _, seeds, t, z, x0 = _couplings(model)
    seen = _recording(model)
    redi, fresh = Rectification(algorithm), Rectification(algorithm, ignore_seed=True)
    rows = torch.nonzero(z == MASK, as_tuple=True)
    index = torch.arange(B)
    for step in (0, 1):
        fresh.loss(model, x0, index, B, step, z_t=z, t=t, coupling_seed=seeds)
    redi.loss(model, x0, index, B, 0, z_t=z, t=t, coupling_seed=seeds)
    step0, step1, seeded = seen
    assert not torch.equal(step0, seeded) and not torch.equal(step0, step1)
    expected = mask_noise_rows(sample_seeds(algorithm.seed, 1, index)[rows[0]], rows[1], D, "uniform")
    assert torch.equal(step1, expected)


@pytest.mark.parametrize("mask_states", [True, False])
def test_redi_loss_equals_the_direct_formula(mask_states):
    model = _model(mask_states, randomise=True)
    algorithm = MaskedDiffusion(LogLinearSchedule(), MASK, seed=5, mask_state=model.cfg.mask_state)
    seeds = generation_seeds(7, 0, 3, rng.STREAM_COUPLING_SEED)
    z = torch.tensor([[MASK, 3, MASK, MASK, 1, MASK], [2, 2, 2, 2, 2, 2], [MASK] * L])
    x0 = torch.tensor([[4, 3, 0, 9, 1, 11], [2, 2, 2, 2, 2, 2], [5, 6, 7, 8, 9, 10]])
    t = torch.tensor([0.3, 0.01, 1.0], dtype=torch.float64)
    valid = torch.ones_like(z, dtype=torch.bool)
    valid[0, 5] = False                                   # a masked padding position is never scored
    loss = Rectification(algorithm).loss(model, x0, torch.arange(3), 3, 0, valid=valid, z_t=z, t=t, coupling_seed=seeds)
    noise = mask_noise(seeds, L, D, "uniform") if mask_states else None
    log_p = torch.log_softmax(without_mask(model(z, noise), MASK).double(), dim=-1)
    nll = -log_p.gather(-1, x0[..., None])[..., 0]
    expected = (((z == MASK) & valid) * nll / t[:, None]).sum()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
def test_synthetic_couplings_to_imredi_end_to_end(tmp_path):
    base = {"run": {"output_dir": str(tmp_path)},
            "model": {"size": "custom", "d_model": 32, "n_blocks": 2, "n_heads": 2, "dropout": 0.0},
            "algorithm": {"noise_dim": D}, "data": {"vocab_size": V, "seq_len": L, "num_sequences": 200},
            "schedule": {"warmup_steps": 2}, "optimizer": {"lr": 3e-3},
            "train": {"global_batch": 16, "micro_batch": 8, "eval_batches": 1},
            "logging": {"every_steps": 1, "progress": False},
            "sampling": {"steps": [1, 8], "num_samples": 8, "batch": 8}}

    def recipe(name, **sections):
        return recipe_from_dict({**base, "run": {**base["run"], "name": name},
                                 **{k: {**base.get(k, {}), **v} for k, v in sections.items()}})

    dist = init_distributed("cpu")
    Trainer(recipe("teacher", train={"steps": 6}), dist).fit()
    generate_couplings(recipe("pairs", couplings={"teacher_run": "teacher", "num": 32, "chunk": 16, "steps": 8}), dist)
    student = recipe("student", init={"from_run": "teacher"}, algorithm={"objective": "redi"},
                     data={"source": "couplings", "couplings": "pairs"}, train={"steps": 12})
    other_eps = recipe("other", algorithm={"objective": "redi", "noise_kind": "randn"},
                       data={"source": "couplings", "couplings": "pairs"})
    with pytest.raises(DataSourceError, match="algorithm.noise_kind: the teacher 'teacher' drew its mask states"):
        Trainer(other_eps, dist)
    trainer = Trainer(student, dist)
    pairs, rows = trainer.dataset, torch.arange(32)
    x0, valid = pairs.rows(rows)

    @torch.no_grad()
    def coupling_loss(model):   # deterministic: the stored z_t, t and seeds fix every input
        return float(trainer.objective.loss(model, x0, rows, 32, 0, valid=valid, **pairs.extras(rows)))

    before = coupling_loss(load_run(tmp_path / "teacher", torch.device("cpu")).model)
    result = trainer.fit()
    assert coupling_loss(trainer.model) < 0.9 * before
    lines = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("initialised from run teacher" in m.get("event", "") for m in lines)
    assert sum("loss" in m for m in lines) == 12
    assert not any("val_nelbo" in k for m in lines for k in m)   # a coupling set has no validation split
    assert data_origin(student) == "synthetic"                # `imdm eval` reports validity and coverage
    run = load_run(result.run_dir, torch.device("cpu"))
    rows = evaluate_synthetic(run.recipe, run.model, run.process, torch.device("cpu"))
    assert [r["steps"] for r in rows] == [1, 8] and all(0 <= r["validity"] <= 1 for r in rows)


@pytest.mark.parametrize("table,needle", [
    ({"algorithm": {"objective": "redi"}}, "set both algorithm.objective = 'redi' and data.source = 'couplings'"),
    ({"data": {"source": "couplings", "couplings": "pairs"}}, "set both algorithm.objective = 'redi'"),
    ({"algorithm": {"objective": "redi"}, "data": {"source": "couplings"}},
     "data.couplings: a couplings source needs the run name"),
    ({"algorithm": {"objective": "redi", "name": "mdlm", "ignore_seed": True},
      "data": {"source": "couplings", "couplings": "pairs"}}, "algorithm.ignore_seed: only IM-ReDi"),
    ({"run": {"name": "pairs"}, "algorithm": {"objective": "redi"},
      "data": {"source": "couplings", "couplings": "pairs"}},
     "data.couplings: the student needs its own run.name"),
    ({"run": {"name": "t"}, "couplings": {"teacher_run": "t"}}, "couplings.teacher_run: the coupling set needs its own"),
    ({"couplings": {"start": "all-mask"}}, "did you mean 'all_mask'?"),
])
def test_redi_recipe_cross_checks(table, needle):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(table, "bad.toml")
    assert needle in str(info.value)
