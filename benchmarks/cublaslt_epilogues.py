"""cuBLASLt's epilogues at the block MLP's shapes, each with up to 8 of the heuristic's algorithms:
the up-projection (epilogues default, bias, gelu_aux_bias) and the down-projection's input
gradient (default, dgelu, dgelu_bgrad), beside PyTorch's addmm / mm; the kernel each first choice
launches. Finds which epilogue is slow, and whether the heuristic's first choice is the reason.

    python -m benchmarks.cublaslt_epilogues [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import ctypes

import torch

from benchmarks.gpu_timing import require_cuda, time_ms
from benchmarks.results_io import write_result
from imdm.kernels import cublaslt as lt

MODELS = {"large": (1536, 16 * 1024), "small": (768, 32 * 1024)}   # d, tokens per micro-batch
EPILOGUES = {"default": (1, False, False), "bias": (4, True, False), "gelu_aux_bias": (164, True, True),
             "dgelu": (192, False, True), "dgelu_bgrad": (208, True, True)}   # code, bias pointer, aux pointer


def candidates(a, b, out, code, bias, aux, count=8):
    """(descriptor, layouts, heuristic results) for out = epilogue(a @ b), as kernels/cublaslt.py
    builds them, with `count` algorithms."""
    lib, m_rows, k, n = lt._lib(), a.shape[0], a.shape[1], b.shape[1]
    transpose_a = b.stride() == (1, k)
    desc = lt._VOID()
    lt._check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), lt._COMPUTE_32F, 0), "create")
    lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._TRANSA, ctypes.c_int32(int(transpose_a)))
    lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._TRANSB, ctypes.c_int32(0))
    lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._EPILOGUE, ctypes.c_uint32(code))
    if bias is not None:
        lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._BIAS_POINTER, lt._VOID(bias.data_ptr()))
    if aux is not None:
        lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._AUX_POINTER, lt._VOID(aux.data_ptr()))
        lt._set(lib.cublasLtMatmulDescSetAttribute, desc, lt._AUX_LD, ctypes.c_int64(n))
    layout_a = lt._layout(a.dtype, k, n, k) if transpose_a else lt._layout(a.dtype, n, k, n)
    layout_b, layout_d = lt._layout(a.dtype, k, m_rows, k), lt._layout(a.dtype, n, m_rows, n)
    pref = lt._VOID()
    lt._check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "pref")
    lt._set(lib.cublasLtMatmulPreferenceSetAttribute, pref, lt._PREF_WORKSPACE, ctypes.c_uint64(lt.WORKSPACE_BYTES))
    results, found = (lt._HeuristicResult * count)(), ctypes.c_int(0)
    lt._check(lib.cublasLtMatmulAlgoGetHeuristic(lt._handle(0), desc, layout_a, layout_b, layout_d, layout_d, pref,
                                                 count, results, ctypes.byref(found)), "heuristic")
    return desc, layout_a, layout_b, layout_d, list(results)[: found.value]


def launcher(a, b, out, plan, result):
    desc, layout_a, layout_b, layout_d, _ = plan
    workspace = lt._workspace(0, torch.cuda.current_stream().cuda_stream)
    one, zero = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def run():
        lt._check(lt._lib().cublasLtMatmul(lt._handle(0), desc, ctypes.byref(one), b.data_ptr(), layout_a,
                                           a.data_ptr(), layout_b, ctypes.byref(zero), out.data_ptr(), layout_d,
                                           out.data_ptr(), layout_d, ctypes.byref(result.algo), workspace.data_ptr(),
                                           lt.WORKSPACE_BYTES, torch.cuda.current_stream().cuda_stream), "matmul")
    return run


def kernel_names(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.key for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args()
    require_cuda("cublaslt_epilogues")
    g = torch.Generator(device="cuda").manual_seed(0)
    results = {}
    for model, (d, tokens) in MODELS.items():
        def randn(*shape):
            return torch.randn(*shape, device="cuda", generator=g).bfloat16()
        x, w1, b1, dy, w2 = randn(tokens, d), randn(4 * d, d), randn(4 * d), randn(tokens, d), randn(d, 4 * d)
        h, u, du, db = randn(tokens, 4 * d), randn(tokens, 4 * d), randn(tokens, 4 * d), randn(4 * d)
        problems = {"up": (x, w1.t(), h, ("default", "bias", "gelu_aux_bias")),
                    "down_input_grad": (dy, w2, du, ("default", "dgelu", "dgelu_bgrad"))}
        rows = {"torch_addmm_up_ms": time_ms(lambda: torch.addmm(b1, x, w1.t()), args.iters),
                "torch_mm_down_input_grad_ms": time_ms(lambda: dy @ w2, args.iters)}
        for problem, (a, b, out, names) in problems.items():
            for name in names:
                code, uses_bias, uses_aux = EPILOGUES[name]
                bias = (db if problem.startswith("down") else b1) if uses_bias else None
                plan = candidates(a, b, out, code, bias, u if uses_aux else None)
                times = [time_ms(launcher(a, b, out, plan, r), args.iters) for r in plan[4]]
                first = launcher(a, b, out, plan, plan[4][0])
                rows[f"{problem}_{name}"] = {"first_ms": times[0], "best_ms": min(times), "all_ms": times,
                                             "first_kernels": kernel_names(first)}
                print(f"{model} {problem:16s} {name:14s} first {times[0]:.3f} ms, best of {len(times)} "
                      f"{min(times):.3f} ms; kernels {rows[f'{problem}_{name}']['first_kernels']}", flush=True)
        print(f"{model} torch addmm up {rows['torch_addmm_up_ms']:.3f} ms, mm down input grad "
              f"{rows['torch_mm_down_input_grad_ms']:.3f} ms", flush=True)
        results[model] = rows
    write_result("cublaslt_epilogues", "", {"iters": args.iters, "models": MODELS}, results, out_dir=args.results_dir)


if __name__ == "__main__":
    main()
