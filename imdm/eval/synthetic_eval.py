"""The synthetic task's evaluation at several step counts: validity and coverage of sampled and
of greedy (noise_removal = "greedy") generation, and the plug-in total correlation of samples
that share their mask states. Every sample's seed comes from the evaluation stream
(rng.STREAM_EVAL_SEED), which no training step or coupling uses."""

from __future__ import annotations

import dataclasses
import math

import torch

from imdm import rng
from imdm.algorithms.protocol import Process
from imdm.build import sampler_settings
from imdm.data.synthetic import synthetic_metrics
from imdm.recipe import Recipe
from imdm.sampling.ancestral import generation_seeds

TC_GROUPS, TC_REPLICAS = 64, 16    # groups of samples sharing their mask states, for the TC estimate


def _generate(recipe: Recipe, model, process: Process, device, settings, first: int, count: int,
              replicas: int = 1) -> tuple[torch.Tensor, float]:
    """(tokens [count * replicas, L], NFE per batch) of evaluation samples first .. first + count - 1;
    each sample's `replicas` copies share its mask states and draw with their own seeds."""
    s, out, nfe, calls = recipe.sampling, [], 0, 0
    per_call = max(1, s.batch // replicas)
    for start in range(first, first + count, per_call):
        n = min(per_call, first + count - start)
        states = generation_seeds(s.seed, start, n, rng.STREAM_EVAL_SEED).repeat_interleave(replicas)
        draws = rng.derive_seed(states, torch.arange(n * replicas) % replicas, rng.STREAM_EVAL_SEED)
        result = process.sample(model, settings, (draws if replicas > 1 else states).to(device),
                                recipe.data.seq_len, noise_seeds=states.to(device))
        out.append(result.tokens.cpu())
        nfe, calls = nfe + result.nfe, calls + 1
    return torch.cat(out), nfe / calls


def plug_in_total_correlation(groups: torch.Tensor) -> float:
    """Mean over groups [G, K, L] of sum_i H(x_i) - H(x) (nats), each entropy the plug-in one of
    the group's K samples: 0 when every replica is the same sequence."""
    def entropy(values: torch.Tensor) -> float:
        _, counts = torch.unique(values, dim=0, return_counts=True)
        p = counts.double() / counts.sum()
        return float(-(p * p.log()).sum())
    total = [sum(entropy(g[:, i]) for i in range(g.shape[1])) - entropy(g) for g in groups]
    return sum(total) / len(total)


def evaluate_synthetic(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device,
                       tc_groups: int = TC_GROUPS) -> list[dict]:
    """One row per step count of `sampling.steps`: steps, nfe, validity / coverage / coverage
    ratio of `sampling.num_samples` sampled and greedy sequences, and tc_nats over `tc_groups`
    groups of TC_REPLICAS samples (None with no groups)."""
    s, rows = recipe.sampling, []
    for steps in s.steps:
        settings = sampler_settings(recipe, steps)
        greedy = sampler_settings(dataclasses.replace(
            recipe, sampling=dataclasses.replace(s, noise_removal="greedy")), steps)
        sampled, nfe = _generate(recipe, model, process, device, settings, 0, s.num_samples)
        argmax, _ = _generate(recipe, model, process, device, greedy, 0, s.num_samples)
        tc = None
        if tc_groups:
            tc_samples, _ = _generate(recipe, model, process, device, settings, s.num_samples, tc_groups, TC_REPLICAS)
            tc = plug_in_total_correlation(tc_samples.view(tc_groups, TC_REPLICAS, -1))
        metrics = synthetic_metrics(sampled, recipe.data.vocab_size)
        greedy_metrics = synthetic_metrics(argmax, recipe.data.vocab_size)
        rows.append({"steps": steps, "nfe": nfe, **metrics,
                     **{f"{k}_greedy": v for k, v in greedy_metrics.items()},
                     "tc_nats": tc, "tc_groups": tc_groups, "tc_replicas": TC_REPLICAS})
    return rows


def format_table(rows: list[dict], vocab_size: int, seq_len: int) -> str:
    """The rows (each with a 'method') as a console table under a line stating the one-step floor."""
    floor = math.exp(-(seq_len - 1) * math.log(vocab_size))
    lines = [f"synthetic task: V={vocab_size}, L={seq_len}; a factorised one-step draw from all-mask is valid with "
             f"probability V^-(L-1) = {floor:.2g}; coverage ratio: distinct valid tokens over what as many uniform "
             f"draws cover",
             f"{'method':<22}{'steps':>6}{'nfe':>7}{'valid':>8}{'greedy':>8}{'coverage':>10}{'greedy':>8}"
             f"{'TC nats':>9}"]
    for r in rows:
        lines.append(f"{r['method']:<22}{r['steps']:>6}{r['nfe']:>7.1f}{r['validity']:>8.3f}{r['validity_greedy']:>8.3f}"
                     f"{r['coverage_ratio']:>10.3f}{r['coverage_ratio_greedy']:>8.3f}"
                     + (f"{r['tc_nats']:>9.2f}" if r["tc_nats"] is not None else f"{'-':>9}"))
    return "\n".join(lines)
