"""The quickstart: the CPU-sized synthetic task (every sequence repeats one token; V 64, L 8)
through the packaged pipeline `builtin:pipelines/quickstart` (MDLM, IMDM, eps-driven couplings
from IMDM, IM-ReDi), then validity and coverage of the three models at few and many steps, from
mask states no training or coupling used. One sampled step from all-mask is a factorised draw,
so MDLM and IMDM fail there (validity ~ V^-(L-1)); IM-ReDi on couplings that are a function of
their mask states learns the one-step map. Each phase (a stage, then each evaluation) prints a
line with its number and the time since the start."""

from __future__ import annotations

import json
import time
from pathlib import Path

from imdm.devices import pick_device
from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
from imdm.pipeline import load_pipeline, run_pipeline
from imdm.run_loading import load_run

PIPELINE = "builtin:pipelines/quickstart"
EVALUATED = {"quickstart-mdlm": "MDLM", "quickstart-imdm": "IMDM", "quickstart-imredi": "IMDM + IM-ReDi"}


class PhaseLog:
    """Prefixes each phase's line with [k/N m:ss], the time since the quickstart started."""

    def __init__(self, phases: int, log):
        self.phases, self.log, self.done, self.start = phases, log, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.done += 1
        minutes, seconds = divmod(int(time.perf_counter() - self.start), 60)
        self.log(f"[{self.done}/{self.phases} {minutes}:{seconds:02d}] {message}")


def run_quickstart(output_dir: str, overrides=(), log=print) -> list[dict]:
    """Run (or finish) the quickstart pipeline under `output_dir`, evaluate its trained runs'
    EMA weights, print the table and write output_dir/quickstart.json; returns the rows."""
    _, planned = load_pipeline(PIPELINE, overrides, output_dir)
    evaluated = [s for s in planned if s.name in EVALUATED]
    steps = ", ".join(map(str, planned[0].recipe.sampling.steps))
    log(f"quickstart: {len(planned)} stages ({', '.join(f'{s.command} {s.name}' for s in planned)}), then "
        f"validity and coverage of {', '.join(EVALUATED[s.name] for s in evaluated)} at {steps} steps; "
        f"runs under {output_dir}")
    phase = PhaseLog(len(planned) + len(evaluated), log)
    stages = run_pipeline(PIPELINE, overrides, log=phase, output_dir=output_dir)
    rows = []
    for stage in (s for s in stages if s.name in EVALUATED):
        phase(f"evaluating {stage.name} ({EVALUATED[stage.name]})")
        device = pick_device(stage.recipe.train.device)
        run = load_run(Path(stage.recipe.run.output_dir) / stage.name, device)
        for row in evaluate_synthetic(run.recipe, run.model, run.process, device, tc_groups=0):
            rows.append({"method": EVALUATED[stage.name], "num_samples": run.recipe.sampling.num_samples, **row})
    (Path(output_dir) / "quickstart.json").write_text(json.dumps(rows, indent=1))
    recipe = stages[0].recipe
    log(format_table(rows, recipe.data.vocab_size, recipe.data.seq_len))
    log(f"wrote {Path(output_dir) / 'quickstart.json'}")
    return rows
