"""imdm.kernels.cublaslt's guard and caches, on CPU with stand-ins for the library: a cuBLASLt
that is missing, fails to load or is of a version outside SUPPORTED_VERSIONS leaves the GELU MLP
on its eager references with one warning per process; the plan cache keeps the MAX_PLANS most
recently used plans and destroys the descriptors of those it drops; a plan that cannot be
completed destroys what it made. The `gpu` cases run the real library."""

import ctypes
import warnings

import pytest
import torch
import torch.nn.functional as F

from imdm.kernels import cublaslt
from imdm.kernels import gelu_mlp as gelu_mlp_module
from imdm.kernels.gelu_mlp import gelu_mlp


class FakeLib:
    """Stands in for the loaded library: every entry point records its call and returns
    CUBLAS_STATUS_SUCCESS; a *Create hands out a new integer as the created object;
    cublasLtGetVersion returns `version`."""

    def __init__(self, version: int = 120804):
        self.version, self.calls, self._made = version, [], 1000

    def __getattr__(self, name):
        def entry_point(*args):
            self.calls.append((name, args))
            if name == "cublasLtGetVersion":
                return self.version
            if name.endswith("Create"):
                self._made += 1
                args[0]._obj.value = self._made   # the out-parameter, passed by ctypes.byref
            return 0
        entry_point.__name__ = name
        setattr(self, name, entry_point)
        return entry_point

    def destroyed(self, kind: str) -> list[int]:
        return [args[0].value for name, args in self.calls if name == f"cublasLt{kind}Destroy"]


@pytest.fixture
def fresh_probe(monkeypatch):
    """cuBLASLt not probed yet in this process (and the probe's outcome forgotten afterwards)."""
    monkeypatch.setattr(cublaslt, "_UNUSABLE", None)
    cublaslt._lib.cache_clear()
    yield
    cublaslt._lib.cache_clear()


def _raise(err):
    def fail(*args):
        raise err
    return fail


CAUSES = {   # how the library fails: (what is patched, with what) and a phrase of the warning
    "missing": ({"_library_path": _raise(RuntimeError("cuBLASLt not found: neither loaded by PyTorch nor on the "
                                                      "library path"))}, "cuBLASLt not found"),
    "unloadable": ({"_library_path": lambda: "/nowhere/libcublasLt.so.13",
                    "_load": _raise(OSError("libcublasLt.so.13: cannot open shared object file"))},
                   "cannot open shared object file"),
    "too_old": ({"_library_path": lambda: "/fake/libcublasLt.so.11", "_load": lambda path: FakeLib(111103)},
                "cuBLASLt 11.11.3 (111103, /fake/libcublasLt.so.11) is outside"),
    "too_new": ({"_library_path": lambda: "/fake/libcublasLt.so.14", "_load": lambda path: FakeLib(140100)},
                "cuBLASLt 14.1.0 (140100, /fake/libcublasLt.so.14) is outside"),
}


@pytest.mark.parametrize("version, supported", [(110902, False), (119999, False), (120000, True), (120804, True),
                                                (130100, True), (139999, True), (140000, False), (140100, False)])
def test_loader_admits_cublas_12_and_13_only(version, supported, monkeypatch):
    monkeypatch.setattr(cublaslt, "_library_path", lambda: "/fake/libcublasLt.so")
    monkeypatch.setattr(cublaslt, "_load", lambda path: FakeLib(version))
    if supported:
        assert cublaslt._open().version == version
    else:
        with pytest.raises(cublaslt.CublasLtUnavailable,
                           match=rf"cuBLASLt {cublaslt.version_string(version)} \({version}, /fake/libcublasLt.so\) "
                                 r"is outside .* 12\.0\.0 up to 14\.0\.0 \(exclusive\)"):
            cublaslt._open()


def test_version_string():
    assert [cublaslt.version_string(v) for v in (120804, 130100, 120000)] == ["12.8.4", "13.1.0", "12.0.0"]


