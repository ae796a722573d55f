"""The block MLP with GELU in the matmuls' epilogues (imdm.kernels.gelu_mlp): the same function and
gradients as Linear -> GELU(tanh) -> Linear under autograd, through the eager references on CPU
and through cuBLASLt on CUDA (bf16, against float64, beside the reference's own error)."""

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from imdm.kernels import gelu_mlp as gelu_mlp_module
from imdm.kernels.backend import kernel_chosen
from imdm.kernels.cublaslt import gemm_epilogue
from imdm.kernels.gelu_mlp import gelu_tanh_derivative, linear_gelu_reference, matmul_dgelu_reference
from imdm.models.dit import BlockMLP, DiTBlock, DiTConfig
from imdm.models.gemm_grad_linear import keep_weight_grads


def test_gelu_tanh_derivative_matches_autograd():
    u = torch.cat([torch.linspace(-12, 12, 2001, dtype=torch.float64), torch.tensor([0.0, -1e-8, 40.0, -40.0],
                                                                                    dtype=torch.float64)])
    u.requires_grad_()
    (grad,) = torch.autograd.grad(F.gelu(u, approximate="tanh").sum(), u)
    torch.testing.assert_close(gelu_tanh_derivative(u.detach()), grad, rtol=1e-12, atol=1e-14)


def test_references_are_the_ops_of_linear_gelu_and_its_backward():
    """At odd shapes in float64: (h, u) and du equal what autograd computes for
    GELU_tanh(x W^T + b) followed by a linear layer with weight W2."""
    torch.manual_seed(0)
    x, w1, b1 = (torch.randn(47, 123, dtype=torch.float64), torch.randn(37, 123, dtype=torch.float64),
                 torch.randn(37, dtype=torch.float64))
    w2, dy = torch.randn(11, 37, dtype=torch.float64), torch.randn(47, 11, dtype=torch.float64)
    u = F.linear(x, w1, b1)
    h = F.gelu(u, approximate="tanh")
    h_ref, u_ref = linear_gelu_reference(x, w1, b1)
    torch.testing.assert_close(h_ref, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u_ref, u, rtol=1e-12, atol=1e-12)
    u_leaf = u.detach().requires_grad_()
    (du,) = torch.autograd.grad(F.linear(F.gelu(u_leaf, approximate="tanh"), w2), u_leaf, dy)
    torch.testing.assert_close(matmul_dgelu_reference(dy, w2, u_ref), du, rtol=1e-12, atol=1e-12)


