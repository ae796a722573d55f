"""Exact categorical sampling: chi-square against the true probabilities, and rare outcomes
(each below 1e-8) drawn at their rate -- a check that float32 samplers fail."""

import math

import torch

from imdm import rng
from imdm.diffusion.categorical import categorical_from_uniform, shape_probs


def _uniforms(n: int, seed: int = 1) -> torch.Tensor:
    return rng.uniform53(torch.tensor(seed), torch.arange(n), rng.STREAM_CATEGORICAL)


def _chi_square_stat(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_matches_exact_probabilities_chi_square():
    probs = torch.tensor([0.31, 0.02, 0.0, 0.17, 0.4, 0.005, 0.095], dtype=torch.float64)
    n = 200_000
    weights = (probs * 3.7).expand(n, -1).contiguous()  # unnormalised, one row per draw
    draws = categorical_from_uniform(weights, _uniforms(n))
    counts = torch.bincount(draws, minlength=7).double()
    assert counts[2] == 0  # zero-weight outcome never drawn
    keep = probs > 0
    stat = _chi_square_stat(counts[keep], probs[keep])
    # 5 degrees of freedom: P(chi2 > 30) < 2e-5
    assert stat < 30, stat


def test_zero_weight_tail_never_drawn_even_at_u_near_one():
    weights = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    u = torch.tensor([1 - 2 ** -53, 0.999999999999, 0.25], dtype=torch.float64)
    assert categorical_from_uniform(weights, u).tolist() == [1, 1, 0]
    rows = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 1e-12, 0.0, 3.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert categorical_from_uniform(rows, torch.full((3,), 1 - 2 ** -53, dtype=torch.float64)).tolist() == [1, 3, 0]
    assert categorical_from_uniform(rows, torch.full((3,), 2 ** -60, dtype=torch.float64)).tolist() == [0, 1, 0]


RARE_P = 5e-9          # each rare outcome: below 1e-8
RARE_COUNT = 1 << 20   # their total mass: about 5.2e-3


def _rare_weights() -> torch.Tensor:
    w = torch.full((RARE_COUNT + 1,), RARE_P, dtype=torch.float64)
    w[RARE_COUNT // 2] = 1.0 - RARE_P * RARE_COUNT   # the dominant outcome in the middle
    return w


def _rate_consistent(hits: int, expected: float) -> bool:
    return abs(hits - expected) <= 5 * math.sqrt(expected)


def test_rare_outcomes_are_drawn_at_their_rate():
    weights = _rare_weights()
    n = 100_000
    draws = categorical_from_uniform(weights, _uniforms(n, seed=3))
    hits = int((draws != RARE_COUNT // 2).sum())
    expected = n * RARE_P * RARE_COUNT
    assert _rate_consistent(hits, expected), (hits, expected)


def _float32_gumbel_max_rare_hits(n: int, gen: torch.Generator) -> int:
    """Draws from _rare_weights() by float32 Gumbel-max (noise -log(-log(u)) with float32
    uniforms u = k * 2^-24), simulated exactly without materialising n x 2^20 noise: the rare
    outcomes share one weight, so the best of them has the noise of the largest of their
    RARE_COUNT uniforms, sampled on the float32 grid by inverting P(max <= x) = x^RARE_COUNT."""
    v = torch.rand(n, generator=gen, dtype=torch.float64)
    max_u = torch.floor(2.0 ** 24 * v ** (1.0 / RARE_COUNT)).clamp_max(2 ** 24 - 1) * 2.0 ** -24
    u_dom = torch.rand(n, generator=gen)  # float32, multiples of 2^-24
    g_rare = -torch.log(-torch.log(max_u.float().clamp_min(1e-38)))
    g_dom = -torch.log(-torch.log(u_dom.clamp_min(1e-38)))
    w = _rare_weights()
    rare_wins = g_rare + math.log(RARE_P) > g_dom + float(torch.log(w[RARE_COUNT // 2]))
    return int(rare_wins.sum())


def test_float32_gumbel_max_fails_the_rare_rate_check():
    """The same check rejects float32 Gumbel-max: its noise is capped near 16.6, below
    ln(1 / 5e-9) = 19.1, so outcomes that rare are almost never drawn."""
    n = 100_000
    hits = _float32_gumbel_max_rare_hits(n, torch.Generator().manual_seed(0))
    expected = n * RARE_P * RARE_COUNT
    assert hits < expected / 10
    assert not _rate_consistent(hits, expected), (hits, expected)


def test_temperature_and_top_p():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = shape_probs(logp, temperature=0.5)
    ref = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64) ** 2
    torch.testing.assert_close(p[0], ref / ref.sum())
    p = shape_probs(logp, top_p=0.75)       # 0.5 + 0.3 reaches 0.75: keep exactly those two
    torch.testing.assert_close(p[0], torch.tensor([0.625, 0.375, 0.0, 0.0], dtype=torch.float64))
    p = shape_probs(logp, top_p=0.85)       # needs the third
    assert (p[0] > 0).tolist() == [True, True, True, False]
