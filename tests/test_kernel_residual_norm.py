"""Residual + LayerNorm + adaLN kernel (imdm.kernels.residual_norm) against its eager reference:
forward and every gradient at odd shapes (rows not a multiple of the backward's row tile, d
neither a power of two nor a multiple of its column chunk), with and without the residual branch
and dropout, through the Triton interpreter on CPU (and on the GPU, also inside torch.compile);
the dropout mask's rate and its dependence on the seed alone; the DiT wired through the kernel
equal to the DiT on the reference; and, on the GPU, bf16 errors within PyTorch's own."""

import os

import pytest
import torch
import torch.nn.functional as F

from imdm.kernels.residual_norm import dropout_keep_scale, residual_norm_modulate
from imdm.models.dit import DiT, DiTConfig
from imdm.models.mask_state import MaskStateConfig

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"    # conftest sets it when there is no GPU
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")),
           pytest.param("cuda", marks=pytest.mark.gpu)]
TOL = dict(rtol=1e-5, atol=1e-5)


def _inputs(b, l, d, residual, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, dt=torch.float32):
        return torch.randn(*shape, generator=g).to(device, dt).requires_grad_()

    return dict(x=leaf(b, l, d), y=leaf(b, l, d, dt=dtype) if residual else None,
                gate=leaf(b, d, dt=dtype) if residual else None, weight=leaf(d),
                shift=leaf(b, d, dt=dtype), scale=leaf(b, d, dt=dtype))


def _run(inputs, seed, p, backend, h_dtype=torch.float32, fn=residual_norm_modulate):
    """Outputs and the gradients of a fixed random functional of both outputs."""
    for t in inputs.values():
        if t is not None:
            t.grad = None
    x_out, h = fn(inputs["x"], inputs["y"], inputs["gate"], seed, p, inputs["weight"], inputs["shift"],
                  inputs["scale"], h_dtype, backend=backend)
    g = torch.Generator().manual_seed(99)
    gh, gx = (torch.randn(h.shape, generator=g).to(h.device) for _ in range(2))
    ((h.float() * gh).sum() + (x_out * gx).sum()).backward()
    grads = {k: t.grad.clone() for k, t in inputs.items() if t is not None}
    return x_out.detach(), h.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual,p", [(True, 0.0), (True, 0.1), (True, 0.5), (False, 0.0)])
@pytest.mark.parametrize("b,l,d", [(3, 37, 123), (2, 5, 1536)])
def test_kernel_matches_reference(device, residual, p, b, l, d):
    inputs = _inputs(b, l, d, residual, device)
    seed = torch.tensor([2 ** 63 - 5], device=device)
    ref = _run(inputs, seed, p, "eager")
    out = _run(inputs, seed, p, "triton")
    torch.testing.assert_close(out[0], ref[0], **TOL)
    torch.testing.assert_close(out[1], ref[1], **TOL)
    assert out[2].keys() == ref[2].keys()
    for name in ref[2]:
        torch.testing.assert_close(out[2][name], ref[2][name], **TOL, msg=name)


@pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")
@pytest.mark.parametrize("residual", [True, False])
def test_strided_output_gradients_and_row_and_column_tiles(monkeypatch, residual):
    """A broadcast (stride-0) gradient of x_out, and the backward in tiles of 4 rows x 8 columns,
    partial at the end of each sequence and of each row; a chunk that is not a power of two is
    refused."""
    from imdm.kernels import residual_norm_triton
    monkeypatch.setattr(residual_norm_triton, "BACKWARD_ROWS", 4)
    monkeypatch.setattr(residual_norm_triton, "BACKWARD_CHUNK", 8)
    inputs = _inputs(2, 7, 13, residual, "cpu")
    seed = torch.tensor([9])
    grads = {}
    for backend in ("eager", "triton"):
        for t in inputs.values():
            if t is not None:
                t.grad = None
        x_out, h = residual_norm_modulate(inputs["x"], inputs["y"], inputs["gate"], seed, 0.3, inputs["weight"],
                                          inputs["shift"], inputs["scale"], torch.float32, backend=backend)
        (x_out.sum() + h.square().sum()).backward()
        grads[backend] = {k: t.grad.clone() for k, t in inputs.items() if t is not None}
    for name, grad in grads["eager"].items():
        torch.testing.assert_close(grads["triton"][name], grad, **TOL, msg=name)
    for chunk in (12, 0):
        monkeypatch.setattr(residual_norm_triton, "BACKWARD_CHUNK", chunk)
        with pytest.raises(ValueError, match=f"BACKWARD_CHUNK .{chunk}. must be a power of two"):
            _, h = residual_norm_modulate(inputs["x"], inputs["y"], inputs["gate"], seed, 0.3, inputs["weight"],
                                          inputs["shift"], inputs["scale"], torch.float32, backend="triton")
            h.sum().backward()


@pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")
def test_backward_launch_without_an_x_out_gradient():
    """The kernels' backward given no gradient for x_out (a branch that only feeds h) equals the
    reference's gradients of h alone."""
    from imdm.kernels.residual_norm import residual_norm_reference
    from imdm.kernels.residual_norm_triton import launch_backward, launch_forward
    inputs = _inputs(2, 19, 37, True, "cpu")
    seed, p = torch.tensor([4]), 0.2
    args = (inputs["x"], inputs["y"], inputs["gate"], seed, p, inputs["weight"], inputs["shift"], inputs["scale"])
    _, h = residual_norm_reference(*args, 1e-5, torch.float32)
    dh = torch.randn(h.shape, generator=torch.Generator().manual_seed(5))
    names = ("x", "y", "gate", "weight", "shift", "scale")
    expected = torch.autograd.grad(h, [inputs[n] for n in names], dh)
    with torch.no_grad():
        x_out, _, mean, rstd = launch_forward(*args, 1e-5, torch.float32)
        dx, dy, d_w, d_shift, d_scale, d_gate = launch_backward(dh, None, x_out, mean, rstd, inputs["weight"],
                                                                inputs["scale"], inputs["y"], inputs["gate"], seed, p)
    for name, got, want in zip(names, (dx, dy, d_gate, d_w, d_shift, d_scale), expected):
        torch.testing.assert_close(got, want, **TOL, msg=name)


def test_a_branch_without_its_gate_is_refused():
    inputs = _inputs(1, 2, 4, True, "cpu")
    with pytest.raises(ValueError, match="y and its gate"):
        residual_norm_modulate(inputs["x"], inputs["y"], None, None, 0.0, inputs["weight"], inputs["shift"],
                               inputs["scale"], torch.float32)


@pytest.mark.gpu
def test_kernel_inside_torch_compile():
    """Inductor launches the kernels from its own code (it cannot on CPU tensors: GPU only)."""
    device = "cuda"
    inputs = _inputs(2, 19, 64, True, device)
    seed = torch.tensor([7], device=device)
    compiled = torch.compile(residual_norm_modulate, fullgraph=True)
    ref = _run(inputs, seed, 0.2, "eager")
    out = _run(inputs, seed, 0.2, "triton", fn=compiled)
    for a, b in zip(out[:2], ref[:2]):
        torch.testing.assert_close(a, b, **TOL)
    for name in ref[2]:
        torch.testing.assert_close(out[2][name], ref[2][name], **TOL, msg=name)


def test_reference_is_layer_norm_modulation_of_the_dropped_residual():
    """The reference against its definition written with torch's own dropout algebra."""
    inputs = _inputs(2, 9, 16, True, "cpu")
    seed = torch.tensor([3])
    keep = dropout_keep_scale(seed, inputs["y"].shape, 0.25)
    x_out, h = residual_norm_modulate(inputs["x"], inputs["y"], inputs["gate"], seed, 0.25, inputs["weight"],
                                      inputs["shift"], inputs["scale"], torch.float32, backend="eager")
    expect_x = inputs["x"] + inputs["gate"][:, None] * inputs["y"] * keep
    expect_h = F.layer_norm(expect_x, (16,)) * inputs["weight"] * (1 + inputs["scale"][:, None]) + inputs["shift"][:, None]
    torch.testing.assert_close(x_out, expect_x)
    torch.testing.assert_close(h, expect_h)


