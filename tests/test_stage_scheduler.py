"""benchmarks.stage_scheduler: a pipeline's independent stages run as processes side by side once
their inputs finish, and a deadline stops a running training stage, which saves first."""

import pytest

from benchmarks.stage_scheduler import run_stages
from imdm.parallel.checkpoint import checkpoint_step, latest_checkpoint

COMMON = ["model.size=custom", "model.d_model=16", "model.n_blocks=1", "model.n_heads=2", "algorithm.noise_dim=8",
          "data.vocab_size=8", "data.seq_len=4", "train.global_batch=8", "train.micro_batch=8",
          "train.eval_batches=1", "logging.progress=false", "train.device=cpu", "schedule.warmup_steps=1"]
PIPELINE = """
[pipeline]
output_dir = "{out}"

[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=base", "train.steps=4"]

[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=long", "init.from_run=base", "train.steps=1000000"]

[[stage]]
recipe = "builtin:quickstart_couplings"
command = "couplings"
overrides = ["run.name=pairs", "couplings.teacher_run=base", "couplings.num=8", "couplings.chunk=8",
             "couplings.steps=8", "data.vocab_size=8", "data.seq_len=4"]

[[stage]]
recipe = "builtin:quickstart"
overrides = ["run.name=never", "init.from_run=missing-input-fails", "train.steps=2"]
"""


@pytest.mark.timeout(300)
def test_branches_run_side_by_side_and_the_deadline_saves(tmp_path):
    path = tmp_path / "pipeline.toml"
    path.write_text(PIPELINE.format(out=tmp_path / "runs"))
    (tmp_path / "runs" / "missing-input-fails").mkdir(parents=True)    # exists, but is no run: that stage fails
    messages = []
    state = run_stages(str(path), COMMON, jobs=3, deadline_s=40, log_dir=tmp_path / "logs", log=messages.append)
    assert state == {"base": "finished", "long": "stopped", "pairs": "finished", "never": "failed"}
    started = [m.split(":")[0] for m in messages if "started" in m]
    assert started[0] == "base" and set(started[1:]) == {"long", "pairs", "never"}
    order = [m.split(" after")[0].split(" at")[0] for m in messages]
    assert order.index("base: finished") < order.index("long: started")      # waits for its input
    assert order.index("long: started") < order.index("pairs: finished")     # branches run side by side
    stopped_at = latest_checkpoint(tmp_path / "runs" / "long" / "checkpoints")
    assert stopped_at is not None and checkpoint_step(stopped_at) > 0
    assert (tmp_path / "logs" / "long.log").read_text().count("training stopped at step") == 1
