"""GPU timing helpers shared by the kernel benchmarks: mean milliseconds per call from CUDA
events with the calls queued behind a GPU sleep (launch overhead is not counted), the peak HBM
bandwidth of the device by name, and the exit of a GPU-only benchmark where there is no GPU."""

from __future__ import annotations

import sys

import torch

# vendor peak figures, matched as substrings of torch.cuda.get_device_name() in this order;
# a card not listed gets hbm_fraction None
HBM_BYTES_PER_S = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "B200": 8.0e12,
                   "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12, "L40S": 0.864e12}
NO_GPU_STATUS = 2   # exit status of a GPU-only benchmark where no CUDA GPU is visible


def hbm_peak(name: str) -> float | None:
    """Peak HBM bandwidth in bytes/s (H100 SXM: 3.35 TB/s, H200: 4.8 TB/s), None if unknown."""
    return next((bw for key, bw in HBM_BYTES_PER_S.items() if key in name), None)


def require_cuda(benchmark: str) -> None:
    """Exit with status 2 and a one-line message when no CUDA GPU is visible. Called after the
    arguments are parsed, so that `--help` works on any machine."""
    if not torch.cuda.is_available():
        print(f"{benchmark} needs a CUDA GPU (torch {torch.__version__} sees none)", file=sys.stderr)
        raise SystemExit(NO_GPU_STATUS)


def time_ms(fn, iters: int, warmup: int = 3) -> float:
    """Mean GPU milliseconds per call of `fn`."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(200_000_000)     # ~0.1 s: the host queues every call before the GPU reaches them
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bandwidth(nbytes: int, ms: float, peak: float | None) -> dict:
    """Bytes moved, GB/s and the share of the peak HBM bandwidth (None when unknown)."""
    return {"bytes": nbytes, "gb_per_s": nbytes / ms / 1e6, "hbm_fraction": nbytes / ms / 1e-3 / peak if peak else None}
