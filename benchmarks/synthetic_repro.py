"""Synthetic-task reproduction (SPEC section 6): train each method from one recipe and record
validity and coverage per step count.

    python benchmarks/synthetic_repro.py [--recipe builtin:quickstart] [--output-dir DIR] [key=value ...]

Methods so far: MDLM and IMDM trained with the NELBO (distilled and rectified methods join when
they exist)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results_io import write_result  # noqa: E402
from imdm.quickstart import run_quickstart  # noqa: E402
from imdm.recipe.loader import load_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="builtin:quickstart")
    parser.add_argument("--output-dir", default="runs/synthetic_repro")
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    start = time.perf_counter()
    rows = run_quickstart(args.output_dir, args.recipe, args.overrides)
    seconds = time.perf_counter() - start
    d, b, h = recipe.model.dims()
    config = {"vocab": recipe.data.vocab_size, "seq_len": recipe.data.seq_len, "model": f"{b}x{d} ({h} heads)",
              "train_steps": recipe.train.steps, "global_batch": recipe.train.global_batch,
              "num_samples": recipe.sampling.num_samples, "overrides": args.overrides}
    keep = ("method", "steps", "nfe", "validity", "coverage", "coverage_fraction")
    path = write_result("synthetic_repro", args.recipe, config,
                        {"rows": [{k: r[k] for k in keep} for r in rows], "wall_seconds": seconds},
                        out_dir=Path(args.results_dir) if args.results_dir else None)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
