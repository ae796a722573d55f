"""cuBLASLt matmuls with the GELU epilogues, called through ctypes.

PyTorch reaches cuBLASLt's bias epilogue (and a GELU one without its auxiliary output) but not
the two that training needs: GELU_AUX_BIAS (bias + GELU after the product, also writing the
pre-activation) and DGELU (the product times GELU's derivative at that pre-activation). cuBLASLt's
GELU is the tanh approximation. (DGELU_BGRAD, which also sums the bias gradient, runs as a plain
GEMM and a separate epilogue kernel that took 0.6 ms at a large block's shape on an H200, slower
than the GEMM itself: benchmarks/cublaslt_epilogues.py.)
This module binds the handful of cuBLASLt entry points that `gemm_epilogue` needs, from the
library PyTorch itself loaded; descriptors and the chosen algorithm are cached per problem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from typing import Optional

import torch
from torch import Tensor

EPILOGUES = {"gelu_aux_bias": 164, "dgelu": 192}   # cublasLtEpilogue_t
_DATA_TYPE = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 14}   # cudaDataType_t
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
# cublasLtMatmulDescAttributes_t
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER, _AUX_POINTER, _AUX_LD = 3, 4, 7, 8, 11, 12
# cublasLtMatmulPreferenceAttributes_t
_PREF_WORKSPACE, _PREF_ALIGN_A, _PREF_ALIGN_B, _PREF_ALIGN_C, _PREF_ALIGN_D = 1, 5, 6, 7, 8
WORKSPACE_BYTES = 32 * 1024 * 1024
_VOID = ctypes.c_void_p


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspace_size", ctypes.c_size_t), ("state", ctypes.c_int),
                ("waves_count", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def _library_path() -> str:
    """The cuBLASLt that this process's PyTorch loaded (so both share one copy)."""
    for attempt in range(2):
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libcublasLt" in line:
                    return line.split()[-1]
        if attempt == 0:   # PyTorch may load cuBLAS lazily: one matmul makes it do so
            torch.ones(8, 8, device="cuda") @ torch.ones(8, 8, device="cuda")
    found = ctypes.util.find_library("cublasLt")
    if found is None:
        raise RuntimeError("cuBLASLt not found: neither loaded by PyTorch nor on the library path")
    return found


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(_library_path())
    signatures = {
        "cublasLtCreate": [ctypes.POINTER(_VOID)],
        "cublasLtMatmulDescCreate": [ctypes.POINTER(_VOID), ctypes.c_int, ctypes.c_int],
        "cublasLtMatmulDescSetAttribute": [_VOID, ctypes.c_int, _VOID, ctypes.c_size_t],
        "cublasLtMatrixLayoutCreate": [ctypes.POINTER(_VOID), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                       ctypes.c_int64],
        "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(_VOID)],
        "cublasLtMatmulPreferenceSetAttribute": [_VOID, ctypes.c_int, _VOID, ctypes.c_size_t],
        "cublasLtMatmulAlgoGetHeuristic": [_VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, ctypes.c_int,
                                           ctypes.POINTER(_HeuristicResult), ctypes.POINTER(ctypes.c_int)],
        "cublasLtMatmul": [_VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID,
                           _VOID, _VOID, ctypes.c_size_t, _VOID],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return lib


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"{call} failed with cublasStatus_t {status}")


def _set(setter, obj, attribute: int, value) -> None:
    _check(setter(obj, attribute, ctypes.byref(value), ctypes.sizeof(value)), setter.__name__)


@functools.cache
def _handle(device: int) -> _VOID:
    handle = _VOID()
    with torch.cuda.device(device):
        _check(_lib().cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


@functools.cache
def _workspace(device: int, stream: int) -> Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=f"cuda:{device}")


def _layout(dtype: torch.dtype, rows: int, cols: int, ld: int) -> _VOID:
    layout = _VOID()
    _check(_lib().cublasLtMatrixLayoutCreate(ctypes.byref(layout), _DATA_TYPE[dtype], rows, cols, ld),
           "cublasLtMatrixLayoutCreate")
    return layout


def _alignment(pointer: int) -> int:
    """The largest power of two up to 256 that divides `pointer`."""
    return min(256, pointer & -pointer) if pointer else 256


def _set_pointers(desc: _VOID, bias: Optional[Tensor], aux: Tensor) -> None:
    if bias is not None:
        _set(_lib().cublasLtMatmulDescSetAttribute, desc, _BIAS_POINTER, _VOID(bias.data_ptr()))
    _set(_lib().cublasLtMatmulDescSetAttribute, desc, _AUX_POINTER, _VOID(aux.data_ptr()))


_PLANS: dict[tuple, tuple] = {}
_LOCK = threading.Lock()   # forward and autograd's backward thread share the cached descriptors


def _plan(device: int, m: int, n: int, k: int, transpose_a: bool, dtype: torch.dtype, epilogue: str,
          alignments: tuple[int, ...], bias: Optional[Tensor], aux: Tensor):
    """(matmul descriptor, layouts A, B, D, algorithm) for D[m, n] = op(A)[m, k] B[k, n] (cuBLASLt's
    column-major view), cached per problem and pointer alignments (A, B, D, aux, bias): `bias` and
    `aux` are the first call's, set before the heuristic, which reads their alignment (every call
    sets its own)."""
    key = (device, m, n, k, transpose_a, dtype, epilogue, alignments)
    if key not in _PLANS:
        _PLANS[key] = _new_plan(*key, bias, aux)
    return _PLANS[key]