def _mlp_and_reference(d: int = 16, seed: int = 0):
    """gelu_mlp's inputs (leaves needing gradients) and a function computing the same MLP through
    autograd of F.linear and F.gelu."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(4 * d, d, generator=g) / d ** 0.5, torch.randn(4 * d, generator=g),
              torch.randn(d, 4 * d, generator=g) / (2 * d), torch.randn(d, generator=g)]

    def reference(x, w1, b1, w2, b2):
        return F.linear(F.gelu(F.linear(x, w1, b1), approximate="tanh"), w2, b2)
    return [p.requires_grad_() for p in params], reference


@pytest.mark.parametrize("cause", CAUSES)
def test_gelu_mlp_falls_back_to_the_references_with_one_warning(cause, monkeypatch, fresh_probe):
    """With the shape check passed (as for bf16 CUDA operands) but no usable cuBLASLt, both GEMMs
    of three forward + backward passes run the eager references (gemm_epilogue is never reached:
    it would reject these CPU tensors) and equal autograd's; one RuntimeWarning names the reason."""
    patches, phrase = CAUSES[cause]
    for name, value in patches.items():
        monkeypatch.setattr(cublaslt, name, value)
    monkeypatch.setattr(gelu_mlp_module, "_cublaslt_shapes", lambda x, weight: True)
    monkeypatch.setattr(cublaslt, "gemm_epilogue", _raise(AssertionError("cuBLASLt reached")))
    calls = []
    for name in ("linear_gelu_reference", "matmul_dgelu_reference"):
        original = getattr(gelu_mlp_module, name)
        monkeypatch.setattr(gelu_mlp_module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    params, reference = _mlp_and_reference()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")     # once per process by the module's own doing, not the filters'
        for rows in (5, 8, 3):
            x = torch.randn(2, rows, 16, requires_grad=True)
            y = gelu_mlp(x, *params)
            grads = torch.autograd.grad(y.square().sum(), [x, *params])
            y_ref = reference(x, *params)
            torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
            for got, want in zip(grads, torch.autograd.grad(y_ref.square().sum(), [x, *params])):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert calls == ["linear_gelu_reference", "matmul_dgelu_reference"] * 3
    ours = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert phrase in str(ours[0].message) and "eager references" in str(ours[0].message)
    assert not cublaslt.usable() and phrase in cublaslt.unusable_reason()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real probe succeeds where CUDA is")
def test_real_probe_without_cuda_falls_back(monkeypatch, fresh_probe):
    """Unpatched loader on a machine without CUDA (PyTorch cannot load cuBLAS): the MLP still
    computes the reference with one warning."""
    monkeypatch.setattr(gelu_mlp_module, "_cublaslt_shapes", lambda x, weight: True)
    params, reference = _mlp_and_reference(seed=1)
    x = torch.randn(7, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            torch.testing.assert_close(gelu_mlp(x, *params), reference(x, *params), rtol=1e-5, atol=1e-6)
    assert [issubclass(w.category, RuntimeWarning) and "cuBLASLt could not be loaded" in str(w.message)
            for w in caught] == [True]


def test_cpu_operands_never_probe_cublaslt(fresh_probe):
    """On CPU operands (the references' own case) the library is neither loaded nor warned about."""
    params, reference = _mlp_and_reference(seed=2)
    x = torch.randn(3, 16, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = gelu_mlp(x, *params)
        y.sum().backward()
    torch.testing.assert_close(y, reference(x, *params), rtol=1e-5, atol=1e-6)
    assert not [w for w in caught if "cuBLASLt" in str(w.message)]
    assert cublaslt._UNUSABLE is None and cublaslt._lib.cache_info().currsize == 0


def test_lru_keeps_the_most_recently_used_and_releases_the_rest():
    released, made = [], []

    def make(value):
        return lambda: made.append(value) or value
    cache = cublaslt._LRU(3, released.append)
    for key in "abc":
        assert cache.get(key, make(key.upper())) == key.upper()
    assert cache.get("a", make("A2")) == "A" and made == ["A", "B", "C"]     # a hit: nothing made
    cache.get("d", make("D"))                                                 # evicts b, the least recent
    assert released == ["B"] and len(cache) == 3 and "b" not in cache and "a" in cache
    assert cache.get("b", make("B2")) == "B2" and released == ["B", "C"]
    with pytest.raises(ZeroDivisionError):                                    # a failed make changes nothing
        cache.get("e", lambda: 1 / 0)
    assert len(cache) == 3 and released == ["B", "C"]
    cache.clear()
    assert released == ["B", "C", "A", "D", "B2"] and len(cache) == 0
    with pytest.raises(ValueError):
        cublaslt._LRU(0, released.append)


def test_plan_cache_is_bounded_and_destroys_evicted_descriptors(monkeypatch):
    """_plan through the module's own cache: MAX_PLANS + 5 problems keep the MAX_PLANS most recently
    used (the first among them, used again), the five least recently used plans' descriptor and
    three layouts destroyed once each; clear_cache destroys the rest."""
    lib = FakeLib()
    monkeypatch.setattr(cublaslt, "_lib", lambda: lib)
    made = []

    def new_plan(device, m, n, k, transpose_a, dtype, epilogue, alignments, bias, aux):
        ids = [10 * m + i for i in range(4)]   # desc, layouts a, b, d
        made.append(ids)
        return (*(ctypes.c_void_p(i) for i in ids), "algorithm")
    monkeypatch.setattr(cublaslt, "_new_plan", new_plan)
    assert len(cublaslt._PLANS) == 0 and cublaslt._PLANS.capacity == cublaslt.MAX_PLANS
    aux = torch.zeros(1)
    try:
        for m in range(1, cublaslt.MAX_PLANS + 6):
            cublaslt._plan(0, m, 8, 8, False, torch.bfloat16, "dgelu", (256,) * 5, None, aux)
            if m == cublaslt.MAX_PLANS:   # the cache is full; plan 1 used again, so plan 2 is the oldest
                assert cublaslt._plan(0, 1, 8, 8, False, torch.bfloat16, "dgelu", (256,) * 5, None, aux)[4] \
                    == "algorithm"
        assert len(made) == cublaslt.MAX_PLANS + 5 and len(cublaslt._PLANS) == cublaslt.MAX_PLANS
        evicted = [2, 3, 4, 5, 6]
        assert lib.destroyed("MatmulDesc") == [10 * m for m in evicted]
        assert lib.destroyed("MatrixLayout") == [10 * m + i for m in evicted for i in (1, 2, 3)]
    finally:
        cublaslt.clear_cache()
    assert len(cublaslt._PLANS) == 0
    assert sorted(lib.destroyed("MatmulDesc")) == [10 * m for m in range(1, cublaslt.MAX_PLANS + 6)]


@pytest.mark.parametrize("found", [True, False])
def test_new_plan_frees_its_preference_and_an_incomplete_plan(found, monkeypatch):
    """The preference is destroyed once the heuristic has answered; when it finds no algorithm,
    the descriptor and layouts made so far are destroyed before the error."""
    lib = FakeLib()
    monkeypatch.setattr(cublaslt, "_lib", lambda: lib)
    result = cublaslt._HeuristicResult()
    monkeypatch.setattr(cublaslt, "_heuristic", lambda *a: result if found else None)
    bias, aux = torch.zeros(24, dtype=torch.bfloat16), torch.zeros(4, 24, dtype=torch.bfloat16)
    args = (0, 24, 4, 16, True, torch.bfloat16, "gelu_aux_bias", (256,) * 5, bias, aux)
    if found:
        desc, layout_a, layout_b, layout_d, algo = cublaslt._new_plan(*args)
        assert algo is result and lib.destroyed("MatmulDesc") == lib.destroyed("MatrixLayout") == []
        assert [desc.value, layout_a.value, layout_b.value, layout_d.value] == [1001, 1002, 1003, 1004]
    else:
        with pytest.raises(RuntimeError, match="no algorithm for epilogue gelu_aux_bias"):
            cublaslt._new_plan(*args)
        assert lib.destroyed("MatmulDesc") == [1001] and lib.destroyed("MatrixLayout") == [1002, 1003, 1004]
    assert lib.destroyed("MatmulPreference") == [1005]


@pytest.mark.gpu
def test_cuda_cublaslt_is_usable_and_its_plans_are_bounded(monkeypatch):
    """The cuBLASLt PyTorch loaded is of a supported version; with room for two plans, GEMMs at
    four shapes (twice each) evict and rebuild plans and still match the references."""
    assert cublaslt.usable(), cublaslt.unusable_reason()
    assert cublaslt._version_supported(cublaslt._lib().cublasLtGetVersion())
    monkeypatch.setattr(cublaslt, "_PLANS", cublaslt._LRU(2, cublaslt._destroy_plan))
    torch.manual_seed(0)
    w1, b1 = torch.randn(64, 32, device="cuda").bfloat16(), torch.randn(64, device="cuda").bfloat16()
    for rows in (8, 16, 24, 40) * 2:
        x = torch.randn(rows, 32, device="cuda").bfloat16()
        h, u = torch.ops.imdm.linear_gelu(x, w1, b1)
        h_ref, u_ref = gelu_mlp_module.linear_gelu_reference(x, w1, b1)
        torch.testing.assert_close(u, u_ref, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(h, h_ref, rtol=2e-2, atol=2e-2)
        assert len(cublaslt._PLANS) <= 2
    cublaslt._PLANS.clear()
