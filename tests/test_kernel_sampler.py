"""The fused sampler step (imdm.kernels.sampler_step) against its eager float64 reference: same
choices at odd shapes, rare outcomes drawn at their float64 rate (which float32 Gumbel-max and
float32 inverse-CDF sampling miss), bit-identical in-kernel uniforms, and whole samples. On CPU
the Triton kernel runs through the interpreter (tests/conftest.py)."""

import math

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from imdm import rng
from imdm.diffusion.forward_process import mask_noise
from imdm.diffusion.posterior import step_weights
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.kernels.sampler_rng import uniform53
from imdm.kernels.sampler_step import per_sample_weights, sampler_step
from imdm.sampling.ancestral import SamplerSettings, ancestral_sample


def _both(logits, z, seeds, step, weights, mask_id, temperature=1.0, top_p=1.0):
    args = (logits, z, seeds, step, weights.unmask, weights.stay_keep, weights.stay_redraw, mask_id,
            temperature, top_p)
    return sampler_step(*args, backend="triton"), sampler_step(*args, backend="eager")


@pytest.mark.parametrize("vocab,batch,seq_len,posterior,temperature,top_p", [
    (97, 3, 17, "mdlm", 1.0, 1.0),
    (97, 3, 11, "imdm", 0.7, 0.9),
    (50258, 3, 17, "imdm", 1.3, 1.0),
    (50258, 1, 9, "mdlm", 0.8, 0.9),
])
def test_kernel_draws_what_the_float64_reference_draws(vocab, batch, seq_len, posterior, temperature, top_p):
    gen = torch.Generator().manual_seed(vocab + batch)
    mask_id = vocab - 3                        # not the last index: the stay weight sits mid-row
    logits = 3 * torch.randn(batch, seq_len, vocab, generator=gen)
    z = torch.randint(0, mask_id, (batch, seq_len), generator=gen)
    z[torch.rand(batch, seq_len, generator=gen) < 0.8] = mask_id
    seeds = rng.derive_seed(5, torch.arange(batch), rng.STREAM_SAMPLE_SEED)
    weights = step_weights(0.3, 0.45, posterior)
    (z_k, redraw_k), (z_ref, redraw_ref) = _both(logits, z, seeds, 4, weights, mask_id, temperature, top_p)
    # the kernel's fp32 exponentials are within ~1e-7 of the reference's float64 probabilities:
    # a row can differ only when u lands that close to a CDF boundary (about 1e-6 of rows)
    assert torch.equal(z_k, z_ref)
    assert torch.equal(redraw_k, redraw_ref)
    masked = z == mask_id
    assert torch.equal(z_k[~masked], z[~masked])
    assert (z_k[masked] != mask_id).any() and (z_k[masked] == mask_id).any()
    assert not redraw_k[z_k != mask_id].any()
    if posterior == "imdm":
        assert redraw_k.any()


def test_top_p_keeps_every_tie_at_the_threshold():
    """Probabilities a > b = b = b > ...: top_p = a + b/2 (inside the tied group) keeps all of
    it, so the kernel draws what the reference draws at top_p = a + 5b/2, where a sort keeps
    the whole group too."""
    logits = torch.tensor([3.0, 2.0, 1.0, 2.0, 0.5, 2.0, 0.0, -1.0])   # mask: the last index
    p = torch.softmax(logits[:-1].double(), 0)
    a, b = float(p[0]), float(p[1])
    n = 32
    rows, z, seeds = logits.expand(n, 1, -1), torch.full((n, 1), 7), torch.arange(n)
    inside, _ = sampler_step(rows, z, seeds, 0, 1.0, 0.0, 0.0, 7, top_p=a + 0.5 * b, backend="triton")
    whole, _ = sampler_step(rows, z, seeds, 0, 1.0, 0.0, 0.0, 7, top_p=a + 2.5 * b, backend="eager")
    assert torch.equal(inside, whole)
    assert set(inside[:, 0].tolist()) == {0, 1, 3, 5}


RARE = 4096         # outcomes of probability RARE_P each, after the dominant one
RARE_P = 1e-8       # far below a float32 ulp of the running sum near 1 (6e-8), and ln(1/p) > 16.6