def test_dropout_mask_rate_and_seed_dependence():
    shape = torch.Size([4, 64, 96])
    keep = dropout_keep_scale(torch.tensor([11]), shape, 0.1)
    assert torch.equal(keep.unique(), torch.tensor([0.0, 1.0 / 0.9]))
    n = shape.numel()
    dropped = int((keep == 0).sum())
    assert abs(dropped - 0.1 * n) < 5 * (0.1 * 0.9 * n) ** 0.5       # binomial: five standard deviations
    assert torch.equal(keep, dropout_keep_scale(torch.tensor([11]), shape, 0.1))
    other = dropout_keep_scale(torch.tensor([12]), shape, 0.1)
    assert abs(int(((keep == 0) & (other == 0)).sum()) - 0.01 * n) < 5 * (0.01 * n) ** 0.5   # independent seeds


@pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")
@pytest.mark.parametrize("mask_state", [None, MaskStateConfig(8)])
def test_dit_through_the_kernel_matches_the_dit_on_the_reference(mask_state):
    """The blocks' deferred residual branches and dropout seeds, wired through the kernel, give
    the reference model's loss and gradients in training mode (dropout on)."""
    cfg = dict(vocab_size=41, mask_id=40, d_model=24, n_blocks=3, n_heads=2, dropout=0.2, mask_state=mask_state)
    models = {k: DiT(DiTConfig(**cfg, kernels=k)) for k in ("eager", "triton")}
    torch.manual_seed(0)
    with torch.no_grad():
        for p in models["eager"].parameters():
            p.add_(0.1 * torch.randn_like(p))
    models["triton"].load_state_dict(models["eager"].state_dict())
    tokens = torch.randint(0, 41, (2, 13))
    noise = torch.rand(2, 13, 8) if mask_state else None
    results = {}
    for kind, model in models.items():
        torch.manual_seed(5)    # the dropout seeds' draw
        logits = model.train()(tokens, noise)
        logits.square().mean().backward()
        results[kind] = logits.detach(), {n: p.grad for n, p in model.named_parameters()}
    torch.testing.assert_close(results["triton"][0], results["eager"][0], **TOL)
    for name, grad in results["eager"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, **TOL, msg=name)
    model = models["eager"]
    torch.manual_seed(5)
    again = model(tokens, noise)
    torch.manual_seed(6)
    other = model(tokens, noise)
    assert torch.equal(again, results["eager"][0]) and not torch.allclose(other, again)
    seeds = model._dropout_seeds(torch.device("cpu"))
    assert seeds.shape == (3, 2) and seeds.unique().numel() == 6      # every block and branch its own masks
    undropped = DiT(DiTConfig(**{**cfg, "dropout": 0.0}, kernels="eager"))
    undropped.load_state_dict(model.state_dict())
    assert torch.equal(model.eval()(tokens, noise), undropped.train()(tokens, noise))   # no dropout in eval


@pytest.mark.gpu
@pytest.mark.parametrize("residual,p", [(True, 0.1), (False, 0.0)])
def test_bf16_kernel_error_within_pytorch_bf16_error(residual, p):
    """bf16 branch, gate, shift and scale (autocast's dtypes in training), bf16 h: the kernel's
    error against float64 is at most twice that of the eager reference run on the same inputs."""
    b, l, d = 4, 1023, 1536
    inputs = _inputs(b, l, d, residual, "cuda", dtype=torch.bfloat16)
    seed = torch.tensor([123], device="cuda")
    exact_inputs = {k: None if t is None else t.detach().double().requires_grad_() for k, t in inputs.items()}
    exact = _run(exact_inputs, seed.cpu(), p, "eager", torch.float64, fn=_float64_reference)
    ref = _run(inputs, seed, p, "eager", torch.bfloat16)
    out = _run(inputs, seed, p, "triton", torch.bfloat16)

    def err(a, e):
        return float((a.double() - e).norm() / e.norm())

    for i in (0, 1):
        assert err(out[i], exact[i]) <= 2 * err(ref[i], exact[i]) + 1e-6, i
    for name in exact[2]:
        assert err(out[2][name], exact[2][name]) <= 2 * err(ref[2][name], exact[2][name]) + 1e-6, name


def _float64_reference(x, y, gate, seed, p, weight, shift, scale, h_dtype, backend):
    if y is not None:
        x = x + gate[:, None] * y * dropout_keep_scale(seed, y.shape, p).to(x.device, torch.float64)
    h = F.layer_norm(x, (x.shape[-1],)) * weight * (1 + scale[:, None]) + shift[:, None]
    return x, h