def _new_plan(device, m, n, k, transpose_a, dtype, epilogue, alignments, bias, aux):
    lib = _lib()
    desc = _VOID()
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _DATA_TYPE[torch.float32]),
           "cublasLtMatmulDescCreate")
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _TRANSA, ctypes.c_int32(_OP_T if transpose_a else _OP_N))
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _TRANSB, ctypes.c_int32(_OP_N))
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _EPILOGUE, ctypes.c_uint32(EPILOGUES[epilogue]))
    _set_pointers(desc, bias, aux)
    _set(lib.cublasLtMatmulDescSetAttribute, desc, _AUX_LD, ctypes.c_int64(m))
    layout_a = _layout(dtype, k, m, k) if transpose_a else _layout(dtype, m, k, m)
    layout_b, layout_d = _layout(dtype, k, n, k), _layout(dtype, m, n, m)
    pref = _VOID()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, _PREF_WORKSPACE, ctypes.c_uint64(WORKSPACE_BYTES))
    align_a, align_b, align_d = alignments[:3]
    for attribute, value in ((_PREF_ALIGN_A, align_a), (_PREF_ALIGN_B, align_b), (_PREF_ALIGN_C, align_d),
                             (_PREF_ALIGN_D, align_d)):
        _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, attribute, ctypes.c_uint32(value))
    result, found = _HeuristicResult(), ctypes.c_int(0)
    _check(lib.cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, layout_a, layout_b, layout_d, layout_d, pref, 1,
                                              ctypes.byref(result), ctypes.byref(found)),
           "cublasLtMatmulAlgoGetHeuristic")
    if found.value < 1:
        raise RuntimeError(f"cuBLASLt has no algorithm for epilogue {epilogue} at m={m} n={n} k={k} "
                           f"({dtype}, alignments {alignments})")
    return desc, layout_a, layout_b, layout_d, result


_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)


def gemm_epilogue(a: Tensor, b: Tensor, out: Tensor, epilogue: str, bias: Optional[Tensor], aux: Tensor) -> None:
    """out[M, N] = epilogue(a[M, K] @ b[K, N]) in row-major terms, float32 accumulation.

    gelu_aux_bias: out = GELU_tanh(a @ b + bias), aux = a @ b + bias (both out's dtype);
    dgelu:         out = (a @ b) * GELU_tanh'(aux) (bias None).
    a, out, aux and bias are contiguous; b is contiguous or the transpose of a contiguous [N, K]
    (an nn.Linear weight); a, b, out, aux and bias [N] share one 16-bit dtype and the current CUDA
    device; N and K are multiples of 8 (16-byte rows). M = 0 writes nothing."""
    m_rows, k = a.shape
    n = b.shape[1]
    if b.stride() == (n, 1):
        transpose_a = False
    elif b.stride() == (1, k):
        transpose_a = True
    else:
        raise ValueError(f"b must be contiguous or a transposed contiguous matrix, got strides {b.stride()}")
    for name, t in (("a", a), ("out", out), ("aux", aux), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    if n % 8 or k % 8:
        raise ValueError(f"cuBLASLt epilogue GEMMs need N and K multiples of 8, got N={n} K={k}")
    if epilogue not in EPILOGUES or (bias is None) != (epilogue == "dgelu"):
        raise ValueError(f"epilogue {epilogue!r}: expected gelu_aux_bias with a bias or dgelu without one")
    tensors = (a, b, out, aux) + (() if bias is None else (bias,))
    if len({t.dtype for t in tensors}) > 1 or a.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"a, b, out, aux, bias must share one of bf16/fp16, got {[t.dtype for t in tensors]}")
    if out.shape != (m_rows, n) or aux.shape != (m_rows, n) or (bias is not None and bias.shape != (n,)):
        raise ValueError(f"shapes: a {tuple(a.shape)} b {tuple(b.shape)} out {tuple(out.shape)} aux {tuple(aux.shape)} "
                         f"bias {None if bias is None else tuple(bias.shape)}")
    if len({t.device for t in tensors}) > 1:
        raise ValueError(f"a, b, out, aux, bias must share one device, got {[str(t.device) for t in tensors]}")
    if m_rows == 0:
        return
    if a.device.type != "cuda" or a.device.index != torch.cuda.current_device():
        raise ValueError(f"the operands must live on the current CUDA device, got {a.device}")
    device = a.device.index
    alignments = tuple(_alignment(t.data_ptr()) for t in (b, a, out, aux)) + (
        256 if bias is None else _alignment(bias.data_ptr()),)
    stream = torch.cuda.current_stream(device).cuda_stream
    workspace = _workspace(device, stream)
    lib = _lib()
    with _LOCK:
        desc, layout_a, layout_b, layout_d, result = _plan(device, n, m_rows, k, transpose_a, a.dtype, epilogue,
                                                           alignments, bias, aux)
        _set_pointers(desc, bias, aux)
        _check(lib.cublasLtMatmul(_handle(device), desc, ctypes.byref(_ONE), b.data_ptr(), layout_a, a.data_ptr(),
                                  layout_b, ctypes.byref(_ZERO), out.data_ptr(), layout_d, out.data_ptr(), layout_d,
                                  ctypes.byref(result.algo), workspace.data_ptr(), WORKSPACE_BYTES, stream),
               "cublasLtMatmul")
