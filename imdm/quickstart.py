"""The quickstart: train MDLM and IMDM on the CPU-sized synthetic task, then print validity and
coverage at few and many steps. One-step sampling from all-mask is factorised, so both fail
there (validity ~ V^-(L-1)); the IMDM gain needs distillation (IM-SDTT) on top."""

from __future__ import annotations

import json
from pathlib import Path

from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import load_recipe
from imdm.run_loading import load_run
from imdm.train.trainer import Trainer

METHODS = ("mdlm", "imdm")


def run_quickstart(output_dir: str, recipe_path: str = "builtin:quickstart", overrides=()) -> list[dict]:
    """Train (or resume) one run per method and evaluate its EMA weights; returns table rows."""
    dist = init_distributed("auto")
    rows = []
    for method in METHODS:
        recipe = load_recipe(recipe_path, [*overrides, f"algorithm.name={method}",
                                           f"run.name=quickstart-{method}", f"run.output_dir={output_dir}"],
                             world_size=dist.world_size)
        Trainer(recipe, dist).fit()
        run = load_run(Path(output_dir) / recipe.run.name, dist.device)
        for row in evaluate_synthetic(run.recipe, run.model, run.process, dist.device):
            rows.append({"method": method, "num_samples": recipe.sampling.num_samples, **row})
    (Path(output_dir) / "quickstart.json").write_text(json.dumps(rows, indent=1))
    print(format_table(rows, recipe.data.vocab_size, recipe.data.seq_len))
    return rows
