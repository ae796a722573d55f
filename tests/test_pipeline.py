"""Pipelines: stages chained by run name run in order, finished stages are skipped, inputs are
checked before anything runs, and a failing stage stops the pipeline naming itself."""

import pytest

from imdm.pipeline import StageFailed, load_pipeline, run_pipeline
from imdm.recipe import RecipeError
from imdm.parallel.checkpoint import latest_checkpoint

COMMON = ["model.size=custom", "model.d_model=32", "model.n_blocks=1", "model.n_heads=2", "algorithm.noise_dim=8",
          "data.vocab_size=16", "data.seq_len=4", "data.num_sequences=1000", "train.global_batch=16",
          "train.micro_batch=16", "train.eval_batches=1", "logging.progress=false", "train.device=cpu"]
STAGES = """
[pipeline]
output_dir = "{out}"

[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=base", "train.steps=10", "schedule.warmup_steps=2"]

[[stage]]
recipe = "builtin:synthetic_imsdtt"
overrides = ["run.name=student", "init.from_run=base", "train.steps=4", "distill.round_steps=2", "distill.rounds=2",
             "schedule.warmup_steps=1"]

[[stage]]
recipe = "builtin:synthetic_couplings"
command = "couplings"
overrides = ["run.name=pairs", "couplings.teacher_run=student", "couplings.num=16", "couplings.chunk=8",
             "couplings.steps=8"]

[[stage]]
recipe = "builtin:synthetic_imredi"
overrides = ["run.name=rect", "init.from_run=student", "data.couplings=pairs", "train.steps=4",
             "schedule.warmup_steps=1"]
"""


def _write(tmp_path, text):
    path = tmp_path / "pipeline.toml"
    path.write_text(text.format(out=tmp_path / "runs"))
    return str(path)


def test_pipeline_runs_every_stage_once_then_skips_finished_ones(tmp_path):
    path = _write(tmp_path, STAGES)
    messages = []
    stages = run_pipeline(path, COMMON, log=messages.append)
    assert [s.name for s in stages] == ["base", "student", "pairs", "rect"]
    assert [m.split(": ")[1] for m in messages] == ["running (builtin:quickstart)", "running (builtin:synthetic_imsdtt)",
                                                    "running (builtin:synthetic_couplings)",
                                                    "running (builtin:synthetic_imredi)"]
    runs = tmp_path / "runs"
    saved = {name: latest_checkpoint(runs / name / "checkpoints") for name in ("base", "student", "rect")}
    assert all(p is not None for p in saved.values())
    mtimes = {name: p.stat().st_mtime_ns for name, p in saved.items()}
    messages.clear()
    run_pipeline(path, COMMON, log=messages.append)
    assert all(m.endswith("finished earlier, skipped") for m in messages) and len(messages) == 4
    assert {name: latest_checkpoint(runs / name / "checkpoints").stat().st_mtime_ns for name in saved} == mtimes


def test_inputs_and_keys_are_checked_before_anything_runs(tmp_path):
    broken = STAGES.replace("init.from_run=base", "init.from_run=bsae")
    with pytest.raises(RecipeError, match="input run 'bsae' is neither an earlier stage"):
        load_pipeline(_write(tmp_path, broken), COMMON)
    assert not (tmp_path / "runs").exists()
    with pytest.raises(RecipeError, match=r"stage\[0\].recipes: unknown key"):
        load_pipeline(_write(tmp_path, STAGES.replace('recipe = "builtin:quickstart"', 'recipes = "x"')), COMMON)
    with pytest.raises(RecipeError, match="distill.round_step"):
        load_pipeline(_write(tmp_path, STAGES.replace("distill.round_steps=2", "distill.round_step=2")), COMMON)


def test_a_failing_stage_stops_the_pipeline_and_names_itself(tmp_path):
    # the student's vocabulary differs from the run it starts from: its Trainer refuses to start
    bad = STAGES.replace('"run.name=student",', '"run.name=student", "data.vocab_size=17",')
    with pytest.raises(StageFailed, match=r"stage 2/4 train student: CheckpointError: .*vocab"):
        run_pipeline(_write(tmp_path, bad), COMMON, log=lambda m: None)
    runs = tmp_path / "runs"
    assert latest_checkpoint(runs / "base" / "checkpoints") is not None
    assert not (runs / "pairs").exists() and not (runs / "rect").exists()


