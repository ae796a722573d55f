"""Bias + tanh-GELU kernel (imdm.kernels.bias_gelu) against its eager reference: forward, input
and bias gradients at odd shapes (rows not a multiple of the row tile, widths not a multiple of
the column tile, a width smaller than one tile), through the Triton interpreter on CPU and on the
GPU, eager and (on the GPU) compiled; the reference against PyTorch's own GELU of a biased linear layer; and,
on the GPU, bf16 errors within PyTorch's own."""

import os

import pytest
import torch
import torch.nn.functional as F

from imdm.kernels.bias_gelu import bias_gelu

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"    # conftest sets it when there is no GPU
TOL = dict(rtol=1e-5, atol=1e-5)


def _run(u, b, backend, fn=bias_gelu):
    """The output and the gradients of a fixed random functional of it."""
    u, b = u.detach().requires_grad_(), b.detach().requires_grad_()
    y = fn(u, b, backend=backend)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device)
    (y.float() * g).sum().backward()
    return y.detach(), u.grad, b.grad


def _inputs(shape, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    u = (2 * torch.randn(shape, generator=g)).to(device, dtype)
    b = torch.randn(shape[-1], generator=g).to(device)
    return u, b


SHAPES = [(47, 123), (3, 37, 300), (2, 65, 1536), (5, 7)]


@pytest.mark.parametrize("device,compiled", [
    pytest.param("cpu", False, marks=pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")),
    pytest.param("cuda", False, marks=pytest.mark.gpu), pytest.param("cuda", True, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference(device, compiled, shape):
    """Compiled: Inductor launches the kernels from its own code (it cannot on CPU tensors)."""
    u, b = _inputs(shape, device)
    ref = _run(u, b, "eager")
    out = _run(u, b, "triton", torch.compile(bias_gelu, fullgraph=True) if compiled else bias_gelu)
    for got, want, name in zip(out, ref, ("y", "du", "db")):
        assert got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, **TOL, msg=name)


def test_reference_is_the_biased_linear_layer_with_gelu():
    torch.manual_seed(0)
    linear, x = torch.nn.Linear(9, 13), torch.randn(4, 9)
    expect = F.gelu(linear(x), approximate="tanh")
    torch.testing.assert_close(bias_gelu(F.linear(x, linear.weight), linear.bias, backend="eager"), expect)


def test_mismatched_bias_is_refused():
    with pytest.raises(ValueError, match="bias of shape"):
        bias_gelu(torch.zeros(2, 5), torch.zeros(4))


@pytest.mark.gpu
def test_bf16_kernel_error_within_pytorch_bf16_error():
    """In bf16 the kernel's output and gradients are no further from the float64 truth than
    PyTorch's own bf16 GELU of the same biased input (with a margin of 1.5x and one bf16 step)."""
    u, b = _inputs((16, 1024, 768), "cuda", torch.bfloat16)
    truth = _run(u.double(), b.double(), "eager")
    ours = _run(u, b, "triton")
    torch_bf16 = _run(u, b.bfloat16(), "eager",
                      lambda u, b, backend: F.gelu(u + b, approximate="tanh"))
    for got, base, want, name in zip(ours, torch_bf16, truth, ("y", "du", "db")):
        err = (got.double() - want).abs().max().item()
        ref_err = (base.double() - want).abs().max().item()
        assert err <= 1.5 * ref_err + 2 ** -8 * want.abs().max().item(), (name, err, ref_err)
