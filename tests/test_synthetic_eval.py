"""The synthetic evaluation's metrics on hand-made samples (validity, coverage ratio) and its
total-correlation groups (the estimate itself: tests/test_total_correlation.py)."""

import math

import pytest
import torch

from imdm.data.synthetic import synthetic_metrics, uniform_coverage


def test_coverage_ratio_against_uniform_draws():
    assert math.isclose(uniform_coverage(4, 2), 4 * (1 - (3 / 4) ** 2))
    samples = torch.tensor([[0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 0, 2]])
    m = synthetic_metrics(samples, vocab_size=4)
    assert m["validity"] == 0.75 and m["coverage"] == 2
    assert math.isclose(m["coverage_ratio"], 2 / (4 * (1 - 0.75 ** 4)))
    collapsed = synthetic_metrics(torch.zeros(1000, 3, dtype=torch.long), vocab_size=50_000)
    assert collapsed["validity"] == 1.0 and collapsed["coverage_ratio"] < 0.002


@pytest.mark.parametrize("duplicate", [1, 4])
def test_tc_replicas_share_mask_states_and_draw_apart(duplicate):
    """evaluate_synthetic's groups: each group's replicas share one mask-state seed and draw with
    their own seeds; neither overlaps the seeds of the main samples. A group has
    `sampling.duplicate` samples, or TC_REPLICAS while that is 1."""
    from imdm.algorithms.registry import recipe_from_dict
    from imdm.eval import synthetic_eval
    from imdm.sampling.ancestral import SampleResult

    calls = []

    class Recording:
        def sample(self, model, settings, seeds, seq_len, noise_seeds=None, **_):
            calls.append((seeds.clone(), (seeds if noise_seeds is None else noise_seeds).clone()))
            return SampleResult(torch.zeros(len(seeds), seq_len, dtype=torch.long), 1)

    recipe = recipe_from_dict({"data": {"vocab_size": 8, "seq_len": 4},
                               "sampling": {"steps": [1], "num_samples": 32, "batch": 32, "duplicate": duplicate}})
    rows = synthetic_eval.evaluate_synthetic(recipe, None, Recording(), torch.device("cpu"), tc_groups=4)
    assert rows[0]["tc_nats"] == 0.0 and rows[0]["validity"] == 1.0
    (sampled, _), (greedy, _), *groups = calls
    draws, states = (torch.cat(part) for part in zip(*groups))
    assert torch.equal(sampled, greedy)                          # greedy decodes the same samples
    k = duplicate if duplicate > 1 else synthetic_eval.TC_REPLICAS
    assert rows[0]["tc_replicas"] == k
    assert torch.equal(states, states[::k].repeat_interleave(k)) and len(states.unique()) == 4
    assert len(draws.unique()) == 4 * k
    assert not set(states.tolist()) & set(sampled.tolist()) and not set(draws.tolist()) & set(sampled.tolist())
