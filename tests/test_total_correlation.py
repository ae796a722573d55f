"""The total-correlation estimate (imdm.eval.total_correlation): the plug-in formula on
hand-made groups, and groups of `sampling.duplicate` samples that share their start state and
mask states but not their draws."""

import math

import torch

from imdm.algorithms.registry import recipe_from_dict
from imdm.eval.total_correlation import plug_in_total_correlation, total_correlation
from imdm.sampling.ancestral import SampleResult


def test_plug_in_total_correlation_on_hand_made_groups():
    same = torch.tensor([[[3, 3, 3]] * 4])                     # every replica one sequence: 0
    assert plug_in_total_correlation(same) == 0.0
    copies = torch.tensor([[[0, 0], [1, 1], [0, 0], [1, 1]]])   # two copies of one fair bit: ln 2
    assert math.isclose(plug_in_total_correlation(copies), math.log(2))
    independent = torch.tensor([[[0, 0], [0, 1], [1, 0], [1, 1]]])   # two independent fair bits: 0
    assert abs(plug_in_total_correlation(independent)) < 1e-12
    both = torch.cat([copies, independent])                     # the mean over groups
    assert math.isclose(plug_in_total_correlation(both), math.log(2) / 2)


class Recording:
    """A process whose sample i is [b_i, b_i, prefix...], b_i the parity of its draw seed:
    each group's TC is then the plug-in entropy of its draw parities."""

    def __init__(self):
        self.calls = []

    def sample(self, model, settings, seeds, seq_len, prefix=None, noise_seeds=None, **_):
        self.calls.append((seeds.clone(), noise_seeds.clone(), None if prefix is None else prefix.clone()))
        bit = (seeds % 2)[:, None]
        tokens = torch.cat([bit, bit, torch.zeros(len(seeds), seq_len - 2, dtype=torch.long)], 1)
        if prefix is not None:
            tokens[:, 2:2 + prefix.shape[1]] = prefix
        return SampleResult(tokens, 1)


def _recipe(**sampling):
    return recipe_from_dict({"data": {"vocab_size": 8, "seq_len": 6},
                             "sampling": {"steps": [1], "num_samples": 32, "batch": 8, **sampling}})


def _entropy(bits: torch.Tensor) -> float:
    p = bits.double().mean().item()
    return 0.0 if p in (0.0, 1.0) else -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_replicas_share_start_and_mask_states_but_not_draws():
    groups, k = 5, 4
    process = Recording()
    prefix = torch.arange(groups * 2).view(groups, 2)
    tc = total_correlation(_recipe(duplicate=k), None, process, torch.device("cpu"), None, groups, prefix=prefix)
    draws, states, prefixes = (torch.cat(part) for part in zip(*process.calls))
    assert [len(c[0]) for c in process.calls] == [8, 8, 4]         # batch 8: two groups of 4 per call
    assert torch.equal(states, states[::k].repeat_interleave(k)) and len(states.unique()) == groups
    assert len(draws.unique()) == groups * k and not set(draws.tolist()) & set(states.tolist())
    assert torch.equal(prefixes, prefix.repeat_interleave(k, 0))    # one start state per group
    hand = sum(_entropy(bits) for bits in (draws % 2).view(groups, k)) / groups
    assert hand > 0 and math.isclose(tc, hand)
    # groups start past the main samples' indices: another `first` gives other mask states
    again = Recording()
    total_correlation(_recipe(duplicate=k), None, again, torch.device("cpu"), None, groups, first=0)
    assert not set(torch.cat([c[1] for c in again.calls]).tolist()) & set(states.tolist())


def test_no_estimate_without_groups_of_two():
    process = Recording()
    assert total_correlation(_recipe(), None, process, torch.device("cpu"), None, 4) is None      # duplicate 1
    assert total_correlation(_recipe(duplicate=4), None, process, torch.device("cpu"), None, 0) is None
    assert not process.calls
