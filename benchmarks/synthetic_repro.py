"""Synthetic-task reproduction (docs/method.md section 6): run a pipeline of stages (pre-training,
SDTT / IM-SDTT, couplings, ReDi / IM-ReDi), then sample every trained stage's EMA weights at each
step count from evaluation seeds no training or coupling used, and record validity (sampled and
greedy), the coverage ratio and a total correlation estimate, with an SVG plot beside the JSON.

    python -m benchmarks.synthetic_repro --pipeline builtin:pipelines/synthetic_repro_cpu
    python -m benchmarks.synthetic_repro --pipeline builtin:pipelines/synthetic_repro   # V 50,000, L 10 (GPU)

A finished stage is not redone, so an interrupted run continues where it stopped."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.results_io import write_result
from imdm.devices import pick_device
from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
from imdm.pipeline import run_pipeline
from imdm.run_loading import load_run
from imdm.tools.plot_synthetic import write_validity_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="builtin:pipelines/synthetic_repro_cpu")
    parser.add_argument("--steps", default="1,2,4,8", help="sampling step counts evaluated")
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("overrides", nargs="*", help="applied to every stage")
    args = parser.parse_args()
    start = time.perf_counter()
    stages = run_pipeline(args.pipeline, args.overrides)
    train_seconds = time.perf_counter() - start
    device = pick_device(args.device)
    sampling = [f"sampling.steps=[{args.steps}]", f"sampling.num_samples={args.num_samples}",
                f"sampling.batch={min(args.num_samples, 512)}"]
    rows = []
    for stage in (s for s in stages if s.command == "train"):
        run = load_run(Path(stage.recipe.run.output_dir) / stage.name, device, sampling)
        for row in evaluate_synthetic(run.recipe, run.model, run.process, device):
            rows.append({"method": stage.name, "num_samples": args.num_samples, **row})
    recipe = stages[0].recipe
    print(format_table(rows, recipe.data.vocab_size, recipe.data.seq_len))
    d, b, h = recipe.model.dims()
    config = {"vocab": recipe.data.vocab_size, "seq_len": recipe.data.seq_len, "model": f"{b}x{d} ({h} heads)",
              "pipeline": args.pipeline, "overrides": args.overrides,
              "stages": [{"run": s.name, "command": s.command, "recipe": s.recipe_path, "overrides": list(s.overrides),
                          "train_steps": s.recipe.train.steps, "global_batch": s.recipe.train.global_batch}
                         for s in stages]}
    keep = ("method", "steps", "nfe", "validity", "validity_greedy", "coverage", "coverage_greedy", "coverage_ratio",
            "coverage_ratio_greedy", "num_samples", "tc_nats", "tc_groups", "tc_replicas")
    path = write_result("synthetic_repro", args.pipeline, config,
                        {"rows": [{k: r[k] for k in keep} for r in rows],
                         "one_step_floor": float(recipe.data.vocab_size) ** -(recipe.data.seq_len - 1),
                         "pipeline_seconds": train_seconds, "wall_seconds": time.perf_counter() - start},
                        out_dir=args.results_dir)
    write_validity_plot(rows, path.with_suffix(".svg"),
                        f"synthetic task V={recipe.data.vocab_size}, L={recipe.data.seq_len}")
    print(f"wrote {path} and {path.with_suffix('.svg').name}")


if __name__ == "__main__":
    main()
