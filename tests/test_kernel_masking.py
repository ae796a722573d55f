"""Masking kernels (imdm.kernels.masking) against the eager references of
imdm.diffusion.forward_process, run on the CPU: uniform noise bit-identical, Box-Muller
within the stated libm tolerance, bf16 equal to eager-then-cast; the custom ops inside
torch.compile; the training loss unchanged. On CPU the kernels run through the Triton
interpreter; the `cuda` cases (GPU only) compare the CUDA kernels with the eager CPU generator."""

import os

import pytest
import torch

from imdm.algorithms.masked_diffusion import MaskedDiffusion
from imdm.diffusion import forward_process as eager
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.kernels import masking
from imdm.models.dit import DiT, DiTConfig
from imdm.models.mask_state import MaskStateConfig

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"    # conftest sets it when there is no GPU
DEVICES = [pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="Triton on CPU needs the interpreter")),
           pytest.param("cuda", marks=pytest.mark.gpu)]
SEEDS = torch.tensor([0, 2 ** 63 - 1, 1, 2 ** 63 - 2, 2 ** 32 - 1, 2 ** 32, 2 ** 62 + 17], dtype=torch.int64)
B, L, DIM, M = 7, 1023, 123, 47
NORMAL_TOL = dict(rtol=1e-5, atol=1e-5)   # libm log/cos differences (module docstring)


def _rows(gen_seed: int = 0):
    g = torch.Generator().manual_seed(gen_seed)
    batch = torch.randint(0, B, (M,), generator=g)
    return SEEDS[batch], torch.randint(0, L, (M,), generator=g), torch.randint(0, 9, (M,), generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("generation", ["zero", "scalar", "per_row"])
def test_noise_rows_match_eager(device, generation):
    seeds, positions, per_row = _rows()
    gen = {"zero": 0, "scalar": 5, "per_row": per_row}[generation]
    dev_gen = gen.to(device) if isinstance(gen, torch.Tensor) else gen
    for dist in ("uniform", "normal"):
        ref = eager.mask_noise_rows(seeds, positions, DIM, dist, gen)
        got = masking.mask_noise_rows(seeds.to(device), positions.to(device), DIM, dist, dev_gen, backend="triton")
        got_bf16 = masking.mask_noise_rows(seeds.to(device), positions.to(device), DIM, dist, dev_gen,
                                           out_dtype=torch.bfloat16, backend="triton")
        assert got.dtype == torch.float32 and got_bf16.dtype == torch.bfloat16
        if dist == "uniform":
            assert torch.equal(got.cpu(), ref) and torch.equal(got_bf16.cpu(), ref.bfloat16())
        else:   # a 1-ulp float32 difference may cross a bf16 rounding boundary
            torch.testing.assert_close(got.cpu(), ref, **NORMAL_TOL)
            torch.testing.assert_close(got_bf16.cpu(), ref.bfloat16(), rtol=2 ** -8, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_all_positions_noise_matches_eager(device):
    gen = torch.randint(0, 4, (B, L), generator=torch.Generator().manual_seed(2))
    masked = eager.mask_positions(SEEDS, L, torch.full((B,), 0.5))
    ref = eager.mask_noise(SEEDS, L, DIM, "uniform", gen)
    got = masking.mask_noise(SEEDS.to(device), L, DIM, "uniform", gen.to(device), masked.to(device),
                             out_dtype=torch.bfloat16, backend="triton")
    assert torch.equal(got.cpu(), torch.where(masked[..., None], ref, 0.0).bfloat16())
    # the kernel ("auto" on CUDA) gives the same numbers for every position, both distributions
    short = SEEDS.to(device)[:3]
    for dist in ("uniform", "normal"):
        ref = eager.mask_noise(SEEDS[:3], 65, 33, dist, 2)
        got = masking.mask_noise(short, 65, 33, dist, 2, backend="triton" if device == "cpu" else "auto").cpu()
        torch.testing.assert_close(got, ref, **(NORMAL_TOL if dist == "normal" else dict(rtol=0, atol=0)))


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_inside_torch_compile(device):
    captured = []

    def record(gm, example_inputs):
        captured.extend(node.target for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    def draw(masked, seeds, positions, gen, backend="triton"):
        rows = masking.mask_noise_rows(seeds[positions % seeds.shape[0]], positions, 17, "uniform", gen,
                                       backend=backend)
        every = masking.mask_noise(seeds, masked.shape[1], 5, "uniform", 3, masked, torch.bfloat16, backend=backend)
        return rows, every

    masked = eager.mask_positions(SEEDS[:5], 77, torch.linspace(0.1, 0.9, 5)).to(device)
    args = (masked, SEEDS[:5].to(device), torch.arange(40, device=device) * 3, torch.arange(40, device=device) % 3)
    compiled = torch.compile(draw, backend=record, fullgraph=True)(*args)
    assert {torch.ops.imdm.mask_noise_rows, torch.ops.imdm.mask_noise} <= set(captured)
    for got, ref in zip(compiled, draw(*args, backend="eager")):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_pass_opcheck(device):
    seeds, positions, gen = (t.to(device) for t in _rows())
    torch.library.opcheck(torch.ops.imdm.mask_noise_rows.default,
                          (seeds, positions, 9, "normal", gen, 0, torch.bfloat16))
    keep = torch.rand(2, 11).lt(0.5).flatten().to(device)
    torch.library.opcheck(torch.ops.imdm.mask_noise.default,
                          (SEEDS[:2].to(device), 11, 3, "uniform", None, 1, keep, torch.float32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rand", "randn"])
def test_training_loss_unchanged_by_the_kernel(device, kind):
    torch.manual_seed(0)
    cfg = DiTConfig(vocab_size=41, mask_id=40, d_model=32, n_blocks=1, n_heads=2, dropout=0.0,
                    mask_state=MaskStateConfig(24, kind=kind))
    model = DiT(cfg).to(device)
    with torch.no_grad():   # off the zero init (output head, adaLN, MLP's fc2): the loss depends on eps
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x0 = torch.randint(0, 40, (6, 33), device=device)
    index = torch.arange(6)

    def loss(kernels):
        algo = MaskedDiffusion(LogLinearSchedule(), 40, seed=11, mask_state=cfg.mask_state, kernels=kernels)
        return algo.loss(model, x0, index, global_batch=6, step=3)

    kernel = loss("triton" if device == "cpu" else "auto")
    if kind == "rand":
        assert torch.equal(kernel, loss("eager"))
    else:
        torch.testing.assert_close(kernel, loss("eager"), rtol=1e-5, atol=1e-6)