def test_every_packaged_pipeline_loads():
    from importlib import resources
    names = sorted(p.name[:-5] for p in (resources.files("imdm.recipes") / "pipelines").iterdir()
                   if p.name.endswith(".toml"))
    assert {"quickstart", "synthetic_repro", "synthetic_repro_cpu", "owt_imsdtt_redi"} <= set(names)
    for name in names:
        _, stages = load_pipeline(f"builtin:pipelines/{name}")
        assert stages and all(s.recipe.run.output_dir for s in stages)


ROUNDS = """
[pipeline]
output_dir = "{out}"

[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=base", "train.steps=6", "schedule.warmup_steps=2"]

[[stage]]
recipe = "builtin:synthetic_couplings"
command = "couplings"
overrides = ["run.name=pairs-1", "couplings.teacher_run=base", "couplings.num=16", "couplings.chunk=8",
             "couplings.steps=16", "couplings.start=all_mask", "couplings.seed=1", "sampling.draws=eps",
             "sampling.fix_eps=true"]

[[stage]]
recipe = "builtin:synthetic_imredi"
overrides = ["run.name=round-1", "init.from_run=base", "data.couplings=pairs-1", "train.steps=4",
             "schedule.warmup_steps=1"]
{more}"""
SECOND_ROUND = """
[[stage]]
recipe = "builtin:synthetic_couplings"
command = "couplings"
overrides = ["run.name=pairs-2", "couplings.teacher_run=round-1", "couplings.num=16", "couplings.chunk=8",
             "couplings.steps=16", "couplings.start=all_mask", "couplings.seed={seed}", "sampling.draws=eps",
             "sampling.fix_eps=true"]

[[stage]]
recipe = "builtin:synthetic_imredi"
overrides = ["run.name=round-2", "init.from_run=round-1", "data.couplings=pairs-2", "train.steps=4",
             "schedule.warmup_steps=1"]
"""


def test_chained_rectification_rounds_resume_and_need_fresh_seeds(tmp_path):
    """Each round's student makes the next round's couplings: a pipeline extended by a round
    skips the finished rounds; a round that would reuse an earlier round's coupling seed (the
    same mask states) is refused."""
    import numpy as np
    first = run_pipeline(_write(tmp_path, ROUNDS.replace("{more}", "")), COMMON, log=lambda m: None)
    assert [s.name for s in first] == ["base", "pairs-1", "round-1"]
    messages = []
    again = SECOND_ROUND.replace("{seed}", "2")
    run_pipeline(_write(tmp_path, ROUNDS.replace("{more}", again)), COMMON, log=messages.append)
    assert [m.split(": ")[1].split(" ")[0] for m in messages] == ["finished", "finished", "finished", "running",
                                                                  "running"]
    out = tmp_path / "runs"
    seeds = [np.load(out / name / "couplings" / "seed.npy") for name in ("pairs-1", "pairs-2")]
    assert not set(seeds[0].tolist()) & set(seeds[1].tolist())
    assert latest_checkpoint(out / "round-2" / "checkpoints") is not None
    reuse = SECOND_ROUND.replace("{seed}", "1").replace("pairs-2", "pairs-3").replace("round-2", "round-3")
    with pytest.raises(StageFailed, match="couplings.seed: 1 generated 'pairs-1'"):
        run_pipeline(_write(tmp_path, ROUNDS.replace("{more}", reuse)), COMMON, log=lambda m: None)


def test_only_runs_the_named_stages(tmp_path):
    path = _write(tmp_path, STAGES)
    messages = []
    stages = run_pipeline(path, COMMON, log=messages.append, only=("base",))
    assert [m.split(": ")[0] for m in messages] == ["stage 1/4 train base"]
    assert latest_checkpoint(tmp_path / "runs" / "base" / "checkpoints") is not None
    assert not (tmp_path / "runs" / "student").exists() and len(stages) == 4
    with pytest.raises(RecipeError, match="--only: no stage named nope"):
        run_pipeline(path, COMMON, only=("nope",))
    with pytest.raises(RecipeError, match="--only: input 'student' of 'pairs' is not finished"):
        run_pipeline(path, COMMON, only=("pairs",))
