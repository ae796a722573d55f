"""The quickstart: the CPU-sized synthetic task (every sequence repeats one token; V 64, L 8)
through the packaged pipeline `builtin:pipelines/quickstart` (MDLM, IMDM, eps-driven couplings
from IMDM, IM-ReDi), then validity and coverage of the three models at few and many steps, from
mask states no training or coupling used. One sampled step from all-mask is a factorised draw,
so MDLM and IMDM fail there (validity ~ V^-(L-1)); IM-ReDi on couplings that are a function of
their mask states learns the one-step map."""

from __future__ import annotations

import json
from pathlib import Path

from imdm.devices import pick_device
from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
from imdm.pipeline import run_pipeline
from imdm.run_loading import load_run

PIPELINE = "builtin:pipelines/quickstart"
EVALUATED = {"quickstart-mdlm": "MDLM", "quickstart-imdm": "IMDM", "quickstart-imredi": "IMDM + IM-ReDi"}


def run_quickstart(output_dir: str, overrides=(), log=print) -> list[dict]:
    """Run (or finish) the quickstart pipeline under `output_dir`, evaluate its trained runs'
    EMA weights, print the table and write output_dir/quickstart.json; returns the rows."""
    stages = run_pipeline(PIPELINE, overrides, log=log, output_dir=output_dir)
    rows = []
    for stage in (s for s in stages if s.name in EVALUATED):
        log(f"evaluating {stage.name}")
        device = pick_device(stage.recipe.train.device)
        run = load_run(Path(stage.recipe.run.output_dir) / stage.name, device)
        for row in evaluate_synthetic(run.recipe, run.model, run.process, device, tc_groups=0):
            rows.append({"method": EVALUATED[stage.name], "num_samples": run.recipe.sampling.num_samples, **row})
    (Path(output_dir) / "quickstart.json").write_text(json.dumps(rows, indent=1))
    recipe = stages[0].recipe
    log(format_table(rows, recipe.data.vocab_size, recipe.data.seq_len))
    return rows
