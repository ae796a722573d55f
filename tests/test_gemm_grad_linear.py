"""GemmGradLinear: with its weight's .grad allocated, the weight gradient is accumulated into that
very tensor by the GEMM (float32 accumulation), and everything else is nn.Linear's."""

import contextlib
import dataclasses

import pytest
import torch
from torch import nn

from imdm.models.dit import BlockMLP
from imdm.models.gemm_grad_linear import (GemmGradLinear, frozen_weight_copies, keep_weight_grads, switched_on_layers,
                                          zero_grads)
from imdm.parallel.distributed import init_distributed
from imdm.train import trainer as trainer_module
from imdm.train.trainer import Trainer
from tests.test_training import _params, _recipe


def _same(a: list, b: list) -> bool:
    """The same tensor objects, in order."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _pair(bias: bool, seed=0):
    """A 2-layer MLP of GemmGradLinear (switched on, .grad allocated) and its nn.Linear twin."""
    torch.manual_seed(seed)
    ref = nn.Sequential(nn.Linear(13, 47, bias=bias), nn.GELU(approximate="tanh"), nn.Linear(47, 11, bias=bias))
    ours = nn.Sequential(GemmGradLinear(13, 47, bias=bias), nn.GELU(approximate="tanh"),
                         GemmGradLinear(47, 11, bias=bias))
    ours.load_state_dict(ref.state_dict())
    kept = keep_weight_grads(ours)
    assert _same(kept, [ours[0].weight, ours[2].weight])
    return ref, ours


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("compiled", [False, True])
def test_weight_grad_is_accumulated_in_place_over_micro_batches(bias, compiled):
    ref, ours = _pair(bias)
    grads = [ours[0].weight.grad, ours[2].weight.grad]
    run = torch.compile(ours, fullgraph=True) if compiled else ours
    for _ in range(3):
        x = torch.randn(2, 7, 13)
        x_ours = x.clone().requires_grad_()
        x_ref = x.clone().requires_grad_()
        run(x_ours).square().sum().backward()
        ref(x_ref).square().sum().backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    assert ours[0].weight.grad is grads[0] and ours[2].weight.grad is grads[1]   # the same tensors, added into
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def _bf16_accumulation_errors(device: str, n_in: int, n_out: int, bias: bool, row_counts, compiled: bool):
    """Micro-batches of bf16 operands through a switched-on GemmGradLinear and its nn.Linear twin
    under bf16 autocast: (our weight gradient's error, the twin's), each the largest deviation
    from the float64 sum of the operands' products relative to its largest entry; and both layers."""
    layer = GemmGradLinear(n_in, n_out, bias=bias).to(device)
    twin = nn.Linear(n_in, n_out, bias=bias).to(device)
    twin.load_state_dict(layer.state_dict())
    keep_weight_grads(layer)
    run = torch.compile(layer, fullgraph=True) if compiled else layer
    truth = torch.zeros(n_out, n_in, dtype=torch.float64, device=device)
    for rows in row_counts:
        x = torch.randn(rows, n_in, device=device).bfloat16().float()
        dy = torch.randn(rows, n_out, device=device).bfloat16()
        with torch.autocast(device, dtype=torch.bfloat16):
            y, y_twin = run(x), twin(x)
        y.backward(dy)
        y_twin.backward(dy)
        truth += dy.double().t() @ x.double()
    scale = truth.abs().max()
    errors = [((lin.weight.grad.double() - truth).abs().max() / scale).item() for lin in (layer, twin)]
    return errors[0], errors[1], layer, twin


def test_bf16_products_are_accumulated_in_float32():
    """Under bf16 autocast nn.Linear rounds each micro-batch's weight-gradient product to bf16;
    GemmGradLinear's sum equals the float64 sum of the bf16 operands' products to float32 precision."""
    torch.manual_seed(1)
    ours, autograd, _, _ = _bf16_accumulation_errors("cpu", 64, 32, False, (96,) * 4, compiled=False)
    assert ours < 1e-6 < 1e-4 < autograd


