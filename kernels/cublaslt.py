"""cuBLASLt matmuls with the GELU epilogues, called through ctypes.

PyTorch reaches cuBLASLt's bias epilogue (and a GELU one without its auxiliary output) but not
the two that training needs: GELU_AUX_BIAS (bias + GELU after the product, also writing the
pre-activation) and DGELU (the product times GELU's derivative at that pre-activation). cuBLASLt's
GELU is the tanh approximation. (DGELU_BGRAD, which also sums the bias gradient, runs as a plain
GEMM and a separate epilogue kernel slower than the GEMM itself: docs/performance.md.)
This module binds the handful of cuBLASLt entry points that `gemm_epilogue` needs, from the
library PyTorch itself loaded, after checking that library's version against SUPPORTED_VERSIONS
(the enum values and the heuristic result's layout below are copied from its headers, not read
from them); `usable()` says whether that worked, warning once per process when it did not, so
that imdm.kernels.gelu_mlp runs its eager references instead. Descriptors and the chosen
algorithm are cached per problem, the MAX_PLANS most recently used (an evicted plan's
descriptors are destroyed), and so are the MAX_WORKSPACES most recently used workspaces.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import threading
import warnings
from typing import Callable, Hashable, Optional

import torch
from torch import Tensor

# The values below were copied from the CUDA headers (cublasLt.h, cublas_api.h, library_types.h).
# NVIDIA's nvmath-python generates its cuBLASLt bindings (nvmath/bindings/cycublasLt.pxd) from
# those headers, stating the versions covered: every value used here (the two epilogues, BIAS and
# GELU they are made of, the descriptor and preference attributes, CUBLAS_COMPUTE_32F = 68,
# CUBLAS_OP_N/T, cudaDataType_t 0/2/14, cublasLtMatmulHeuristicResult_t's fields) is the same in
# its releases generated from cuBLAS 11.0.3-12.4.1 (June 2024) through 11.0.3-13.1.0 (0.8.0,
# January 2026), and so are the signatures bound in _lib. SUPPORTED_VERSIONS admits the two major
# versions seen there with the version encoding below (cuBLAS 12.x and 13.x; 11.x numbered its
# versions otherwise, and no PyTorch this package supports ships it); a cuBLASLt outside it is not
# called (usable() is False).
# cublasLtGetVersion() = major * 10000 + minor * 100 + patch (CUBLAS_VERSION in cublas_api.h)
SUPPORTED_VERSIONS = (120000, 140000)   # [12.0.0, 14.0.0)
EPILOGUES = {"gelu_aux_bias": 164, "dgelu": 192}   # cublasLtEpilogue_t
_DATA_TYPE = {torch.float32: 0, torch.float16: 2, torch.bfloat16: 14}   # cudaDataType_t
_COMPUTE_32F = 68
_OP_N, _OP_T = 0, 1
# cublasLtMatmulDescAttributes_t
_TRANSA, _TRANSB, _EPILOGUE, _BIAS_POINTER, _AUX_POINTER, _AUX_LD = 3, 4, 7, 8, 11, 12
# cublasLtMatmulPreferenceAttributes_t
_PREF_WORKSPACE, _PREF_ALIGN_A, _PREF_ALIGN_B, _PREF_ALIGN_C, _PREF_ALIGN_D = 1, 5, 6, 7, 8
WORKSPACE_BYTES = 32 * 1024 * 1024
MAX_PLANS = 128        # cached problems (descriptor, three layouts, algorithm): host memory only
MAX_WORKSPACES = 4     # cached (device, stream) workspaces of WORKSPACE_BYTES on the GPU
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


class CublasLtUnavailable(RuntimeError):
    """The cuBLASLt found cannot be used here: missing, failing to load, or of a version outside
    SUPPORTED_VERSIONS."""


def version_string(version: int) -> str:
    """'12.8.4' for cublasLtGetVersion()'s 120804."""
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def _version_supported(version: int) -> bool:
    low, high = SUPPORTED_VERSIONS
    return low <= version < high


def _load(path: str) -> ctypes.CDLL:
    return ctypes.CDLL(path)


