"""Keep the newest result per benchmark, card and configuration in a results folder (DESIGN.md:
"keep the newest file per benchmark, model and card in the tree; git holds the history").

Results are grouped by benchmark, device, world size and the configuration keys that make two
results comparable (the model for training, the shapes for a kernel: SHAPE_KEYS). In a group the
newest code wins: the result whose git sha is nearest HEAD in this checkout's history, then the
latest time stamp (a run of an older checkout made later does not replace one of newer code). A
file beside a result with the same stem (a plot) goes with it. Files that are not results in the
project's format are listed and left alone.

    python -m benchmarks.prune_results [--results-dir DIR] [--exclude-sha SHA ...] [--delete]

Without --delete it only lists what it would delete.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections import defaultdict
from pathlib import Path

from benchmarks.results_io import RESULTS

# configuration keys that tell two results of a benchmark apart (others, like iteration counts or
# labels, do not); the recipe field stands for the model of block_breakdown and the pipeline of
# synthetic_repro
SHAPE_KEYS = {
    "train_throughput": ("model",),
    "checkpoint_stall": ("model", "async"),
    "sampling_latency": ("model", "batch", "seq_len", "steps"),
    "kernel_masked_loss": ("d", "tokens", "masked_fraction", "vocab"),
    "kernel_sampler": ("batch", "seq_len", "vocab"),
    "kernel_masking": ("batch", "seq_len", "dim", "masked_fraction"),
    "kernel_residual_norm": ("batch", "seq_len", "d"),
    "gelu_mlp": ("models",),
    "cublaslt_epilogues": ("models",),
    "wgrad_accumulation": ("layout",),
    "block_breakdown": ("recipe", "batch", "seq_len"),
    "weight_copies_identity": (),
    "host_draws": ("micro_batch", "seq_len", "threads"),
    "data_pipeline": ("recipe", "seq_len"),
    "kill_resume": ("recipe", "nproc"),
    "synthetic_repro": ("recipe",),
}
RUN_KNOBS = {"iters", "warmup", "repeats", "label", "overrides", "results_dir", "timed_steps", "baseline_iters"}


def group_key(record: dict) -> tuple:
    """(benchmark, device, world size, configuration) of a result record."""
    config = {**record.get("config", {}), "recipe": record.get("recipe")}
    keys = SHAPE_KEYS.get(record["benchmark"])
    if keys is None:   # a benchmark not listed: every configuration key but the run's knobs
        keys = sorted(k for k in record.get("config", {}) if k not in RUN_KNOBS)
    shape = tuple((k, json.dumps(config.get(k), sort_keys=True)) for k in keys)
    return record["benchmark"], record["device"], record.get("world_size", 1), shape


def commit_ranks(cwd: Path) -> dict[str, int]:
    """{full sha: distance from HEAD} over HEAD's history (empty without git)."""
    try:
        shas = subprocess.run(["git", "rev-list", "HEAD"], capture_output=True, text=True, cwd=cwd,
                              check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {sha: i for i, sha in enumerate(shas)}


def _rank(sha: str, ranks: dict[str, int]) -> float:
    if len(sha) >= 7:
        hits = [r for full, r in ranks.items() if full.startswith(sha)]
        if len(hits) == 1:
            return hits[0]
    return float("inf")   # unknown, or not in this history: older than anything in it


def plan(results_dir: Path, exclude: tuple[str, ...] = (), ranks: dict[str, int] | None = None
         ) -> tuple[list[Path], list[Path], list[Path]]:
    """(results kept, files to delete, files that are not results), each sorted."""
    ranks = commit_ranks(results_dir) if ranks is None else ranks
    groups, not_results, excluded = defaultdict(list), [], []
    for path in sorted(results_dir.glob("*/*.json")):
        try:
            record = json.loads(path.read_text())
            key = group_key(record)
        except (ValueError, KeyError, TypeError, AttributeError):
            not_results.append(path)
            continue
        sha = str(record.get("git_sha") or "unknown")
        if any(sha.startswith(x) or x.startswith(sha) for x in exclude if len(sha) >= 7):
            excluded.append(path)
            continue
        groups[key].append((-_rank(sha, ranks), path.name, path))
    kept = {max(members)[2] for members in groups.values()}
    dropped = {path for members in groups.values() for *_, path in members} - kept | set(excluded)
    stems_kept, stems_dropped = ({p.with_suffix("") for p in paths} for paths in (kept, dropped))
    for path in results_dir.glob("*/*"):   # a plot beside a result goes with it
        if not path.is_file() or path.suffix == ".json":
            continue
        stem = path.with_suffix("")
        if stem in stems_kept:
            kept.add(path)
        elif stem in stems_dropped:
            dropped.add(path)
        else:
            not_results.append(path)
    return sorted(kept), sorted(dropped), sorted(not_results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default=str(RESULTS))
    parser.add_argument("--exclude-sha", nargs="*", default=[],
                        help="also delete the results of these commits (a reverted experiment's)")
    parser.add_argument("--delete", action="store_true", help="delete; without it, only list")
    args = parser.parse_args()
    root = Path(args.results_dir)
    kept, dropped, other = plan(root, tuple(args.exclude_sha))
    for label, paths in (("keep", kept), ("delete" if args.delete else "would delete", dropped),
                         ("not a result, left alone", other)):
        for path in paths:
            print(f"{label:26s} {path.relative_to(root)}")
    if args.delete:
        for path in dropped:
            path.unlink()
    print(f"{len(kept)} kept, {len(dropped)} {'deleted' if args.delete else 'to delete'}, {len(other)} not results")


if __name__ == "__main__":
    main()
