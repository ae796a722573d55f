"""SDTT and IM-SDTT: the teacher's two-step targets by hand, one eps for teacher and student,
rounds (dt doubling, teacher refreshed from the student), divergences against their formulas,
exact resume mid-round, initialisation from a run by name, short end-to-end runs (finite
masks and the MDLM baseline included)."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from imdm import rng
from imdm.algorithms.divergences import divergence
from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.algorithms.sdtt import Distillation, Rounds
from imdm.algorithms.teacher_rollout import first_step_weights, teacher_targets
from imdm.build import build_model, sampler_settings
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.diffusion.times import T_MIN
from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import load_recipe, method_label, recipe_from_dict
from imdm.recipe import RecipeError
from imdm.recipe.schema import DIVERGENCES
from imdm.run_loading import load_run
from imdm.parallel.checkpoint import CheckpointError, load_checkpoint
from imdm.parallel.ema import named_parameters
from imdm.train.init_from_run import load_ema_weights
from imdm.train.trainer import Trainer

V, L = 16, 6          # real tokens and sequence length of the tiny runs (mask id 16)
SMALL_ROUNDS = {"round_steps": 2, "rounds": 3, "teacher_steps": 8}


def _table(tmp_path, name, algo="imdm", steps=6, **sections):
    table = {
        "run": {"output_dir": str(tmp_path), "name": name, "seed": 3},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 2, "n_heads": 2, "dropout": 0.1},
        "algorithm": {"name": algo, "noise_dim": 8},
        "data": {"vocab_size": V, "seq_len": L, "num_sequences": 500},
        "schedule": {"warmup_steps": 2},
        "train": {"steps": steps, "global_batch": 8, "micro_batch": 4, "eval_batches": 1},
        "checkpoint": {"keep_last": 10},
        "logging": {"every_steps": 1, "progress": False},
        "sampling": {"steps": [1, 4], "num_samples": 8, "batch": 8},
    }
    for key, body in sections.items():
        table.setdefault(key, {}).update(body)
    return table


def _distill_recipe(tmp_path, name, source, algo="imdm", steps=6, **sections):
    base = {"algorithm": {"objective": "sdtt"}, "init": {"from_run": source}, "distill": SMALL_ROUNDS}
    merged = {key: {**base.get(key, {}), **sections.get(key, {})} for key in base.keys() | sections.keys()}
    return recipe_from_dict(_table(tmp_path, name, algo, steps, **merged))


def _tiny_model(algo="imdm", num_masks=0, perturb=0.0, **model):
    """A tiny DiT; `perturb` adds seeded noise to every weight (the zero-initialised head and
    mask-state layer would otherwise make every prediction uniform and eps irrelevant)."""
    recipe = recipe_from_dict(_table("unused", "m", algo, algorithm={"num_masks": num_masks}, model=model))
    model = build_model(recipe, V + 1, V)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g))
    return model


def _losses(run_dir) -> dict:
    """The last logged loss of each step (a restarted run logs some steps twice)."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in named_parameters(model).items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two finished runs to start from: a short MDLM run and an IMDM run that has learned."""
    out = tmp_path_factory.mktemp("sources")
    dist = init_distributed("cpu")
    Trainer(recipe_from_dict(_table(out, "src-mdlm", "mdlm", steps=4)), dist).fit()
    learned = _table(out, "src-imdm", "imdm", steps=60, train={"global_batch": 32, "micro_batch": 32},
                     optimizer={"lr": 3e-3})
    Trainer(recipe_from_dict(learned), dist).fit()
    return out


# -- the teacher's targets -------------------------------------------------------------------

def _fake_teacher(rows, calls):
    """Puts (almost) all mass on token = position at its first call and on 2 - position at its
    second; gives the mask a large logit that SUBS must ignore."""
    def denoise(z_k, t_k):
        calls.append((z_k.clone(), t_k.clone()))
        favourite = rows[1] if len(calls) == 1 else 2 - rows[1]
        logits = torch.full((len(rows[0]), 5), -40.0)
        logits[torch.arange(len(rows[0])), favourite] = 0.0
        logits[:, 4] = 50.0
        return logits
    return denoise