def test_rare_outcomes_drawn_at_their_float64_rate():
    """Outcome 0 has mass 1 - R, then RARE outcomes share R = RARE * RARE_P (4.1e-5). Rows are
    kept whose uniform u (the kernel's, by the same hash) falls in the last 2R of the CDF: given
    that, half the draws must be rare and spread evenly over them. The window's probability is
    exactly 2R, so the same counts estimate the unconditional rare rate; float32 Gumbel-max and
    float32 inverse-CDF sampling fail that check."""
    vocab, mask_id, step = RARE + 2, RARE + 1, 0
    probs = torch.full((RARE + 1,), RARE_P, dtype=torch.float64)
    probs[0] = 1 - RARE * RARE_P
    window = 2 * RARE * RARE_P
    candidates = torch.arange(4_000_000)
    u = rng.uniform53(candidates, torch.zeros(1, dtype=torch.int64), rng.STREAM_CATEGORICAL + step)
    seeds = candidates[u >= 1 - window][:160]
    n = seeds.numel()
    logits = torch.cat([probs.log(), torch.zeros(1, dtype=torch.float64)]).float().expand(n, 1, vocab)
    z = torch.full((n, 1), mask_id)
    last_step = step_weights(0.5, 1.0, "mdlm")       # everything unmasks: a plain categorical draw
    (draws, _), (ref, _) = _both(logits, z, seeds, step, last_step, mask_id)
    assert torch.equal(draws, ref)
    draws = draws[:, 0]
    rare_hits = int((draws > 0).sum())
    assert _rate_consistent(rare_hits, n / 2), rare_hits
    groups = torch.bincount((draws[draws > 0] - 1) // (RARE // 4), minlength=4).double()   # 4 equal-mass groups
    chi2 = float(((groups - rare_hits / 4) ** 2 / (rare_hits / 4)).sum())
    assert chi2 < 22.5, chi2                                 # 3 degrees of freedom: P(chi2 > 22.5) < 1e-4
    # float32 samplers, as many draws (n / window unconditional ones, or the same window):
    # Gumbel-max noise tops out near 16.6 < ln(1 / RARE_P); a float32 running sum near 1
    # does not grow by RARE_P, so the rare outcomes get no CDF mass
    gumbel_hits = _float32_gumbel_max_rare_hits(probs, round(n / window), torch.Generator().manual_seed(0))
    assert not _rate_consistent(gumbel_hits, n / 2), gumbel_hits
    u32 = rng.uniform53(seeds, torch.zeros(1, dtype=torch.int64), rng.STREAM_CATEGORICAL + step).numpy()
    cdf32 = np.cumsum(probs.numpy().astype(np.float32), dtype=np.float32)
    inverse_cdf32 = np.searchsorted(cdf32, (u32.astype(np.float32) * cdf32[-1]), side="right")
    assert not _rate_consistent(int((inverse_cdf32 > 0).sum()), n / 2)


def _rate_consistent(hits: int, expected: float) -> bool:
    return abs(hits - expected) <= 5 * math.sqrt(expected)


def _float32_gumbel_max_rare_hits(probs: torch.Tensor, n: int, gen: torch.Generator) -> int:
    """Rare wins among n float32 Gumbel-max draws over `probs` (uniforms on the 2^-24 grid),
    simulated exactly: the rare outcomes share one weight, so their best noise is that of the
    largest of RARE uniforms, drawn by inverting P(max <= x) = x^RARE on the grid."""
    v = torch.rand(n, generator=gen, dtype=torch.float64)
    max_u = (torch.floor(2.0 ** 24 * v ** (1.0 / RARE)).clamp(1, 2 ** 24 - 1) * 2.0 ** -24).float()
    u_dominant = torch.rand(n, generator=gen).clamp_min(2.0 ** -24)
    gumbel = lambda x: -torch.log(-torch.log(x))  # noqa: E731
    rare_wins = gumbel(max_u) + math.log(RARE_P) > gumbel(u_dominant) + math.log(float(probs[0]))
    return int(rare_wins.sum())


@triton.jit(do_not_specialize=["n", "stream"])
def _uniform53_kernel(seed_ptr, counter_ptr, out_ptr, n, stream, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    seed = tl.load(seed_ptr + offs, mask=ok, other=0)
    counter = tl.load(counter_ptr + offs, mask=ok, other=0)
    tl.store(out_ptr + offs, uniform53(seed, counter, stream), mask=ok)


def _kernel_uniforms(seeds: torch.Tensor, counters: torch.Tensor, stream: int) -> torch.Tensor:
    """imdm.kernels.sampler_rng.uniform53, the device function, run over int64 tensors."""
    seeds, counters = (t.contiguous() for t in torch.broadcast_tensors(seeds, counters))
    out = torch.empty(seeds.shape, dtype=torch.float64, device=seeds.device)
    _uniform53_kernel[(triton.cdiv(seeds.numel(), 1024),)](seeds, counters, out, seeds.numel(), stream, BLOCK=1024)
    return out


def test_kernel_uniforms_are_bit_identical_to_imdm_rng():
    seeds = torch.tensor([0, 1, 12345, 2 ** 40 + 3, 2 ** 62 + 12345, 2 ** 63 - 1, -5])
    counters = torch.arange(0, 4000, 13)
    for stream in (rng.STREAM_CATEGORICAL, rng.STREAM_CATEGORICAL + 1023, rng.STREAM_REDRAW + 7, 1):
        kernel = _kernel_uniforms(seeds[:, None], counters[None], stream)
        assert torch.equal(kernel, rng.uniform53(seeds[:, None], counters[None], stream)), stream


V, MASK = 11, 7


def _noise_for(seeds, generation):
    return mask_noise(seeds, 12, 3, "uniform", generation)


def _denoise(z, noise, t):
    """Raw logits that depend on the tokens and on the mask states (so re-draws matter)."""
    base = torch.linspace(-2, 2, V) * (1 + (z.float().mean(-1, keepdim=True) % 3))[..., None]
    return base + 4 * noise[..., :1] * torch.arange(V) / V


@pytest.mark.parametrize("settings,with_noise,prefix", [
    (SamplerSettings(6, "imdm", cached=False), True, False),
    (SamplerSettings(5, "mdlm", cached=True, temperature=0.8, top_p=0.9), False, True),
    (SamplerSettings(4, "imdm", cached=False, temperature=0.7, top_p=0.95), True, False),
    (SamplerSettings(4, "imdm", cached=False, temperature=1.3, temperature_form="x_theta"), True, False),
])
def test_ancestral_sample_fused_equals_eager(settings, with_noise, prefix):
    seeds = rng.derive_seed(9, torch.arange(2), rng.STREAM_SAMPLE_SEED)
    noise_for = _noise_for if with_noise else None
    denoise = _denoise if with_noise else (lambda z, noise, t: _denoise(z, torch.ones(*z.shape, 1), t))
    kw = dict(prefix=torch.tensor([[1, 2, 3], [4, 5, 6]]) if prefix else None)
    results = {kernel: ancestral_sample(denoise, LogLinearSchedule(), _with(settings, kernel), seeds, 12, MASK,
                                        noise_for, **kw) for kernel in ("triton", "eager")}
    assert torch.equal(results["triton"].tokens, results["eager"].tokens)
    assert results["triton"].nfe == results["eager"].nfe
    assert not (results["triton"].tokens == MASK).any()


def _with(settings: SamplerSettings, kernel: str) -> SamplerSettings:
    return SamplerSettings(**{**settings.__dict__, "kernel": kernel})


def test_registered_as_a_custom_op():
    logits = torch.randn(1, 4, 16)
    z = torch.tensor([[15, 3, 15, 15]])
    torch.library.opcheck(torch.ops.imdm.sampler_step.default,
                          (logits, z, torch.tensor([3]), 1, per_sample_weights(1, 0.5, 0.3, 0.2), 15, 0.7, 1.0,
                           "step"),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.gpu
@pytest.mark.parametrize("posterior,temperature,top_p,dtype", [
    ("imdm", 1.0, 1.0, torch.bfloat16), ("mdlm", 0.9, 1.0, torch.bfloat16), ("imdm", 1.1, 0.9, torch.float32)])
def test_logits_on_cuda_agree_with_the_reference(posterior, temperature, top_p, dtype):
    """bf16 (and fp32 for top-p: bf16 logits tie often, and a sort keeps an arbitrary subset
    of the ties at the threshold) logits of the OpenWebText vocabulary."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, seq_len, vocab = 8, 1024, 50258
    logits = (3 * torch.randn(batch, seq_len, vocab, device="cuda", generator=gen)).to(dtype)
    z = torch.randint(0, vocab - 1, (batch, seq_len), device="cuda", generator=gen)
    z[torch.rand(batch, seq_len, device="cuda", generator=gen) < 0.7] = vocab - 1
    seeds = rng.derive_seed(1, torch.arange(batch), rng.STREAM_SAMPLE_SEED).cuda()
    (z_k, redraw_k), (z_ref, redraw_ref) = _both(logits, z, seeds, 2, step_weights(0.2, 0.5, posterior), vocab - 1,
                                                 temperature, top_p)
    masked = int((z == vocab - 1).sum())
    assert int((z_k != z_ref).sum()) <= 1e-3 * masked      # boundary rows only (about 1e-6 of them)
    assert int((redraw_k != redraw_ref).sum()) <= 1e-3 * masked
    assert torch.equal(z_k[z != vocab - 1], z[z != vocab - 1])


@pytest.mark.gpu
def test_rare_outcomes_at_their_rate_on_cuda():
    """Unconditional version of the rare-outcome check: 2^20 outcomes of probability 1e-9 (mass
    1.05e-3) after a dominant one, 2^20 draws sharing one row of logits."""
    rare, rare_p, n = 1 << 20, 1e-9, 1 << 20
    probs = torch.full((rare + 1,), rare_p, dtype=torch.float64)
    probs[0] = 1 - rare * rare_p
    logits = torch.cat([probs.log(), torch.zeros(1, dtype=torch.float64)]).float().cuda()
    z = torch.full((n, 1), rare + 1, device="cuda")
    seeds = torch.arange(n, device="cuda")
    draws, _ = sampler_step(logits.expand(n, 1, -1), z, seeds, 0, 1.0, 0.0, 0.0, rare + 1, backend="triton")
    hits = int((draws > 0).sum())
    expected = n * rare * rare_p
    assert abs(hits - expected) <= 5 * math.sqrt(expected), (hits, expected)
    groups = torch.bincount((draws[draws > 0] - 1) // (rare // 4), minlength=4).double().cpu()
    assert float(((groups - hits / 4) ** 2 / (hits / 4)).sum()) < 22.5
