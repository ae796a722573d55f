"""Rotary QKV kernel (imdm.kernels.rotary_qkv) against its eager reference: q, k, v and the qkv
gradient at odd shapes (L 37, 3 heads of 10: every tile padded) and the models' head sizes,
with the incoming gradients both contiguous and strided, through the Triton interpreter on CPU
and on the GPU (also compiled); and, on the GPU, bf16 errors within PyTorch's own."""

import os

import pytest
import torch

from imdm.kernels.rotary_qkv import rotary_qkv
from imdm.models.layers import rotary_tables

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"    # conftest sets it when there is no GPU
ON_CPU = pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")
CASES = [pytest.param("cpu", False, marks=ON_CPU), pytest.param("cuda", False, marks=pytest.mark.gpu),
         pytest.param("cuda", True, marks=pytest.mark.gpu)]
TOL = dict(rtol=1e-5, atol=1e-5)


def _run(qkv, heads, backend, strided_grads, fn=rotary_qkv):
    """q, k, v and the qkv gradient of a fixed random functional of them."""
    qkv = qkv.detach().requires_grad_()
    cos, sin = rotary_tables(qkv.shape[1], qkv.shape[2] // (3 * heads), qkv.device)
    outs = fn(qkv, cos, sin, heads, backend=backend)
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]
    if strided_grads:   # [B, H, L, hd] values laid out as [B, L, H, hd], as attention kernels may return them
        grads = [gr.transpose(1, 2).contiguous().transpose(1, 2) for gr in grads]
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs] + [qkv.grad]


@pytest.mark.parametrize("device,compiled", CASES)
@pytest.mark.parametrize("b,l,heads,hd", [(2, 37, 3, 10), (1, 5, 16, 96), (2, 9, 12, 64)])
@pytest.mark.parametrize("strided_grads", [False, True])
def test_kernel_matches_reference(device, compiled, b, l, heads, hd, strided_grads):
    qkv = torch.randn(b, l, 3 * heads * hd, generator=torch.Generator().manual_seed(0)).to(device)
    ref = _run(qkv, heads, "eager", strided_grads)
    fn = torch.compile(rotary_qkv, fullgraph=True) if compiled else rotary_qkv
    out = _run(qkv, heads, "triton", strided_grads, fn)
    for got, want, name in zip(out, ref, ("q", "k", "v", "dqkv")):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, **TOL, msg=name)


def test_mismatched_tables_are_refused():
    cos, sin = rotary_tables(5, 8, "cpu")
    with pytest.raises(ValueError, match="does not match rotary tables"):
        rotary_qkv(torch.zeros(1, 5, 3 * 2 * 6), cos, sin, 2)


@pytest.mark.gpu
def test_bf16_kernel_error_within_pytorch_bf16_error():
    """q, k and the qkv gradient in bf16 are no further from the float64 truth than the eager
    reference's in bf16 (a margin of 1.5x and one bf16 step); v is copied exactly."""
    qkv = torch.randn(4, 1024, 3 * 16 * 96, generator=torch.Generator().manual_seed(0)).cuda()
    truth = _run(qkv.double(), 16, "eager", True)
    ours = _run(qkv.bfloat16(), 16, "triton", True)
    eager = _run(qkv.bfloat16(), 16, "eager", True)
    assert torch.equal(ours[2], eager[2])
    for got, base, want, name in zip(ours, eager, truth, ("q", "k", "v", "dqkv")):
        err = (got.double() - want).abs().max().item()
        ref_err = (base.double() - want).abs().max().item()
        assert err <= 1.5 * ref_err + 2 ** -8 * want.abs().max().item(), (name, err, ref_err)