def _twins(d: int, kernels: str, device: str = "cpu", seed: int = 0):
    """BlockMLP(d, kernels) and an nn.Sequential twin with the same weights."""
    torch.manual_seed(seed)
    twin = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d)).to(device)
    mlp = BlockMLP(d, kernels).to(device)
    mlp.load_state_dict(twin.state_dict())
    return mlp, twin


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("kept", [False, True])
def test_block_mlp_trains_like_linear_gelu_linear(compiled, kept, monkeypatch):
    """Three micro-batches through the fused autograd function (the references on CPU): outputs, the
    input gradient and every parameter gradient equal nn.Sequential's, whether the weight
    gradients are returned or added into the kept .grad in place; both ops ran once each."""
    calls = []
    for name in ("linear_gelu_reference", "matmul_dgelu_reference"):
        original = getattr(gelu_mlp_module, name)
        monkeypatch.setattr(gelu_mlp_module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    mlp, twin = _twins(13, "triton")
    kept_grads = [p.grad for p in keep_weight_grads(mlp)] if kept else []
    run = torch.compile(mlp, fullgraph=True) if compiled else mlp
    for rows in (5, 7, 3):
        x = torch.randn(2, rows, 13)
        x_ours, x_twin = x.clone().requires_grad_(), x.clone().requires_grad_()
        calls.clear()
        y = run(x_ours)
        torch.testing.assert_close(y, twin(x_twin), rtol=1e-5, atol=1e-6)
        y.square().sum().backward()
        twin(x_twin).square().sum().backward()
        torch.testing.assert_close(x_ours.grad, x_twin.grad, rtol=1e-5, atol=1e-6)
        assert calls == ["linear_gelu_reference", "matmul_dgelu_reference"]
    for a, b in zip(mlp.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is g for p, g in zip((mlp[0].weight, mlp[2].weight), kept_grads))


def test_block_mlp_recomputed_by_activation_checkpointing(monkeypatch):
    """Under non-reentrant activation checkpointing the fused forward runs twice (the second time to
    rebuild what the backward saves) and the kept weight gradients are still added into once."""
    calls = []
    original = gelu_mlp_module.linear_gelu_reference
    monkeypatch.setattr(gelu_mlp_module, "linear_gelu_reference", lambda *a: calls.append(1) or original(*a))
    mlp, twin = _twins(12, "triton", seed=7)
    keep_weight_grads(mlp)
    x = torch.randn(3, 4, 12)
    torch.utils.checkpoint.checkpoint(mlp, x, use_reentrant=False).square().sum().backward()
    twin(x).square().sum().backward()
    assert calls == [1, 1]
    for a, b in zip(mlp.parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_block_mlp_under_fsdp2_matches_linear_gelu_linear(tmp_path, monkeypatch):
    """FSDP2 (one gloo rank) swaps unsharded parameters in around the forward and collects their
    gradients after the backward: the fused MLP's returned gradients arrive in the sharded `.grad`."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from imdm.parallel.fsdp import fully_shard
    calls = []
    original = gelu_mlp_module.matmul_dgelu_reference
    monkeypatch.setattr(gelu_mlp_module, "matmul_dgelu_reference", lambda *a: calls.append(1) or original(*a))
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        mlp, twin = _twins(16, "triton", seed=4)
        fully_shard(mlp, mesh=init_device_mesh("cpu", (1,)))
        x = torch.randn(2, 5, 16)
        y = mlp(x)
        torch.testing.assert_close(y, twin(x), rtol=1e-5, atol=1e-6)
        y.square().sum().backward()
        twin(x).square().sum().backward()
        assert calls == [1]
        for a, b in zip(mlp.parameters(), twin.parameters()):
            torch.testing.assert_close(a.grad.full_tensor(), b.grad, rtol=1e-5, atol=1e-6)
    finally:
        if started:
            dist.destroy_process_group()


def test_backend_choice_and_unchanged_state_dict():
    assert not kernel_chosen("auto", torch.zeros(1)) and kernel_chosen("triton", torch.zeros(1))
    assert not kernel_chosen("eager", torch.zeros(1))
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernel_chosen("cuda", torch.zeros(1))
    mlp, _ = _twins(8, "eager")
    assert "AddmmBackward" in mlp(torch.randn(3, 8, requires_grad=True)).grad_fn.name()
    block = DiTBlock(DiTConfig(vocab_size=11, mask_id=10, d_model=16, n_blocks=1, n_heads=2))
    assert [k for k in block.state_dict() if k.startswith("mlp.")] == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                                       "mlp.2.bias"]


@pytest.mark.parametrize("case, message", [
    ("width", "multiples of 8"), ("strides", "transposed contiguous"), ("dtype", "share one of"),
    ("aux", "aux must be contiguous"), ("bias", "without one"), ("bias_strides", "bias must be contiguous"),
    ("device", "share one device"),
])
def test_gemm_epilogue_rejects_what_cublaslt_cannot_run(case, message):
    """Checked before anything reaches the GPU, so these run on CPU tensors."""
    a, b = torch.zeros(4, 16, dtype=torch.bfloat16), torch.zeros(16, 24, dtype=torch.bfloat16)
    out, aux, bias = (torch.zeros(4, 24, dtype=torch.bfloat16), torch.zeros(4, 24, dtype=torch.bfloat16),
                      torch.zeros(24, dtype=torch.bfloat16))
    if case == "width":
        b, out, aux, bias = b[:, :20].contiguous(), out[:, :20].contiguous(), aux[:, :20].contiguous(), bias[:20]
    elif case == "strides":
        b = torch.zeros(16, 48, dtype=torch.bfloat16)[:, ::2]
    elif case == "dtype":
        out = out.half()
    elif case == "aux":
        aux = torch.zeros(24, 4, dtype=torch.bfloat16).t()
    elif case == "bias_strides":
        bias = torch.zeros(48, dtype=torch.bfloat16)[::2]
    elif case == "device":
        aux = aux.to("meta")
    with pytest.raises(ValueError, match=message):
        gemm_epilogue(a, b, out, "dgelu" if case == "bias" else "gelu_aux_bias", bias, aux)


def test_gemm_epilogue_with_no_rows_writes_nothing():
    """Zero rows return before anything reaches cuBLASLt (these are CPU tensors)."""
    a, b = torch.zeros(0, 16, dtype=torch.bfloat16), torch.zeros(16, 24, dtype=torch.bfloat16)
    out, aux = torch.zeros(0, 24, dtype=torch.bfloat16), torch.zeros(0, 24, dtype=torch.bfloat16)
    gemm_epilogue(a, b, out, "dgelu", None, aux)


def _error(x: torch.Tensor, truth: torch.Tensor) -> float:
    return ((x.double() - truth).abs().max() / truth.abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("rows, d_in, d_out", [(47, 136, 544), (301, 1536, 6144), (1024, 768, 3072)])
def test_cublaslt_epilogues_match_float64(rows, d_in, d_out):
    """Both epilogue GEMMs in bf16 against float64 from the same operands: within twice the eager
    reference's own bf16 error."""
    torch.manual_seed(rows)
    x = torch.randn(rows, d_in, device="cuda").bfloat16()
    w1 = (torch.randn(d_out, d_in, device="cuda") / d_in ** 0.5).bfloat16()
    b1 = torch.randn(d_out, device="cuda").bfloat16()
    dy = torch.randn(rows, d_in, device="cuda").bfloat16()
    w2 = (torch.randn(d_in, d_out, device="cuda") / d_out ** 0.5).bfloat16()
    h, u = torch.ops.imdm.linear_gelu(x, w1, b1)
    h_ref, u_ref = linear_gelu_reference(x, w1, b1)
    u64 = x.double() @ w1.double().t() + b1.double()
    h64 = F.gelu(u64, approximate="tanh")
    assert _error(u, u64) <= 2 * _error(u_ref, u64)
    assert _error(h, h64) <= 2 * _error(h_ref, h64)
    du = torch.ops.imdm.matmul_dgelu(dy, w2, u)
    du64 = (dy.double() @ w2.double()) * gelu_tanh_derivative(u.double())
    assert _error(du, du64) <= 2 * _error(matmul_dgelu_reference(dy, w2, u), du64)


@pytest.mark.gpu
def test_cuda_ops_run_the_references_where_cublaslt_cannot():
    """Widths that are not whole 16-byte rows, and float32 operands, take the eager references."""
    torch.manual_seed(5)
    for dtype, d_in, d_out in ((torch.bfloat16, 13, 52), (torch.float32, 16, 64)):
        x, w, b = (torch.randn(9, d_in, device="cuda", dtype=dtype), torch.randn(d_out, d_in, device="cuda", dtype=dtype),
                   torch.randn(d_out, device="cuda", dtype=dtype))
        for got, want in zip(torch.ops.imdm.linear_gelu(x, w, b), linear_gelu_reference(x, w, b)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        dy, u = torch.randn(9, d_in, device="cuda", dtype=dtype), torch.randn(9, d_out, device="cuda", dtype=dtype)
        torch.testing.assert_close(torch.ops.imdm.matmul_dgelu(dy, w.t().contiguous(), u),
                                   matmul_dgelu_reference(dy, w.t().contiguous(), u), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_block_mlp_trains_like_linear_gelu_linear_under_autocast(compiled, monkeypatch):
    """Compiled or not, under bf16 autocast with the weight gradients kept: each micro-batch runs
    the two cuBLASLt epilogue GEMMs, and outputs and gradients match nn.Sequential's within bf16
    error (relative to each tensor's largest entry: the twin rounds every micro-batch's weight
    gradient to bf16), over two micro-batches."""
    from imdm.kernels import cublaslt
    epilogues = []
    original = cublaslt.gemm_epilogue
    monkeypatch.setattr(cublaslt, "gemm_epilogue", lambda *a: epilogues.append(a[3]) or original(*a))
    mlp, twin = _twins(136, "auto", "cuda", seed=6)
    kept_grads = [p.grad for p in keep_weight_grads(mlp)]
    run = torch.compile(mlp, fullgraph=True) if compiled else mlp
    for rows in (301, 47):
        x = torch.randn(3, rows, 136, device="cuda")
        x_ours, x_twin = x.clone().requires_grad_(), x.clone().requires_grad_()
        epilogues.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, y_twin = run(x_ours), twin(x_twin)
        _assert_close_to_scale(y, y_twin)
        dy = torch.randn_like(y)
        y.backward(dy)
        y_twin.backward(dy)
        assert epilogues == ["gelu_aux_bias", "dgelu"]
    _assert_close_to_scale(x_ours.grad, x_twin.grad)
    for a, b in zip(mlp.parameters(), twin.parameters()):
        _assert_close_to_scale(a.grad, b.grad)
    assert all(p.grad is g for p, g in zip((mlp[0].weight, mlp[2].weight), kept_grads))


def _assert_close_to_scale(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to a few bf16 roundings of the largest entry (2^-6 of it)."""
    assert a.shape == b.shape
    assert (a.float() - b.float()).abs().max() <= 2 ** -6 * b.float().abs().max()