def test_teacher_targets_by_hand():
    """V 4 (mask id 4), L 3. Sample 0 at t = 1 with dt = 1 unmasks with probability 0.999 (its
    draws are below that, checked); sample 1 at t = T_MIN cannot unmask (t - dt clamps to T_MIN);
    a sample at t = 1/2 with dt = 1/4 unmasks with probability exactly 1/2. A position takes the
    first call's prediction iff the first step unmasked it, else the second call's."""
    m, schedule = 4, LogLinearSchedule(1e-3)
    z = torch.tensor([[m, m, 2], [m, 1, m]])
    rows = torch.nonzero(z == m, as_tuple=True)          # (0,0) (0,1) (1,0) (1,2)
    seeds = torch.tensor([101, 202])
    t = torch.tensor([1.0, T_MIN], dtype=torch.float64)
    unmask, stay = first_step_weights(schedule, t, 1.0, "mdlm")
    assert unmask.tolist() == pytest.approx([0.998001 / 0.999, 0.0], abs=1e-12)
    assert stay.tolist() == pytest.approx([0.000999 / 0.999, 1.0], abs=1e-12)
    assert bool((rng.uniform53(seeds[rows[0][:2]], rows[1][:2], rng.STREAM_TEACHER) < 0.998).all())
    calls = []
    out = teacher_targets(_fake_teacher(rows, calls), z, rows, seeds, t, 1.0, schedule, m)
    assert out.first_step.tolist() == [True, True, False, False]
    assert calls[0][0].tolist() == z.tolist() and calls[0][1].tolist() == [1.0, T_MIN]
    assert calls[1][0].tolist() == [[0, 1, 2], [m, 1, m]] and calls[1][1].tolist() == [T_MIN, T_MIN]
    assert out.logits[:, :4].argmax(-1).tolist() == [0, 1, 2, 0]

    z, seeds, t = torch.tensor([[m, m, m]]), torch.tensor([303]), torch.tensor([0.5], dtype=torch.float64)
    rows = torch.nonzero(z == m, as_tuple=True)
    assert [w.item() for w in first_step_weights(schedule, t, 0.25, "imdm")] == pytest.approx([0.5, 0.5], abs=1e-12)
    calls = []
    out = teacher_targets(_fake_teacher(rows, calls), z, rows, seeds, t, 0.25, schedule, m)
    first = rng.uniform53(seeds[rows[0]], rows[1], rng.STREAM_TEACHER) < 0.5
    assert out.first_step.tolist() == first.tolist() and calls[1][1].tolist() == [0.25]
    assert calls[1][0][0].tolist() == torch.where(first, torch.arange(3), m).tolist()
    assert out.logits[:, :4].argmax(-1).tolist() == torch.where(first, torch.arange(3), 2 - torch.arange(3)).tolist()


def test_teacher_padding_rows_never_enter_the_second_call():
    """Rows padded to a bucket repeat the first row; were a repeat to draw another token (the
    fake teacher makes it), that draw must not reach z for the second call."""
    m, schedule = 4, LogLinearSchedule(1e-3)
    z = torch.tensor([[m, m, 2]])
    rows = tuple(torch.cat([r, r[:1]]) for r in torch.nonzero(z == m, as_tuple=True))   # (0,0) (0,1) (0,0)
    calls = []

    def denoise(z_k, t_k):
        calls.append(z_k.clone())
        logits = torch.full((3, 5), -40.0)
        logits[torch.arange(3), torch.tensor([0, 1, 3])] = 0.0
        return logits

    out = teacher_targets(denoise, z, rows, torch.tensor([101]), torch.tensor([1.0], dtype=torch.float64), 1.0,
                          schedule, m, n_real=2)
    assert out.first_step.tolist() == [True, True, True]
    assert calls[1].tolist() == [[0, 1, 2]]


def _distillation(student, rounds=Rounds(2, 8), kind="kl_bwd"):
    base = MaskedDiffusion(LogLinearSchedule(1e-3), V, seed=5, mask_state=student.cfg.mask_state)
    return Distillation(base, copy.deepcopy(student), rounds, kind)