def _open() -> ctypes.CDLL:
    """The cuBLASLt library, its version checked; CublasLtUnavailable when it cannot be used."""
    try:
        path = _library_path()
        lib = _load(path)
        get_version = lib.cublasLtGetVersion
    except Exception as err:   # not found, not loadable (OSError), no CUDA, no such symbol
        raise CublasLtUnavailable(f"cuBLASLt could not be loaded: {type(err).__name__}: {err}") from err
    get_version.argtypes, get_version.restype = [], ctypes.c_size_t
    version = int(get_version())
    if not _version_supported(version):
        raise CublasLtUnavailable(
            f"cuBLASLt {version_string(version)} ({version}, {path}) is outside the versions whose enum "
            f"values kernels/cublaslt.py holds, {version_string(SUPPORTED_VERSIONS[0])} up to "
            f"{version_string(SUPPORTED_VERSIONS[1])} (exclusive)")
    return lib


@functools.cache
def _lib() -> ctypes.CDLL:
    lib = _open()
    signatures = {
        "cublasLtCreate": [ctypes.POINTER(_VOID)],
        "cublasLtMatmulDescCreate": [ctypes.POINTER(_VOID), ctypes.c_int, ctypes.c_int],
        "cublasLtMatmulDescDestroy": [_VOID],
        "cublasLtMatmulDescSetAttribute": [_VOID, ctypes.c_int, _VOID, ctypes.c_size_t],
        "cublasLtMatrixLayoutCreate": [ctypes.POINTER(_VOID), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64,
                                       ctypes.c_int64],
        "cublasLtMatrixLayoutDestroy": [_VOID],
        "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(_VOID)],
        "cublasLtMatmulPreferenceDestroy": [_VOID],
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


_UNUSABLE: Optional[str] = None   # why cuBLASLt cannot be used, once probed ("" when it can)
_PROBE_LOCK = threading.Lock()


def unusable_reason() -> Optional[str]:
    """None when cuBLASLt loads and its version is supported, else why not (probed once)."""
    global _UNUSABLE
    with _PROBE_LOCK:
        if _UNUSABLE is None:
            try:
                _lib()
                _UNUSABLE = ""
            except Exception as err:   # CublasLtUnavailable, or a missing entry point
                _UNUSABLE = str(err) if isinstance(err, CublasLtUnavailable) else f"{type(err).__name__}: {err}"
                warnings.warn(f"{_UNUSABLE}; the GELU MLP's epilogue GEMMs (imdm.kernels.gelu_mlp) run their eager "
                              "references (F.linear, GELU) instead", RuntimeWarning, stacklevel=2)
        return _UNUSABLE or None


def usable() -> bool:
    """Whether `gemm_epilogue` can run here. Probes the library the first time; when it cannot be
    used, warns once per process (RuntimeWarning naming the reason and the version found)."""
    return unusable_reason() is None


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


class _LRU:
    """At most `capacity` values by key, the least recently used evicted first and handed to
    `release` (also every value on `clear`). Not thread-safe: callers hold _LOCK."""

    def __init__(self, capacity: int, release: Callable[[object], None]):
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity, self._release = capacity, release
        self._items: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Hashable, make: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = make()
        while len(self._items) > self.capacity:
            self._release(self._items.popitem(last=False)[1])
        return value

    def clear(self) -> None:
        while self._items:
            self._release(self._items.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


# A workspace dropped from the cache returns to PyTorch's caching allocator on the stream it was
# allocated on, so a GEMM still running there keeps it until done (the allocator is stream-ordered).
_WORKSPACES = _LRU(MAX_WORKSPACES, lambda workspace: None)


def _workspace(device: int, stream: int) -> Tensor:
    """WORKSPACE_BYTES on `device` for GEMMs on `stream` (the current stream when first asked)."""
    return _WORKSPACES.get((device, stream), lambda: torch.empty(WORKSPACE_BYTES, dtype=torch.uint8,
                                                                   device=f"cuda:{device}"))


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


def _destroy(lib, desc: _VOID, layouts) -> None:
    """Frees a matmul descriptor and matrix layouts. (Their statuses are not checked: these only
    free host memory, and a failure would leak it rather than make a result wrong.)"""
    lib.cublasLtMatmulDescDestroy(desc)
    for layout in layouts:
        lib.cublasLtMatrixLayoutDestroy(layout)


def _destroy_plan(plan) -> None:
    """Frees an evicted plan's descriptors: host memory, which cublasLtMatmul reads when it enqueues
    the GEMM, so a GEMM already launched does not need them (callers hold _LOCK)."""
    desc, layout_a, layout_b, layout_d, _ = plan
    _destroy(_lib(), desc, (layout_a, layout_b, layout_d))


_PLANS = _LRU(MAX_PLANS, lambda plan: _destroy_plan(plan))
_LOCK = threading.Lock()   # forward and autograd's backward thread share the cached descriptors


def clear_cache() -> None:
    """Destroys every cached plan and drops the cached workspaces (the next GEMMs rebuild them)."""
    with _LOCK:
        _PLANS.clear()
        _WORKSPACES.clear()


def _plan(device: int, m: int, n: int, k: int, transpose_a: bool, dtype: torch.dtype, epilogue: str,
          alignments: tuple[int, ...], bias: Optional[Tensor], aux: Tensor):
    """(matmul descriptor, layouts A, B, D, algorithm) for D[m, n] = op(A)[m, k] B[k, n] (cuBLASLt's
    column-major view), cached per problem and pointer alignments (A, B, D, aux, bias): `bias` and
    `aux` are the first call's, set before the heuristic, which reads their alignment (every call
    sets its own)."""
    key = (device, m, n, k, transpose_a, dtype, epilogue, alignments)
    return _PLANS.get(key, lambda: _new_plan(*key, bias, aux))


def _new_plan(device, m, n, k, transpose_a, dtype, epilogue, alignments, bias, aux):
    lib = _lib()
    desc, layouts = _VOID(), []
    _check(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _COMPUTE_32F, _DATA_TYPE[torch.float32]),
           "cublasLtMatmulDescCreate")
    try:
        _set(lib.cublasLtMatmulDescSetAttribute, desc, _TRANSA, ctypes.c_int32(_OP_T if transpose_a else _OP_N))
        _set(lib.cublasLtMatmulDescSetAttribute, desc, _TRANSB, ctypes.c_int32(_OP_N))
        _set(lib.cublasLtMatmulDescSetAttribute, desc, _EPILOGUE, ctypes.c_uint32(EPILOGUES[epilogue]))
        _set_pointers(desc, bias, aux)
        _set(lib.cublasLtMatmulDescSetAttribute, desc, _AUX_LD, ctypes.c_int64(m))
        for rows, cols, ld in ((k, m, k) if transpose_a else (m, k, m), (k, n, k), (m, n, m)):
            layouts.append(_layout(dtype, rows, cols, ld))
        layout_a, layout_b, layout_d = layouts
        pref = _VOID()
        _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
        try:
            result = _heuristic(lib, pref, device, desc, layout_a, layout_b, layout_d, alignments)
        finally:   # the preference only serves the heuristic
            lib.cublasLtMatmulPreferenceDestroy(pref)
        if result is None:
            raise RuntimeError(f"cuBLASLt has no algorithm for epilogue {epilogue} at m={m} n={n} k={k} "
                               f"({dtype}, alignments {alignments})")
    except BaseException:   # nothing of an incomplete plan outlives it
        _destroy(lib, desc, layouts)
        raise
    return desc, layout_a, layout_b, layout_d, result


def _heuristic(lib, pref, device, desc, layout_a, layout_b, layout_d, alignments) -> Optional[_HeuristicResult]:
    """The heuristic's first algorithm under WORKSPACE_BYTES and the operands' alignments, or None."""
    _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, _PREF_WORKSPACE, ctypes.c_uint64(WORKSPACE_BYTES))
    align_a, align_b, align_d = alignments[:3]
    for attribute, value in ((_PREF_ALIGN_A, align_a), (_PREF_ALIGN_B, align_b), (_PREF_ALIGN_C, align_d),
                             (_PREF_ALIGN_D, align_d)):
        _set(lib.cublasLtMatmulPreferenceSetAttribute, pref, attribute, ctypes.c_uint32(value))
    result, found = _HeuristicResult(), ctypes.c_int(0)
    _check(lib.cublasLtMatmulAlgoGetHeuristic(_handle(device), desc, layout_a, layout_b, layout_d, layout_d, pref, 1,
                                              ctypes.byref(result), ctypes.byref(found)),
           "cublasLtMatmulAlgoGetHeuristic")
    return result if found.value >= 1 else None


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
    lib = _lib()
    with _LOCK:
        workspace = _workspace(device, stream)
        desc, layout_a, layout_b, layout_d, result = _plan(device, n, m_rows, k, transpose_a, a.dtype, epilogue,
                                                           alignments, bias, aux)
        _set_pointers(desc, bias, aux)
        _check(lib.cublasLtMatmul(_handle(device), desc, ctypes.byref(_ONE), b.data_ptr(), layout_a, a.data_ptr(),
                                  layout_b, ctypes.byref(_ZERO), out.data_ptr(), layout_d, out.data_ptr(), layout_d,
                                  ctypes.byref(result.algo), workspace.data_ptr(), WORKSPACE_BYTES, stream),
               "cublasLtMatmul")
