"""The total correlation of a sampler's draws (docs/method.md section 9): groups of
`sampling.duplicate` samples that share their start state and their mask states (one noise
seed per group) and draw with their own seeds; within each group the plug-in estimate
sum_i H(x_i) - H(x), averaged over the groups, in nats. Works for any registered process:
one without mask states ignores the shared noise seed. Seeds come from the evaluation stream
(rng.STREAM_EVAL_SEED)."""

from __future__ import annotations

import torch

from imdm import rng
from imdm.algorithms.protocol import Process
from imdm.recipe import Recipe
from imdm.sampling.ancestral import generation_seeds


def plug_in_total_correlation(groups: torch.Tensor) -> float:
    """Mean over groups [G, K, L] of sum_i H(x_i) - H(x) (nats), each entropy the plug-in one of
    the group's K samples: 0 when every replica is the same sequence."""
    def entropy(values: torch.Tensor) -> float:
        _, counts = torch.unique(values, dim=0, return_counts=True)
        p = counts.double() / counts.sum()
        return float(-(p * p.log()).sum())
    total = [sum(entropy(g[:, i]) for i in range(g.shape[1])) - entropy(g) for g in groups]
    return sum(total) / len(total)


def group_seeds(seed: int, first: int, groups: int, duplicate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise seeds, draw seeds), int64 [groups * duplicate], group-major, of groups first ..
    first + groups - 1: a group's replicas share the noise seed of evaluation sample index
    first + g and draw with seeds derived from it and the replica's index."""
    states = generation_seeds(seed, first, groups, rng.STREAM_EVAL_SEED).repeat_interleave(duplicate)
    draws = rng.derive_seed(states, torch.arange(groups * duplicate) % duplicate, rng.STREAM_EVAL_SEED)
    return states, draws


def total_correlation(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device, settings,
                      groups: int, duplicate: int | None = None, first: int | None = None,
                      prefix: torch.Tensor | None = None) -> float | None:
    """The plug-in total correlation (nats) of `groups` groups of `duplicate` samples
    (default: `sampling.duplicate`) drawn with the process's `settings` (imdm.build.sampler_settings).
    Groups take evaluation sample indices first .. first + groups - 1 (default first:
    `sampling.num_samples`, past the indices of the main samples); `prefix` [groups, P] is each
    group's shared start. None when there is no group or a group has one sample."""
    s = recipe.sampling
    duplicate = s.duplicate if duplicate is None else duplicate
    first = s.num_samples if first is None else first
    if groups < 1 or duplicate < 2:
        return None
    if prefix is not None and prefix.shape[0] != groups:
        raise ValueError(f"need one prefix per group: {groups} groups, prefix {tuple(prefix.shape)}")
    states, draws = group_seeds(s.seed, first, groups, duplicate)
    per_call = max(1, s.batch // duplicate)
    out = []
    for g in range(0, groups, per_call):
        rows = slice(g * duplicate, min(g + per_call, groups) * duplicate)
        shared = None if prefix is None else prefix[g:g + per_call].repeat_interleave(duplicate, 0).to(device)
        result = process.sample(model, settings, draws[rows].to(device), recipe.data.seq_len, prefix=shared,
                                noise_seeds=states[rows].to(device))
        out.append(result.tokens.cpu())
    return plug_in_total_correlation(torch.cat(out).view(groups, duplicate, -1))
