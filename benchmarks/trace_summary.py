"""Where a profiled step's GPU time goes, from a torch.profiler Chrome trace: every GPU kernel
(and memcpy, memset) is traced back through its launch (same correlation id) to the CPU ops open
on the launching thread at that moment, and summed per region of the step: the compiled blocks'
forward and backward, the fused head loss, the optimizer, or else the innermost op that launched
it. Also the kernel span, the time the GPU is busy on any stream, and the gaps between kernels.

    python -m benchmarks.trace_summary TRACE.json[.gz] [--top 12]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATEGORIES = ("cpu_op", "user_annotation")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
# (substring of an enclosing CPU op's name, region), the first rule that any enclosing op matches wins
REGION_RULES = (
    ("CompiledFunctionBackward", "compiled blocks, backward"),
    ("CompiledFunction", "compiled blocks, forward"),
    ("Torch-Compiled Region", "compiled blocks, forward"),
    ("imdm::masked_nll", "head loss (fused)"),
    ("Optimizer.step", "optimizer step"),
    ("Optimizer.zero_grad", "optimizer step"),
)
GAP_MS = 0.1   # idle stretches at least this long are counted one by one


def load_trace(path: str | Path) -> dict:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return json.load(f)


def _launch_contexts(host_ops: list[dict], launches: list[dict]) -> dict[int, list[str]]:
    """For each launch (by correlation id), the names of the host ops open on its thread when it
    ran, outermost first: one sweep per thread over ops (outer before inner) and launches by time,
    dropping every op that has ended (also one under a later op that it only overlaps)."""
    threads = defaultdict(list)
    for op in host_ops:
        threads[(op["pid"], op["tid"])].append((op["ts"], 0, -op.get("dur", 0), op))
    for launch in launches:
        threads[(launch["pid"], launch["tid"])].append((launch["ts"], 1, 0, launch))
    contexts = {}
    for items in threads.values():
        stack = []
        for ts, is_launch, _, event in sorted(items, key=lambda item: item[:3]):
            stack = [op for op in stack if op["ts"] + op.get("dur", 0) > ts]
            if is_launch:
                contexts[event["args"]["correlation"]] = [op["name"] for op in stack]
            else:
                stack.append(event)
    return contexts


def _region(names: list[str]) -> str:
    """The first rule's region that an op in `names` matches, else the innermost op's name (and
    the autograd node it ran in, in the backward)."""
    for pattern, region in REGION_RULES:
        if any(pattern in name for name in names):
            return region
    if not names:
        return "other: no host op"
    node = next((n.split(": ", 1)[1] for n in reversed(names)
                 if n.startswith("autograd::engine::evaluate_function")), None)
    return f"other: {names[-1]}" + (f" in {node}" if node and node != names[-1] else "")


def _busy_and_gaps(intervals: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """Total length of the union of the intervals (microseconds), and the idle gaps between them."""
    busy, gaps, end = 0.0, [], None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            if end is not None:
                gaps.append(start - end)
            busy += stop - start
            end = stop
        elif stop > end:
            busy += stop - end
            end = stop
    return busy, gaps


def summarize(trace: dict, top: int = 12) -> dict:
    """Per-region kernel time (ms) and count, each region's `top` kernels, and the span, busy time
    and gaps (ms) of the device work in the trace."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    kernels = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    if not kernels:
        raise ValueError("the trace holds no GPU kernels: was it recorded with ProfilerActivity.CUDA on a GPU?")
    launches = [e for e in events if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})]
    contexts = _launch_contexts([e for e in events if e.get("cat") in HOST_CATEGORIES], launches)
    regions = defaultdict(lambda: {"ms": 0.0, "count": 0, "kernels": defaultdict(float)})
    for k in kernels:
        names = contexts.get(k.get("args", {}).get("correlation"))
        region = regions[_region(names) if names is not None else "other: launch not traced"]
        region["ms"] += k["dur"] / 1e3
        region["count"] += 1
        region["kernels"][k["name"]] += k["dur"] / 1e3
    busy, gaps = _busy_and_gaps([(k["ts"], k["ts"] + k["dur"]) for k in kernels])
    span = max(k["ts"] + k["dur"] for k in kernels) - min(k["ts"] for k in kernels)
    long_gaps = [g for g in gaps if g >= GAP_MS * 1e3]
    return {
        "span_ms": span / 1e3, "busy_ms": busy / 1e3, "kernel_ms": sum(k["dur"] for k in kernels) / 1e3,
        "gaps_ms": sum(gaps) / 1e3, f"gaps_over_{GAP_MS}ms": {"count": len(long_gaps), "ms": sum(long_gaps) / 1e3},
        "regions": {name: {"ms": r["ms"], "count": r["count"],
                           "top_kernels": dict(sorted(r["kernels"].items(), key=lambda kv: -kv[1])[:top])}
                    for name, r in sorted(regions.items(), key=lambda kv: -kv[1]["ms"])},
    }


def format_summary(summary: dict) -> str:
    share = summary["busy_ms"] / summary["span_ms"] if summary["span_ms"] else 1.0
    lines = [f"kernel span {summary['span_ms']:.1f} ms, GPU busy {summary['busy_ms']:.1f} ms ({share:.1%}), "
             f"gaps {summary['gaps_ms']:.1f} ms"]
    for name, r in summary["regions"].items():
        lines.append(f"{r['ms']:10.2f} ms {r['count']:7d} kernels  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per region")
    args = parser.parse_args()
    summary = summarize(load_trace(args.trace), args.top)
    print(json.dumps(summary, indent=1))
    print(format_summary(summary))


if __name__ == "__main__":
    main()
