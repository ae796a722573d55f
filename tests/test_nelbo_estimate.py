"""The perplexity bound with several times t per sequence (eval.t_per_sequence): each sequence's
k times sit 1/k apart, one per stratum; the estimate is unbiased for every sequence, whatever its
place in the batch; more times per sequence lower the spread over seeds of a real model's bound."""

import statistics

import pytest
import torch

from imdm.algorithms.registry import recipe_from_dict
from imdm.build import build_model, build_process
from imdm.data.synthetic import SyntheticRepeat
from imdm.diffusion.times import T_MIN, training_times
from imdm.eval.perplexity import nelbo_per_token, stratum_order


class _Rows:
    """Sequence r holds the token value r at each of its 3 positions, all valid."""
    seq_len = 3

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def rows(self, index):
        tokens = index[:, None].expand(-1, self.seq_len).clone()
        return tokens, torch.ones_like(tokens, dtype=torch.bool)


class _TimeProcess:
    """A stand-in bound whose per-token term at time t is x * t^2 for a token of value x; t is
    drawn as the masked-diffusion processes draw it (antithetic over the global batch)."""

    def __init__(self):
        self.times = {}     # (step, sequence value) -> the times it was scored at

    def loss(self, model, x0, global_index, global_batch, step, seed=None, valid=None):
        t = training_times(seed, step, global_batch)[global_index]
        for value, time in zip(x0[:, 0].tolist(), t.tolist()):
            self.times.setdefault((step, value), []).append(time)
        return (x0.double() * (t[:, None] ** 2) * valid).sum()


def _integral_of_t_squared() -> float:
    """E[t^2] for t = (1 - T_MIN) u + T_MIN, u ~ U(0, 1)."""
    a = T_MIN
    return (1 - a) ** 2 / 3 + a * (1 - a) + a ** 2


def test_each_sequence_gets_k_times_one_per_stratum_a_constant_1_over_k_apart():
    process, k, n = _TimeProcess(), 4, 5
    nelbo_per_token(torch.nn.Identity(), process, _Rows(2 * n), n, 0, torch.device("cpu"), seed=7, t_per_sequence=k)
    assert len(process.times) == 2 * n
    for times in process.times.values():
        u = sorted((t - T_MIN) / (1 - T_MIN) for t in times)
        assert [int(x * k) for x in u] == list(range(k))                       # one in each stratum
        assert all(b - a == pytest.approx(1 / k) for a, b in zip(u, u[1:]))    # antithetic: a fixed offset


def test_stratum_order_is_a_seeded_permutation():
    order = stratum_order(11, 3, 16)
    assert sorted(order.tolist()) == list(range(16)) and torch.equal(order, stratum_order(11, 3, 16))
    assert not torch.equal(order, stratum_order(11, 4, 16)) and not torch.equal(order, stratum_order(12, 3, 16))


@pytest.mark.parametrize("k", [1, 3])
def test_the_estimate_is_unbiased_for_every_sequence(k):
    """Mean over seeds of the estimate against E = mean_r(r) * E[t^2]; with row r always in
    stratum r (no permutation) row 3 of 4 would sit at t >= 0.75 and the mean would be far off."""
    n, seeds = 4, 500
    estimates = [nelbo_per_token(torch.nn.Identity(), _TimeProcess(), _Rows(n), n, 0, torch.device("cpu"), seed=s,
                                 t_per_sequence=k)[0] for s in range(seeds)]
    expected = statistics.mean(range(n)) * _integral_of_t_squared()
    mean, spread = statistics.mean(estimates), statistics.stdev(estimates) / seeds ** 0.5
    assert abs(mean - expected) < 4 * spread and spread < 0.05 * expected


def test_more_times_per_sequence_lower_the_spread_over_seeds_of_a_tiny_model():
    recipe = recipe_from_dict({"run": {"seed": 3}, "model": {"size": "custom", "d_model": 32, "n_blocks": 1,
                                                             "n_heads": 2},
                               "algorithm": {"name": "mdlm"}, "data": {"vocab_size": 16, "seq_len": 8}})
    model, process = build_model(recipe, 17, 16), build_process(recipe, 16)
    data = SyntheticRepeat(16, 8, 8, seed=1)

    def spread(k):
        return statistics.stdev(nelbo_per_token(model, process, data, 8, 0, torch.device("cpu"), seed=s,
                                                t_per_sequence=k)[0] for s in range(12))

    one, eight = spread(1), spread(8)
    assert eight < 0.5 * one, (one, eight)
