"""Data-pipeline benchmark: token-store preparation rate (tokenise + pack + write) and loading
rate (StatefulDataLoader micro-batches of a prepared store) on this machine's CPUs.

    python -m benchmarks.data_pipeline [--recipe recipes/local_gpt2.toml] [key=value ...]

Loading is compared with the fastest training rate the project targets per GPU (450,000
tokens/s, the kernel issue's small-model goal): a loader several times faster cannot make a
step wait."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchmarks.results_io import write_result
from imdm.data.loader import make_loader
from imdm.data.order import GlobalBatchOrder
from imdm.data.text_dataset import open_text_dataset
from imdm.algorithms.registry import load_recipe

TARGET_TRAIN_TOKENS_PER_S = 450_000


def time_loading(dataset, micro_batch: int, workers: int, batches: int) -> float:
    """Tokens per second delivered by one rank's loader (after a warm-up of 5 batches)."""
    order = GlobalBatchOrder(len(dataset), micro_batch, seed=0)
    loader = make_loader(dataset, order, 0, 1, micro_batch, workers)
    it = iter(loader)
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    assert batch["tokens"].shape == (micro_batch, dataset.seq_len)
    return batches * micro_batch * dataset.seq_len / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/local_gpt2.toml")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="imdm-bench-store-")
    try:
        recipe = load_recipe(args.recipe, [*args.overrides, f"data.store_dir={cache}"])
        start = time.perf_counter()
        dataset = open_text_dataset(recipe, "train")
        wall = time.perf_counter() - start
        m = dataset.store.manifest
        metrics = {"prepare_tokens_per_s": m["num_document_tokens"] / m["build_seconds"],
                   "prepare_wall_s_including_file_reading": wall, "document_tokens": m["num_document_tokens"],
                   "sequences": m["num_sequences"], "documents": m["num_documents"]}
        for workers in (0, 2):
            rate = time_loading(dataset, args.micro_batch, workers, args.batches)
            metrics[f"load_tokens_per_s_workers{workers}"] = rate
            metrics[f"load_vs_train_target_workers{workers}"] = rate / TARGET_TRAIN_TOKENS_PER_S
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    config = {"tokenizer": recipe.tokenizer.kind, "seq_len": recipe.data.seq_len, "packing": recipe.data.packing,
              "micro_batch": args.micro_batch, "cpu_count": os.cpu_count(), "paths": recipe.data.paths}
    path = write_result("data_pipeline", args.recipe, config, metrics, out_dir=args.results_dir)
    for k, v in metrics.items():
        print(f"{k:>42}: {v:,.2f}" if isinstance(v, float) else f"{k:>42}: {v:,}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
