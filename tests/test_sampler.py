"""The ancestral sampler: unmasking rates, IMDM re-draw rates, fix_eps, prefixes, NFE."""

import math

import pytest
import torch

from imdm.diffusion.forward_process import mask_noise
from imdm.diffusion.schedule import LogLinearSchedule
from imdm.sampling.ancestral import SamplerSettings, ancestral_sample, time_grid

MASK = 5
V = 6


class Recorder:
    """A uniform denoiser over the 5 real tokens that records what it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, z, noise, t):
        self.calls.append((z.clone(), None if noise is None else noise.clone(), t))
        logp = torch.full((*z.shape, V), math.log(1 / (V - 1)))
        logp[..., MASK] = -1e6
        return logp


def _noise_for(seeds, generation):
    return mask_noise(seeds, 64, 3, "uniform", generation)


def test_fraction_unmasked_per_step_matches_posterior():
    steps, sched = 6, LogLinearSchedule()
    rec = Recorder()
    seeds = torch.arange(256)
    out = ancestral_sample(rec, sched, SamplerSettings(steps, "mdlm", cached=False), seeds, 64, MASK)
    assert out.nfe == steps and len(rec.calls) == steps
    grid = time_grid(steps)
    states = [c[0] for c in rec.calls] + [out.tokens]
    for j in range(steps):
        a_t = float(sched.alpha(grid[j]))
        a_s = 1.0 if j == steps - 1 else float(sched.alpha(grid[j + 1]))
        was = states[j] == MASK
        frac = float((states[j + 1][was] != MASK).float().mean())
        p = (a_s - a_t) / (1 - a_t)
        n = int(was.sum())
        assert abs(frac - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (j, frac, p)
        assert torch.equal(states[j + 1][~was], states[j][~was])     # clean tokens stay
    assert not (out.tokens == MASK).any()


def test_imdm_redraw_share_and_fix_eps():
    steps, sched = 5, LogLinearSchedule()
    seeds = torch.arange(256)
    rec = Recorder()
    ancestral_sample(rec, sched, SamplerSettings(steps, "imdm", cached=False), seeds, 64, MASK, _noise_for)
    grid = time_grid(steps)
    for j in range(steps - 1):
        a_t = float(sched.alpha(grid[j]))
        a_s = float(sched.alpha(grid[j + 1]))
        z0, n0, _ = rec.calls[j]
        z1, n1, _ = rec.calls[j + 1]
        stayed = (z0 == MASK) & (z1 == MASK)
        redrawn = (n0 != n1).any(-1)
        share = float(redrawn[stayed].float().mean())
        p = 1 - a_t / a_s
        assert abs(share - p) <= 5 * math.sqrt(p * (1 - p) / int(stayed.sum())) + 1e-12, (j, share, p)
        assert not redrawn[z0 != MASK].any()
    rec = Recorder()
    ancestral_sample(rec, sched, SamplerSettings(steps, "imdm", fix_eps=True, cached=False), seeds, 64,
                     MASK, _noise_for)
    assert all(torch.equal(rec.calls[0][1], c[1]) for c in rec.calls)


def test_prefix_is_clamped_and_caching_saves_evaluations():
    seeds = torch.arange(8)
    prefix = torch.randint(0, MASK, (8, 10))
    rec = Recorder()
    out = ancestral_sample(rec, LogLinearSchedule(), SamplerSettings(50, "mdlm", cached=False), seeds, 64, MASK,
                           prefix=prefix)
    assert torch.equal(out.tokens[:, :10], prefix)
    assert all(torch.equal(c[0][:, :10], prefix) for c in rec.calls)
    assert out.nfe == 50 and not (out.tokens == MASK).any()
    # cached: one sequence with 54 positions to fill changes at most 54 times in 1000 steps
    rec = Recorder()
    out = ancestral_sample(rec, LogLinearSchedule(), SamplerSettings(1000, "mdlm", cached=True), seeds[:1], 64,
                           MASK, prefix=prefix[:1])
    assert out.nfe == len(rec.calls) <= 1 + 54
    assert not (out.tokens == MASK).any()


def test_sampling_is_reproducible_from_seeds_and_batch_independent():
    sched = LogLinearSchedule()
    settings = SamplerSettings(8, "imdm", cached=False)

    def denoise(z, noise, t):   # depends on the noise, so re-draws matter
        logits = torch.stack([noise[..., 0] * k for k in range(V)], -1)
        logits[..., MASK] = -1e6
        return torch.log_softmax(logits, -1)

    seeds = torch.arange(100, 116)
    a = ancestral_sample(denoise, sched, settings, seeds, 64, MASK, _noise_for).tokens
    b = torch.cat([ancestral_sample(denoise, sched, settings, seeds[i:i + 4], 64, MASK, _noise_for).tokens
                   for i in range(0, 16, 4)])
    assert torch.equal(a, b)


def test_completion_from_a_partially_masked_start_runs_the_grid_from_t_start():
    start = torch.randint(0, MASK, (16, 64))
    start[:, ::3] = MASK
    rec = Recorder()
    out = ancestral_sample(rec, LogLinearSchedule(), SamplerSettings(4, "mdlm", cached=False), torch.arange(16), 64,
                           MASK, start=start, t_start=0.4)
    assert [c[2] for c in rec.calls] == [float(t) for t in time_grid(4, 0.4)[:4]]
    assert abs(rec.calls[0][2] - 0.4) < 1e-12
    assert torch.equal(out.tokens[start != MASK], start[start != MASK])
    assert not (out.tokens == MASK).any()
    assert torch.equal(start[:, ::3], torch.full_like(start[:, ::3], MASK))   # the caller's tensor is untouched


@pytest.mark.parametrize("kernel,batch,seq_len,steps", [("eager", 8, 64, 12), ("triton", 3, 8, 6)])
def test_per_sample_start_times_equal_one_call_per_sample(kernel, batch, seq_len, steps):
    def denoise(z, noise, t):   # depends on z and on the noise, so every choice matters
        logits = torch.stack([noise[..., 0] * k + (z == k).sum(-1, keepdim=True) for k in range(V)], -1)
        return torch.log_softmax(logits.float(), -1)

    def noise_for(seeds, generation):
        return mask_noise(seeds, seq_len, 3, "uniform", generation)

    seeds = torch.arange(40, 40 + batch)
    start = torch.randint(0, MASK, (batch, seq_len))
    start[torch.rand(batch, seq_len) < 0.6] = MASK
    t = torch.linspace(0.2, 1.0, batch, dtype=torch.float64)
    settings = SamplerSettings(steps, "imdm", cached=True, kernel=kernel)
    together = ancestral_sample(denoise, LogLinearSchedule(), settings, seeds, seq_len, MASK, noise_for,
                                start=start, t_start=t).tokens
    alone = torch.cat([ancestral_sample(denoise, LogLinearSchedule(), settings, seeds[i:i + 1], seq_len, MASK,
                                        noise_for, start=start[i:i + 1], t_start=float(t[i])).tokens
                       for i in range(batch)])
    assert torch.equal(together, alone)
    assert not (together == MASK).any() and torch.equal(together[start != MASK], start[start != MASK])