def test_plain_linear_without_switch_grad_or_grad_mode():
    torch.manual_seed(2)
    layer = GemmGradLinear(5, 3)
    x = torch.randn(4, 5)
    layer(x).sum().backward()                  # not switched on: autograd creates .grad
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 4) @ x)
    keep_weight_grads(layer)
    assert layer.accumulate_in_gemm
    with torch.no_grad():
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    layer.weight.grad = None                   # switched on but no .grad: autograd's path again
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 4) @ x)


def test_zero_grads_keeps_the_kept_tensors_and_drops_the_rest():
    _, ours = _pair(bias=True)
    ours(torch.randn(3, 13)).sum().backward()
    kept = [ours[0].weight, ours[2].weight]
    tensors = [p.grad for p in kept]
    assert all(t.abs().sum() > 0 for t in tensors)
    assert _same(keep_weight_grads(ours), kept) and _same([p.grad for p in kept], tensors)   # no new allocation
    zero_grads(ours.parameters(), kept)
    assert all(p.grad is t and not t.any() for p, t in zip(kept, tensors))
    assert ours[0].bias.grad is None and ours[2].bias.grad is None


@pytest.mark.parametrize("checkpointing", ["none", "full"])
def test_trainer_on_one_rank_matches_autograd_accumulation(tmp_path, monkeypatch, checkpointing):
    """Two steps of two micro-batches, with and without recomputing the blocks in backward: the
    trainer keeps the blocks' and mask-state MLP's weight gradients in place between steps, and
    trains as autograd's accumulation does."""
    dist = init_distributed("cpu")

    def recipe(name):
        r = _recipe(tmp_path, name, steps=2)
        return dataclasses.replace(r, parallelism=dataclasses.replace(r.parallelism, activation_checkpointing=checkpointing))

    fused = Trainer(recipe("fused"), dist)
    names = {n for n, p in fused.model.named_parameters() if any(p is k for k in fused.kept_grads)}
    assert names and all(n.endswith("weight") and (".attn." in n or ".mlp." in n or "mask_state.fc" in n) for n in names)
    assert len(names) == 4 * fused.recipe.model.n_blocks + 2
    before = [p.grad for p in fused.kept_grads]
    fused.fit()
    assert _same([p.grad for p in fused.kept_grads], before) and not any(g.any() for g in before)
    monkeypatch.setattr(trainer_module, "keep_weight_grads", lambda model: [])
    plain = Trainer(recipe("plain"), dist)
    assert not any(m.accumulate_in_gemm for m in plain.model.modules() if isinstance(m, GemmGradLinear))
    plain.fit()
    a, b = _params(fused), _params(plain)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_frozen_weight_copies_are_what_the_matmuls_use_until_dropped(compiled):
    """Inside frozen_weight_copies the switched-on layers (plain and the fused MLP's) compute with
    the bf16 copies cast on entry: changing the float32 weights inside changes nothing, and
    after exit they are used again. Compiled, a second step compiles nothing new."""
    torch.manual_seed(4)
    model = nn.Sequential(GemmGradLinear(13, 48), BlockMLP(48, "triton"))   # "triton": the fused MLP's path
    keep_weight_grads(model)
    layers = switched_on_layers(model)
    assert len(layers) == 3
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    run = torch.compile(model, backend=counter, fullgraph=True) if compiled else model
    x = torch.randn(2, 5, 13, requires_grad=True)

    def forward_backward():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = run(x)
        y.float().square().sum().backward()
        return y.detach().clone()

    for _ in range(2):   # two steps
        with frozen_weight_copies(model, torch.bfloat16):
            assert all(m.weight_copy.dtype == torch.bfloat16 and torch.equal(m.weight_copy, m.weight.bfloat16())
                       for m in layers)
            before = forward_backward()
            with torch.no_grad():
                for m in layers:
                    m.weight.add_(0.5)
            torch.testing.assert_close(forward_backward(), before, rtol=0, atol=0)
        assert all(m.weight_copy is None for m in layers)
        assert not torch.allclose(forward_backward(), before, atol=1e-2)
    if compiled:
        assert counter.frame_count == 2   # with copies, without


