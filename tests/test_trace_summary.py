"""benchmarks/trace_summary.py: kernels traced back to the host ops that launched them, busy time and gaps."""

import gzip
import json

import pytest
import torch

from benchmarks.trace_summary import format_summary, load_trace, summarize


def _op(name, ts, dur, tid=1, cat="cpu_op"):
    return {"ph": "X", "cat": cat, "name": name, "pid": 0, "tid": tid, "ts": ts, "dur": dur}


def _launch(correlation, ts, tid=1):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 0, "tid": tid, "ts": ts, "dur": 1,
            "args": {"correlation": correlation}}


def _kernel(name, correlation, ts, dur, stream=7):
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 1, "tid": stream, "ts": ts, "dur": dur,
            "args": {"correlation": correlation}}


def _trace():
    """Forward thread 1: a compiled block (two kernels), then the fused loss; autograd thread 2:
    the block's backward, then an embedding backward; the optimizer on thread 1 at the end."""
    events = [
        _op("ProfilerStep#0", 0, 1000),
        _op("CompiledFunction", 10, 50), _op("aten::mm", 12, 5), _launch(1, 13), _launch(2, 30),
        _op("imdm::masked_nll", 70, 30), _op("aten::addmm", 70, 10), _launch(3, 70),
        _op("autograd::engine::evaluate_function: CompiledFunctionBackward", 100, 100, tid=2), _launch(4, 150, tid=2),
        _op("autograd::engine::evaluate_function: EmbeddingBackward0", 300, 50, tid=2),
        _op("aten::embedding_dense_backward", 305, 40, tid=2), _launch(5, 310, tid=2),
        _op("Optimizer.step#AdamW.step", 400, 100, cat="user_annotation"), _launch(6, 450),
        _kernel("nvjet_a", 1, 1000, 300), _kernel("triton_b", 2, 1300, 100),    # back to back
        _kernel("nll_rows", 3, 1500, 200),                                      # 100 us gap before it
        _kernel("bwd", 4, 1750, 250),                                           # 50 us gap before it
        _kernel("memset_like", 5, 1800, 100, stream=8),                         # inside bwd, another stream
        _kernel("adamw", 6, 2100, 50),                                          # 100 us gap
    ]
    return {"traceEvents": events}


def test_kernels_are_attributed_to_the_regions_that_launched_them():
    regions = summarize(_trace())["regions"]
    assert regions["compiled blocks, forward"]["ms"] == pytest.approx(0.4)
    assert regions["compiled blocks, forward"]["top_kernels"] == {"nvjet_a": pytest.approx(0.3),
                                                                  "triton_b": pytest.approx(0.1)}
    assert regions["head loss (fused)"]["top_kernels"] == {"nll_rows": pytest.approx(0.2)}
    assert regions["compiled blocks, backward"]["count"] == 1
    assert regions["other: aten::embedding_dense_backward in EmbeddingBackward0"]["ms"] == pytest.approx(0.1)
    assert regions["optimizer step"]["ms"] == pytest.approx(0.05)
    assert list(regions)[0] == "compiled blocks, forward"   # largest first


def test_span_busy_time_and_gaps_count_overlaps_once():
    s = summarize(_trace())
    assert s["span_ms"] == pytest.approx(1.15)
    assert s["kernel_ms"] == pytest.approx(1.0)
    assert s["busy_ms"] == pytest.approx(0.9)           # the overlapping 100 us counted once
    assert s["gaps_ms"] == pytest.approx(0.25)
    assert s["gaps_over_0.1ms"] == {"count": 2, "ms": pytest.approx(0.2)}
    assert "GPU busy 0.9 ms (78.3%)" in format_summary(s)


def test_a_launch_belongs_to_the_ops_open_on_its_own_thread_only():
    """Equal starts nest the longer op outside; an op ending at the launch's time, an op that only
    overlaps the one open now, and an op open on another thread do not enclose it; the innermost
    autograd node names a backward launch."""
    events = [
        _op("outer", 0, 100), _op("inner", 0, 50), _launch(1, 10),          # equal starts: inner is innermost
        _op("ended", 100, 20), _launch(2, 120),                              # ends exactly at the launch
        _op("imdm::masked_nll", 200, 100), _op("overlapping", 250, 100), _launch(3, 320),   # the loss ended at 300
        _op("other thread", 400, 100, tid=2), _launch(4, 450),
        _op("autograd::engine::evaluate_function: CheckpointFunctionBackward", 600, 100, tid=2),
        _op("autograd::engine::evaluate_function: MmBackward0", 610, 50, tid=2), _op("aten::mm", 615, 10, tid=2),
        _launch(5, 620, tid=2),
        *(_kernel(f"k{i}", i, 1000 + 10 * i, 5) for i in range(1, 6)),
    ]
    regions = summarize({"traceEvents": events})["regions"]
    assert set(regions) == {"other: inner", "other: no host op", "other: overlapping",
                            "other: aten::mm in MmBackward0"}
    assert regions["other: no host op"]["top_kernels"].keys() == {"k2", "k4"}


def test_a_kernel_whose_launch_is_missing_is_reported_as_such():
    trace = _trace()
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e.get("args", {}).get("correlation") != 3
                            or e["cat"] == "kernel"]
    assert summarize(trace)["regions"]["other: launch not traced"]["ms"] == pytest.approx(0.2)


def test_a_cpu_only_trace_is_refused_with_the_reason(tmp_path):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(4).sum()
    path = tmp_path / "cpu.json"
    prof.export_chrome_trace(str(path))
    with gzip.open(tmp_path / "cpu.json.gz", "wt") as f:
        f.write(path.read_text())
    trace = load_trace(tmp_path / "cpu.json.gz")
    assert trace == json.loads(path.read_text())
    with pytest.raises(ValueError, match="no GPU kernels"):
        summarize(trace)
