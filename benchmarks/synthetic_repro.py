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
from benchmarks.stage_scheduler import run_stages
from imdm.devices import pick_device
from imdm.eval.synthetic_eval import evaluate_synthetic, format_table
from imdm.parallel.checkpoint import latest_checkpoint
from imdm.pipeline import load_pipeline, run_pipeline
from imdm.run_loading import load_run
from imdm.tools.plot_synthetic import write_validity_plot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="builtin:pipelines/synthetic_repro_cpu")
    parser.add_argument("--steps", default="1,2,4,8", help="sampling step counts evaluated")
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024, help="samples per sampler call")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--eval-only", action="store_true",
                        help="run no stage: evaluate the newest checkpoint of every train stage that has one")
    parser.add_argument("--jobs", type=int, default=1,
                        help="stages run at once as separate processes, each as soon as its inputs finished")
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="with --jobs: seconds after which running stages get SIGTERM (they save and stop); "
                             "every train stage with a checkpoint is then evaluated")
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--log-dir", default=None, help="with --jobs: each stage's output (default: RESULTS_DIR/"
                                                         "synthetic_repro_logs)")
    parser.add_argument("overrides", nargs="*", help="applied to every stage")
    args = parser.parse_args()
    start = time.perf_counter()
    stage_states = {}
    if not args.eval_only and (args.jobs > 1 or args.deadline):
        log_dir = Path(args.log_dir or Path(args.results_dir or "benchmarks/results") / "synthetic_repro_logs")
        stage_states = run_stages(args.pipeline, args.overrides, args.jobs, args.deadline, log_dir)
    elif not args.eval_only:
        run_pipeline(args.pipeline, args.overrides)
    stages = load_pipeline(args.pipeline, args.overrides)[1]
    partial = args.eval_only or bool(stage_states)
    train_seconds = time.perf_counter() - start
    device = pick_device(args.device)
    sampling = [f"sampling.steps=[{args.steps}]", f"sampling.num_samples={args.num_samples}",
                f"sampling.batch={min(args.num_samples, args.batch)}"]
    rows, trained = [], {}
    for stage in (s for s in stages if s.command == "train"):
        run_dir = Path(stage.recipe.run.output_dir) / stage.name
        if partial and latest_checkpoint(run_dir / "checkpoints") is None:
            continue
        run = load_run(run_dir, device, sampling)
        trained[stage.name] = run.step
        for row in evaluate_synthetic(run.recipe, run.model, run.process, device):
            rows.append({"method": stage.name, "num_samples": args.num_samples, **row})
            print(f"{stage.name} (step {run.step}): {row}", flush=True)
    recipe = stages[0].recipe
    print(format_table(rows, recipe.data.vocab_size, recipe.data.seq_len))
    d, b, h = recipe.model.dims()
    config = {"vocab": recipe.data.vocab_size, "seq_len": recipe.data.seq_len, "model": f"{b}x{d} ({h} heads)",
              "pipeline": args.pipeline, "overrides": args.overrides,
              "stages": [{"run": s.name, "command": s.command, "recipe": s.recipe_path, "overrides": list(s.overrides),
                          "train_steps": s.recipe.train.steps, "trained_steps": trained.get(s.name),
                          "state": stage_states.get(s.name),
                          "global_batch": s.recipe.train.global_batch} for s in stages]}
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