def test_no_copies_without_autocast_or_switched_off_layers():
    model = nn.Sequential(GemmGradLinear(4, 8), GemmGradLinear(8, 4))
    with frozen_weight_copies(model, torch.bfloat16):
        assert all(m.weight_copy is None for m in model)   # not switched on
    keep_weight_grads(model)
    with frozen_weight_copies(model, None):
        assert all(m.weight_copy is None for m in model)   # fp32 training: nothing to cast


def test_trainer_with_weight_copies_trains_bit_identically(tmp_path, monkeypatch):
    """Three bf16 steps of two micro-batches (the kept weights change from the second step on:
    adaLN's gates start at zero) with the trainer's frozen weight copies give the same parameters,
    bit for bit, as casting every weight at every micro-batch; every step computes with fresh copies."""
    dist = init_distributed("cpu")

    def recipe(name):
        r = _recipe(tmp_path, name, steps=3)
        return dataclasses.replace(r, train=dataclasses.replace(r.train, precision="bf16"))

    fresh = []

    @contextlib.contextmanager
    def spy(model, dtype):
        with frozen_weight_copies(model, dtype):
            layers = switched_on_layers(model)
            fresh.append(len(layers) > 0 and all(torch.equal(m.weight_copy, m.weight.bfloat16()) for m in layers))
            yield

    monkeypatch.setattr(trainer_module, "frozen_weight_copies", spy)
    init = _params(Trainer(recipe("init"), dist))
    with_copies = Trainer(recipe("copies"), dist)
    with_copies.fit()
    assert fresh == [True] * 3
    monkeypatch.setattr(trainer_module, "frozen_weight_copies", lambda model, dtype: contextlib.nullcontext())
    casting = Trainer(recipe("casting"), dist)
    casting.fit()
    a, b = _params(with_copies), _params(casting)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = [n for n, p in with_copies.model.named_parameters() if any(p is k for k in with_copies.kept_grads)]
    assert all(not torch.equal(a[n], init[n]) for n in kept)   # every kept weight trained


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_cuda_gemm_accumulates_bf16_products_in_float32(compiled):
    """On CUDA the accumulation is one cuBLAS GEMM (aten::addmm.dtype_out) into the float32 .grad:
    at odd shapes, over three micro-batches, its sum matches the float64 sum of the bf16
    operands' products to float32 precision, far inside bf16 autograd's error."""
    torch.manual_seed(3)
    ours, autograd, layer, twin = _bf16_accumulation_errors("cuda", 123, 47, True, (47, 301, 1024), compiled)
    assert ours < 1e-5 and autograd > 10 * ours
    torch.testing.assert_close(layer.bias.grad, twin.bias.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_cuda_compiled_block_with_weight_copies_matches_per_call_casts():
    """A compiled DiT block on CUDA under bf16 autocast, kept gradients, two micro-batches: with
    frozen weight copies its outputs, input gradients and matmul weight gradients equal those of
    the per-call casts bit for bit (as observed on H200s; the graphs differ, so this is not
    guaranteed). The other parameter gradients are sums over rows that Inductor ordered
    differently in the two graphs (the LayerNorm weights', off by 1e-7 of their largest entry,
    benchmarks/weight_copies_identity.py): equal to float32 rounding."""
    from benchmarks.weight_copies_identity import block_case, run_block
    state, inputs = block_case("cuda")
    copies, casts = (run_block(state, inputs, c, compiled=True) for c in (True, False))
    matmuls = {f"grad {n}.weight" for n in ("attn.qkv", "attn.out", "mlp.0", "mlp.2")}
    exact = [k for k in casts if not k.startswith("grad ") or k in matmuls]
    assert len(exact) == 6 + 4 and all(torch.equal(copies[k], casts[k]) for k in exact)
    for k in casts.keys() - set(exact):
        torch.testing.assert_close(copies[k], casts[k], rtol=1e-5, atol=1e-6 * casts[k].abs().max().item())
