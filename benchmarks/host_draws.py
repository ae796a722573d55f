"""Host cost of a training micro-batch's draws: t, per-sample seeds and the mask (hashed on the
CPU so that finding the masked rows never waits for the GPU), then the masked-row index lists.
The training loop pays it on its launching thread between GPU launches, so every millisecond
here is a millisecond the GPU can idle. Compares the hash in numpy uint32 arithmetic (what the
host uses) with the int64-emulated words (what other devices use, and the host used before).

    python -m benchmarks.host_draws [--micro-batch 32] [--seq-len 1024] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from benchmarks.results_io import write_result
from imdm import rng
from imdm.algorithms.masked_diffusion import ROW_BUCKET_CUDA, MaskedDiffusion, row_indices
from imdm.diffusion.schedule import LogLinearSchedule


def time_draws(algorithm: MaskedDiffusion, micro_batch: int, global_batch: int, seq_len: int, repeats: int
               ) -> tuple[float, torch.Tensor]:
    """Median milliseconds of draws + row lists for one micro-batch (after 3 warm-up calls), and
    the last mask."""
    index = torch.arange(micro_batch)
    times = []
    for step in range(repeats + 3):
        start = time.perf_counter()
        _, _, masked = algorithm.draws(0, step, index, global_batch, seq_len)
        row_indices(masked, None, torch.device("cpu"), ROW_BUCKET_CUDA)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[3:]), masked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loop's thread is one)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    algorithm = MaskedDiffusion(LogLinearSchedule(), mask_id=50257, seed=0)
    host_ms, host_mask = time_draws(algorithm, args.micro_batch, args.global_batch, args.seq_len, args.repeats)
    with mock.patch.object(rng, "hash32", rng.hash32_words):
        words_ms, words_mask = time_draws(algorithm, args.micro_batch, args.global_batch, args.seq_len, args.repeats)
    if not torch.equal(host_mask, words_mask):
        raise SystemExit("the two hash paths drew different masks")
    metrics = {"numpy_uint32_ms": host_ms, "int64_words_ms": words_ms, "speedup": words_ms / host_ms}
    config = {"micro_batch": args.micro_batch, "global_batch": args.global_batch, "seq_len": args.seq_len,
              "threads": args.threads, "repeats": args.repeats, "row_bucket": ROW_BUCKET_CUDA}
    path = write_result("host_draws", "", config, metrics, out_dir=args.results_dir)
    print(f"draws + row lists per micro-batch [{args.micro_batch} x {args.seq_len}]: numpy uint32 {host_ms:.2f} ms, "
          f"int64 words {words_ms:.2f} ms ({metrics['speedup']:.1f}x) -> {path}")


if __name__ == "__main__":
    main()
