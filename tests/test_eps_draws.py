"""Eps-driven draws and greedy noise removal: the trajectory is a deterministic function of the
mask states, its unmasking times and draws have the ancestral sampler's distributions, and
greedy removal takes x_theta's argmax."""

import math

import pytest
import torch

from imdm.diffusion.forward_process import mask_noise
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.sampling.ancestral import SamplerSettings, ancestral_sample, time_grid
from imdm.sampling.eps_draws import DIGIT_BASE, eps_uniforms, unit_uniforms

MASK, V, L = 5, 6, 16
PROBS = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])   # x_theta over the 5 real tokens, every position


class Fixed:
    """A denoiser with fixed x_theta (or per-position logits) that records its calls."""

    def __init__(self, logits=None):
        self.logits, self.calls = logits, []

    def __call__(self, z, noise, t):
        self.calls.append((z.clone(), t))
        if self.logits is not None:
            return self.logits[: z.shape[0]]
        logp = torch.full((*z.shape, V), -1e6)
        logp[..., :MASK] = PROBS.log()
        return logp


def _noise_for(dim=8, dist="uniform"):
    return lambda seeds, generation: mask_noise(seeds, L, dim, dist, generation)


def _sample(seeds, steps=8, denoise=None, noise_dim=8, dist="uniform", **settings):
    options = dict(steps=steps, posterior="imdm", fix_eps=True, draws="eps", cached=False, **settings)
    return ancestral_sample(denoise or Fixed(), LogLinearSchedule(), SamplerSettings(**options), seeds, L, MASK,
                            _noise_for(noise_dim, dist), noise_dist=dist)


def test_the_trajectory_is_a_function_of_the_mask_states():
    seeds = torch.arange(512)
    a, b = _sample(seeds).tokens, _sample(seeds).tokens
    assert torch.equal(a, b)
    other = _sample(seeds + 10_000).tokens
    # two independent draws of x_theta agree with probability sum p^2 at each position
    agree = float((a == other).float().mean())
    expected = float((PROBS ** 2).sum())
    assert abs(agree - expected) < 5 * math.sqrt(expected * (1 - expected) / a.numel())


def test_same_mask_state_same_token_whatever_the_seed_stream():
    """The draws read the mask states only: a sampler fed the same noise under other seeds
    generates the same sequences."""
    seeds = torch.arange(64)
    fixed_noise = mask_noise(seeds, L, 8, "uniform", torch.zeros(64, L, dtype=torch.int64))
    settings = SamplerSettings(steps=8, posterior="imdm", fix_eps=True, draws="eps", cached=False)
    run = [ancestral_sample(Fixed(), LogLinearSchedule(), settings, s, L, MASK, lambda *_: fixed_noise,
                            noise_dist="uniform").tokens for s in (seeds, seeds + 99)]
    assert torch.equal(run[0], run[1])


@pytest.mark.parametrize("dist", ["uniform", "normal"])
def test_tokens_follow_x_theta(dist):
    tokens = _sample(torch.arange(4096), dist=dist).tokens
    freq = torch.bincount(tokens.flatten(), minlength=V)[:MASK].double() / tokens.numel()
    sd = (PROBS * (1 - PROBS) / tokens.numel()).sqrt()
    assert ((freq - PROBS).abs() < 5 * sd + 1e-12).all(), (freq, PROBS)


def test_unmasking_times_follow_the_posterior():
    """A denoiser certain of token j at step j's time: each position's token records the step
    that unmasked it, and the steps' shares match the reverse process's."""
    steps, sched = 5, LogLinearSchedule()
    grid = time_grid(steps)

    def step_token(z, noise, t):
        j = int(torch.argmin((grid[:-1] - t).abs()))
        logits = torch.full((*z.shape, V), -1e6)
        logits[..., j] = 0.0
        return logits

    tokens = _sample(torch.arange(4096), steps=steps, denoise=step_token).tokens
    share = torch.bincount(tokens.flatten(), minlength=V).double() / tokens.numel()
    start = 1 - float(sched.alpha(grid[0]))
    for j in range(steps):
        a_t = float(sched.alpha(grid[j]))
        a_s = 1.0 if j == steps - 1 else float(sched.alpha(grid[j + 1]))
        p = (a_s - a_t) / start                    # P(T in (s, t] | masked at t = 1)
        assert abs(float(share[j]) - p) <= 5 * math.sqrt(p * (1 - p) / tokens.numel()) + 1e-9, (j, float(share[j]), p)


def test_greedy_removal_takes_the_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, L, V, generator=g)
    logits[..., MASK] = 50.0          # SUBS: the mask is never chosen, however large its logit
    best = logits[..., :MASK].argmax(-1)
    for draws in ("seeded", "eps"):
        settings = SamplerSettings(steps=1, posterior="imdm", fix_eps=True, draws=draws, noise_removal="greedy")
        out = ancestral_sample(Fixed(logits), LogLinearSchedule(), settings, torch.arange(32), L, MASK,
                               _noise_for(), noise_dist="uniform")
        assert torch.equal(out.tokens, best) and out.nfe == 1
    ancestral = SamplerSettings(steps=1, posterior="imdm", fix_eps=True)
    drawn = ancestral_sample(Fixed(logits), LogLinearSchedule(), ancestral, torch.arange(32), L, MASK, _noise_for())
    assert not torch.equal(drawn.tokens, best)   # an ancestral last step draws


def test_digits_compose_a_uniform():
    noise = mask_noise(torch.arange(20_000), 1, 4, "uniform", torch.zeros(20_000, 1, dtype=torch.int64))
    v, u = eps_uniforms(noise, "uniform", digits=3)
    unit = unit_uniforms(noise, "uniform")
    assert torch.equal(v, unit[..., 0])
    assert torch.equal(torch.floor(u * DIGIT_BASE), torch.floor(unit[..., 1] * DIGIT_BASE))   # the leading digit
    counts = torch.histc(u.flatten().float(), bins=20, min=0, max=1)
    assert (counts - 1000).abs().max() < 5 * math.sqrt(1000)


def test_eps_draws_need_mask_states():
    settings = SamplerSettings(steps=2, posterior="mdlm", draws="eps")
    with pytest.raises(ValueError, match="eps-driven draws need mask states"):
        ancestral_sample(Fixed(), LogLinearSchedule(), settings, torch.arange(4), L, MASK)


def test_every_position_is_unmasked_from_any_start():
    """Completing partly masked sequences from their own start times (t = 0 included: a start
    with no masked share) leaves no mask, and the clean positions are kept."""
    seeds = torch.arange(8)
    start = torch.randint(0, MASK, (8, L))
    start[:, ::2] = MASK
    t_start = torch.linspace(0.0, 1.0, 8, dtype=torch.float64)
    settings = SamplerSettings(steps=4, posterior="imdm", fix_eps=True, draws="eps")
    out = ancestral_sample(Fixed(), LogLinearSchedule(), settings, seeds, L, MASK, _noise_for(), start=start,
                           t_start=t_start, noise_dist="uniform").tokens
    assert not (out == MASK).any() and torch.equal(out[:, 1::2], start[:, 1::2])