@pytest.mark.parametrize("algo", ["imdm", "mdlm"])
def test_row_buckets_leave_the_sdtt_loss_and_gradients_unchanged(algo):
    """Row lists padded to buckets (as on CUDA) give the same loss and student gradients:
    padding rows are neither scored nor drawn into the teacher's second step."""
    student = _tiny_model(algo, perturb=0.2, dropout=0.0)
    teacher = copy.deepcopy(student)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # a teacher that disagrees with the student on every row
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    x0, index = torch.randint(0, V, (8, L)), torch.arange(8)
    valid = torch.ones(8, L, dtype=torch.bool)
    valid[2, 3:] = valid[5, 1:] = False
    results = []
    for bucket in (1, 16, 7):
        base = MaskedDiffusion(LogLinearSchedule(1e-3), V, seed=5, mask_state=student.cfg.mask_state, row_bucket=bucket)
        distill = Distillation(base, copy.deepcopy(teacher), Rounds(2, 4))
        student.zero_grad()
        loss = distill.loss(student, x0, index, 8, step=1, valid=valid)
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in student.parameters() if p.grad is not None])
    _, _, masked = base.draws(5, 1, index, 8, L)
    assert int((masked & valid).sum()) % 16 and int(masked.sum()) % 7   # both buckets pad
    assert results[0][0] > 0
    for other in results[1:]:
        assert len(other) == len(results[0])
        for a, b in zip(other, results[0]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sdtt_tells_the_teacher_how_many_rows_are_real(monkeypatch):
    """With bucketed row lists the teacher's second step must leave the padding rows' draws out
    of z: SDTT passes the real masked-row count (n_real) along with the padded rows."""
    from imdm.algorithms import sdtt
    seen = []

    def recording(*args, **kwargs):
        seen.append((args[2][0].shape[0], args[9] if len(args) > 9 else kwargs.get("n_real")))
        return teacher_targets(*args, **kwargs)

    monkeypatch.setattr(sdtt, "teacher_targets", recording)
    student = _tiny_model("imdm", perturb=0.2, dropout=0.0)
    base = MaskedDiffusion(LogLinearSchedule(1e-3), V, seed=5, mask_state=student.cfg.mask_state, row_bucket=16)
    x0, index = torch.randint(0, V, (8, L)), torch.arange(8)
    Distillation(base, copy.deepcopy(student), Rounds(2, 4)).loss(student, x0, index, 8, step=1)
    n_masked = int(base.draws(5, 1, index, 8, L)[2].sum())
    assert seen == [(-(-n_masked // 16) * 16, n_masked)] and n_masked % 16


@pytest.mark.parametrize("num_masks", [0, 3])
def test_student_and_teacher_see_one_eps(num_masks):
    """Both teacher calls and the student's one pass get the same mask states at the positions
    masked in z_t (continuous eps, or the integer state of K finite masks); only the student
    gets gradients."""
    student = _tiny_model("imdm", num_masks, perturb=0.3)
    distill = _distillation(student, Rounds(2, 2))
    distill.begin_step(0, student)
    seen = {"student": [], "teacher": []}
    for name, model in (("student", student), ("teacher", distill.teacher)):
        model.mask_state.register_forward_hook(
            lambda mod, args, out, name=name: seen[name].append(mod.eps(args[0]).detach()))
    x0 = torch.randint(0, V, (8, L))
    index = torch.arange(8)
    loss = distill.loss(student, x0, index, 8, step=0)
    _, _, masked = distill.base.draws(5, 0, index, 8, L)
    assert len(seen["teacher"]) == 2 and len(seen["student"]) == 1
    assert torch.equal(seen["teacher"][0], seen["teacher"][1])
    assert torch.equal(seen["teacher"][0][masked], seen["student"][0])
    if num_masks:
        assert seen["student"][0].dtype == torch.int64 and int(seen["student"][0].max()) < num_masks
    assert distill.loss_count(index, 8, 0, torch.ones(8, L, dtype=torch.bool)) == int(masked.sum()) > 0
    loss.backward()
    assert all(p.grad is None for p in distill.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_rounds_double_dt_and_refresh_the_teacher_at_round_starts_only():
    rounds = Rounds(round_steps=3, teacher_steps=8)
    dt0 = (1 - T_MIN) / 8
    assert [rounds.dt(s) / dt0 for s in range(9)] == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    student = _tiny_model()
    distill = _distillation(student, rounds)
    with torch.no_grad():
        for p in distill.teacher.parameters():
            p.add_(1.0)
    copied = None
    for step in range(9):
        refreshed = distill.begin_step(step, student)
        assert refreshed == (step in (0, 3, 6)) and not distill.begin_step(step, student)
        if refreshed:
            copied = _params(student)
        assert _same(_params(distill.teacher), copied) and distill.teacher_step == 3 * (step // 3)
        with torch.no_grad():                      # an optimizer step
            for p in student.parameters():
                p.add_(0.01 * (step + 1))
    assert not _same(_params(distill.teacher), _params(student))


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_divergences_match_their_formulas(kind):
    g = torch.Generator().manual_seed(0)
    mask_id, real = 2, [0, 1, 3, 4, 5]
    student = torch.randn(5, 6, generator=g, requires_grad=True)
    teacher = torch.randn(5, 6, generator=g, requires_grad=True)
    got = divergence(student, teacher, mask_id, kind)
    ls, lt = (torch.log_softmax(x.detach()[:, real].double(), -1) for x in (student, teacher))
    ps, pt = ls.exp(), lt.exp()
    want = {"kl_bwd": (ps * (ls - lt)).sum(-1), "kl_fwd": (pt * (lt - ls)).sum(-1),
            "mse": ((ls - lt) ** 2).sum(-1), "tvd": 0.5 * (ps - pt).abs().sum(-1)}[kind]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert bool((got > 0).all())
    got.sum().backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0 and bool((student.grad[:, mask_id] == 0).all())
    same = teacher.detach().clone().requires_grad_(True)
    zero = divergence(same, teacher.detach(), mask_id, kind)
    zero.sum().backward()
    assert float(zero.detach().abs().max()) < 1e-6 and float(same.grad.abs().max()) < 1e-6


# -- runs ---------------------------------------------------------------------------------------

def _teacher_state(trainer):
    return _params(trainer.objective.teacher)


def _with_sources(sources, tmp_path, *names):
    for name in names:
        shutil.copytree(sources / name, tmp_path / name)
    return tmp_path


def test_resume_mid_round_is_exact_and_the_teacher_is_the_student(sources, tmp_path):
    """6 steps in rounds of 2 straight, or 3 steps then a resume (mid-round): same losses,
    parameters, EMA and teacher. The teacher refreshed at step 4 is the student's weights after
    4 steps (the checkpoint's model), not their EMA."""
    dist = init_distributed("cpu")
    out = _with_sources(sources, tmp_path, "src-mdlm")
    every = {"checkpoint": {"every_steps": 2, "keep_last": 10}}
    straight = Trainer(_distill_recipe(out, "straight", "src-mdlm", **every), dist)
    straight.fit()
    for steps in (3, 6):
        split = Trainer(_distill_recipe(out, "split", "src-mdlm", steps=steps, **every), dist)
        split.fit()
    assert _losses(out / "split") == _losses(out / "straight")
    assert "resumed from step_00000003" in (out / "split" / "metrics.jsonl").read_text()
    assert _same(_params(straight.model), _params(split.model))
    assert all(torch.equal(straight.ema.shadow[k], split.ema.shadow[k]) for k in straight.ema.shadow)
    assert _same(_teacher_state(straight), _teacher_state(split))
    assert straight.objective.teacher_step == split.objective.teacher_step == 4
    saved = load_checkpoint(out / "straight" / "checkpoints" / "step_00000004",
                            {"model": {k: torch.zeros_like(v) for k, v in _params(straight.model).items()},
                             "ema": {"params": {k: torch.zeros_like(v) for k, v in straight.ema.shadow.items()},
                                     "num_updates": 0}})
    assert _same(_teacher_state(straight), saved["model"])
    assert not _same(_teacher_state(straight), saved["ema"]["params"])


def test_init_from_run_by_name(sources, tmp_path):
    """An MDLM run's EMA weights load into an IMDM model by run name: the mask-state keys are
    new, their zero last layer keeps the function, the weights are the EMA (not the raw ones)."""
    source = load_run(sources / "src-mdlm", torch.device("cpu"))
    student = _tiny_model("imdm")
    init = load_ema_weights("src-mdlm", sources, student)
    assert init.step == 4 and init.new_keys == ("mask_state.fc1.bias", "mask_state.fc1.weight", "mask_state.fc2.weight")
    loaded = _params(student)
    assert all(torch.equal(loaded[k], v) for k, v in _params(source.model).items())
    template = {"model": {k: torch.zeros_like(v) for k, v in _params(source.model).items()}}
    raw = load_checkpoint(source.checkpoint, template)
    assert not _same(raw["model"], _params(source.model))
    z = torch.randint(0, V + 1, (4, L))
    noise = torch.rand(4, L, 8) * 2 - 1
    torch.testing.assert_close(student.eval()(z, noise), source.model(z), rtol=0, atol=0)


def test_init_from_run_errors(sources, tmp_path):
    with pytest.raises(CheckpointError, match=r"no run named 'nope' under .* \(runs there: src-imdm, src-mdlm\)"):
        load_ema_weights("nope", sources, _tiny_model())
    (tmp_path / "fresh").mkdir()
    shutil.copy(sources / "src-mdlm" / "recipe.toml", tmp_path / "fresh" / "recipe.toml")
    with pytest.raises(CheckpointError, match="run 'fresh' .* has no complete checkpoint"):
        load_ema_weights("fresh", tmp_path, _tiny_model())
    recipe = recipe_from_dict(_table("unused", "m", "imdm"))
    with pytest.raises(CheckpointError, match=r"run 'src-mdlm' has a vocabulary of 17 outputs \(mask id 16\); "
                                              r"this recipe's model has 33 \(mask id 32\)"):
        load_ema_weights("src-mdlm", sources, build_model(recipe, 33, 32))
    with pytest.raises(CheckpointError, match="another model shape .*d_model 32 vs 64"):
        load_ema_weights("src-mdlm", sources, _tiny_model(d_model=64))
    with pytest.raises(CheckpointError, match="run 'src-imdm' has mask states"):
        load_ema_weights("src-imdm", sources, _tiny_model("mdlm"))


@pytest.mark.parametrize("sections,needle", [
    ({"algorithm": {"objective": "sdtt"}}, "init.from_run: distillation starts from a trained model"),
    ({"init": {"from_run": "x"}, "run": {"name": "x"}}, "init.from_run: run 'x' cannot start from itself"),
    ({"distill": {"rounds": 2}}, "distill: these settings need algorithm.objective = 'sdtt'"),
    ({"algorithm": {"objective": "sdtt"}, "init": {"from_run": "a"}, "distill": {"round_steps": 2, "rounds": 2}},
     "train.steps: 6 runs past the last round (distill.rounds x distill.round_steps = 4)"),
    ({"algorithm": {"objective": "sdtt"}, "init": {"from_run": "a"}, "distill": {"teacher_steps": 64}},
     "distill.teacher_steps: 64 steps cannot halve 7 times"),
    ({"distill": {"divergence": "kl"}}, "distill.divergence: 'kl' is not one of"),
])
def test_distill_recipe_checks(sections, needle):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict(_table("runs", "r", **sections))
    assert needle in str(info.value)


def test_student_moves_to_the_teacher_targets():
    """Adam on one fixed batch (fixed t, z_t, eps and teacher draws) takes a student that starts
    elsewhere to the teacher's targets."""
    teacher = _tiny_model("imdm", perturb=0.3, dropout=0.0)
    student = _tiny_model("imdm", dropout=0.0)
    distill = Distillation(MaskedDiffusion(LogLinearSchedule(1e-3), V, seed=5, mask_state=teacher.cfg.mask_state), teacher,
                           Rounds(2, 2))
    x0, index = torch.randint(0, V, (16, L)), torch.arange(16)
    count = distill.loss_count(index, 16, 0, torch.ones(16, L, dtype=torch.bool))
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = distill.loss(student, x0, index, 16, step=0) / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.05 and losses[-1] < 0.2 * losses[0]


def test_imsdtt_runs_end_to_end(sources, tmp_path):
    """From a learned IMDM run, one round of a two-step teacher with dt ~ 1/2: the student
    moves, keeps its NELBO (the targets are the teacher's own predictions), loads and samples."""
    out = _with_sources(sources, tmp_path, "src-imdm")
    recipe = _distill_recipe(out, "imsdtt", "src-imdm", steps=20, distill={"round_steps": 20, "rounds": 1,
                                                                          "teacher_steps": 2},
                             train={"global_batch": 32, "micro_batch": 32}, optimizer={"lr": 1e-3})
    result = Trainer(recipe, init_distributed("cpu")).fit()
    source = load_run(out / "src-imdm", torch.device("cpu"))
    run = load_run(result.run_dir, torch.device("cpu"))
    assert method_label(run.recipe) == "imsdtt" and run.step == 20
    assert not _same(_params(run.model), _params(source.model))
    assert all(-1e-6 < x < 5 for x in _losses(result.run_dir).values())
    source_nelbo = json.loads((out / "src-imdm" / "metrics.jsonl").read_text().splitlines()[-1])["val_nelbo_ema"]
    assert result.val_nelbo == pytest.approx(source_nelbo, abs=0.3)
    tokens = run.process.sample(run.model, sampler_settings(run.recipe, 2), torch.arange(16), L).tokens
    assert tokens.shape == (16, L) and int(tokens.max()) < V


@pytest.mark.parametrize("algo,num_masks", [("mdlm", 0), ("imdm", 4)])
def test_sdtt_and_finite_mask_imsdtt_run(sources, tmp_path, algo, num_masks):
    """SDTT (the MDLM baseline, no eps) and IM-SDTT with K = 4 finite mask states (integer eps;
    the state table is new and starts at zero) run through the same code, across a round."""
    out = _with_sources(sources, tmp_path, "src-mdlm")
    recipe = _distill_recipe(out, "k", "src-mdlm", algo=algo, steps=3, algorithm={"num_masks": num_masks})
    trainer = Trainer(recipe, init_distributed("cpu"))
    trainer.fit()
    losses = _losses(out / "k")
    assert sorted(losses) == [1, 2, 3] and all(-1e-6 < x < 5 for x in losses.values())   # float32 rounding: KL ~ -1e-8
    assert trainer.objective.teacher_step == 2
    assert (trainer.model.mask_state is None) == (algo == "mdlm")


@pytest.mark.timeout(300)
def test_fsdp_two_ranks_kill_and_restart_match_one_process(sources, tmp_path):
    """IM-SDTT under FSDP2 on 2 gloo ranks (teacher sharded like the student), killed at step 5
    and restarted from the step-3 checkpoint (mid-round), matches one process step for step."""
    out = _with_sources(sources, tmp_path, "src-mdlm")
    args = [f"run.output_dir={out}", "run.seed=3", "model.size=custom", "model.d_model=32", "model.n_blocks=2",
            "model.n_heads=2", "model.dropout=0.0", "algorithm.noise_dim=8", "algorithm.objective=sdtt",
            "init.from_run=src-mdlm", "distill.round_steps=2", "distill.rounds=3", "distill.teacher_steps=8",
            f"data.vocab_size={V}", f"data.seq_len={L}", "data.num_sequences=500", "train.steps=6",
            "train.global_batch=8", "train.micro_batch=2", "train.eval_batches=1", "schedule.warmup_steps=2",
            "optimizer.lr=3e-3", "checkpoint.every_steps=3", "logging.every_steps=1", "logging.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "IMDM_FAIL_AT_STEP": "5:1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts=1", "--nproc_per_node=2",
           "-m", "imdm", "train", "builtin:quickstart", *args, "run.name=fsdp"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from step_00000003" in (out / "fsdp" / "metrics.jsonl").read_text()
    single = Trainer(load_recipe("builtin:quickstart", [*args, "run.name=single", "train.micro_batch=8"]),
                     init_distributed("cpu"))
    single.fit()
    fsdp, one = _losses(out / "fsdp"), _losses(out / "single")
    assert sorted(fsdp) == sorted(one) == list(range(1, 7))
    for step in one:                                # summation order differs; losses near 0 are rounding
        assert fsdp[step] == pytest.approx(one[step], rel=1e-3, abs=1e-6)
    teacher = {k: torch.zeros_like(v) for k, v in _teacher_state(single).items()}
    saved = load_checkpoint(out / "fsdp" / "checkpoints" / "step_00000006",
                            {"algorithm": {"teacher": teacher, "teacher_step": 0}})["algorithm"]
    assert saved["teacher_step"] == 4
    for k, v in _teacher_state(single).items():
        torch.testing.assert_close(saved["teacher"][k], v, rtol=1e-3, atol=1e-4)   # Adam: lr-sized steps on tiny grads
