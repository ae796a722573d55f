"""Counter-based random numbers: bit-exact against an independent uint32 implementation,
uniform, and independent of how a batch is split."""

import numpy as np
import torch

from imdm import rng
from imdm.diffusion.forward_process import mask_noise, mask_positions


def _mix32_numpy(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def _hash32_numpy(seed: int, counter: np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        lo, hi = np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)
        k1 = _mix32_numpy(np.array([lo ^ _mix32_numpy(np.array([(stream + 0x9E3779B9) & 0xFFFFFFFF]))[0]]))[0]
        k2 = _mix32_numpy(np.array([hi ^ _mix32_numpy(np.array([k1 ^ np.uint32(0x5BD1E995)]))[0]]))[0]
        return _mix32_numpy(_mix32_numpy(counter.astype(np.uint32) ^ k1) + k2)


def test_hash_bit_exact_against_uint32_arithmetic():
    counter = np.arange(0, 5_000_000, 997, dtype=np.int64)
    for seed, stream in [(0, 0), (12345, rng.STREAM_EPS), (2 ** 62 + 17, rng.STREAM_MASK)]:
        with np.errstate(over="ignore"):
            ref = _hash32_numpy(seed, counter, stream).astype(np.int64)
        for impl in (rng.hash32_host, rng.hash32_words):   # the host path, and the one of other devices
            got = impl(torch.tensor(seed), torch.from_numpy(counter), stream).numpy()
            np.testing.assert_array_equal(got, ref)


def test_host_and_device_hash_agree_under_broadcasting():
    seeds = rng.derive_seed(3, torch.arange(7), rng.STREAM_SAMPLE_SEED)[:, None]
    counter = torch.arange(0, 2 ** 33, 2 ** 33 // 101)[None, :]
    streams = torch.arange(7)[:, None] * 2 + rng.STREAM_EPS
    host = rng.hash32(seeds, counter, streams)
    assert host.dtype == torch.int64 and host.shape == (7, 102)
    assert torch.equal(host, rng.hash32_words(seeds, counter, streams))


def test_uniforms_are_uniform_and_in_open_interval():
    u = rng.uniform24(torch.tensor(5), torch.arange(400_000), 3)
    assert u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = 400_000 / 20
    assert float(((counts - expected) ** 2 / expected).sum()) < 60  # chi2, 19 dof
    u53 = rng.uniform53(torch.tensor(5), torch.arange(200_000), 3)
    assert u53.dtype == torch.float64
    # resolution below float32's 2^-24 grid: the fractional part of u * 2^24 is uniform too
    frac = torch.frac(u53 * 2 ** 24)
    assert abs(float(frac.mean()) - 0.5) < 0.01 and float(frac.std()) > 0.28


def test_streams_and_seeds_are_independent():
    c = torch.arange(100_000)
    a = rng.uniform24(torch.tensor(1), c, 3)
    b = rng.uniform24(torch.tensor(1), c, 4)
    d = rng.uniform24(torch.tensor(2), c, 3)
    for x, y in [(a, b), (a, d)]:
        assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < 0.02


def test_mask_noise_identical_whatever_the_batch_split():
    seeds = rng.derive_seed(9, torch.arange(12), rng.STREAM_SAMPLE_SEED)
    for dist in ("uniform", "normal"):
        whole = mask_noise(seeds, 7, 5, dist)
        parts = torch.cat([mask_noise(seeds[i:i + 5], 7, 5, dist) for i in range(0, 12, 5)])
        assert torch.equal(whole, parts)
        reversed_ = mask_noise(seeds.flip(0), 7, 5, dist).flip(0)
        assert torch.equal(whole, reversed_)
    masks = mask_positions(seeds, 7, torch.full((12,), 0.5))
    assert torch.equal(masks[3:9], mask_positions(seeds[3:9], 7, torch.full((6,), 0.5)))


def test_mask_noise_distributions_and_redraw_generations():
    seeds = torch.arange(64)
    u = mask_noise(seeds, 32, 16, "uniform")
    assert -1 < float(u.min()) and float(u.max()) < 1 and abs(float(u.mean())) < 0.02
    n = mask_noise(seeds, 32, 16, "normal")
    assert abs(float(n.mean())) < 0.03 and abs(float(n.std()) - 1) < 0.03
    gen = torch.zeros(64, 32, dtype=torch.int64)
    gen[:, 5] = 3
    redrawn = mask_noise(seeds, 32, 16, "uniform", gen)
    assert torch.equal(redrawn[:, :5], u[:, :5]) and not torch.equal(redrawn[:, 5], u[:, 5])


def test_evaluation_seeds_never_meet_coupling_or_training_seeds():
    """The same root seed (42 is every default) gives disjoint seed sets to evaluation samples,
    couplings and training sequences, so no evaluated sample starts from a mask state a model
    was trained on or a coupling was generated from."""
    from imdm.diffusion.times import sample_seeds
    from imdm.sampling.ancestral import generation_seeds
    n = 50_000
    evaluation = set(generation_seeds(42, 0, n, rng.STREAM_EVAL_SEED).tolist())
    couplings = set(generation_seeds(42, 0, n, rng.STREAM_COUPLING_SEED).tolist())
    training = set(torch.cat([sample_seeds(42, step, torch.arange(512)) for step in range(100)]).tolist())
    assert len(evaluation) == len(couplings) == n and len(training) == 51_200
    assert not evaluation & couplings and not evaluation & training and not couplings & training
