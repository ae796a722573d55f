"""The synthetic task's evaluation at several step counts: validity and coverage of sampled and
of greedy (noise_removal = "greedy") generation, and the plug-in total correlation of samples
that share their mask states (imdm.eval.total_correlation). Every sample's seed comes from the
evaluation stream (rng.STREAM_EVAL_SEED), which no training step or coupling uses."""

from __future__ import annotations

import dataclasses
import math

import torch

from imdm.algorithms.protocol import Process
from imdm.build import sampler_settings
from imdm.data.synthetic import synthetic_metrics
from imdm.eval.evaluation_samples import evaluation_samples
from imdm.eval.total_correlation import total_correlation
from imdm.recipe import Recipe

# groups for the TC estimate, and their size while `sampling.duplicate` is 1 (recipes and run
# directories that predate the key keep their numbers)
TC_GROUPS, TC_REPLICAS = 64, 16


def tc_replicas(recipe: Recipe) -> int:
    """Samples per total-correlation group: `sampling.duplicate`, or TC_REPLICAS while it is 1."""
    return recipe.sampling.duplicate if recipe.sampling.duplicate > 1 else TC_REPLICAS


def evaluate_synthetic(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device,
                       tc_groups: int = TC_GROUPS) -> list[dict]:
    """One row per step count of `sampling.steps`: steps, nfe, validity / coverage / coverage
    ratio of `sampling.num_samples` sampled and greedy sequences, and tc_nats over `tc_groups`
    groups of `tc_replicas` samples (None with no groups)."""
    s, rows, replicas = recipe.sampling, [], tc_replicas(recipe)
    for steps in s.steps:
        settings = sampler_settings(recipe, steps)
        greedy = sampler_settings(dataclasses.replace(
            recipe, sampling=dataclasses.replace(s, noise_removal="greedy")), steps)
        sampled, nfe = evaluation_samples(recipe, model, process, device, settings)
        argmax, _ = evaluation_samples(recipe, model, process, device, greedy)
        tc = total_correlation(recipe, model, process, device, settings, tc_groups, replicas)
        metrics = synthetic_metrics(sampled, recipe.data.vocab_size)
        greedy_metrics = synthetic_metrics(argmax, recipe.data.vocab_size)
        rows.append({"steps": steps, "nfe": nfe, **metrics,
                     **{f"{k}_greedy": v for k, v in greedy_metrics.items()},
                     "tc_nats": tc, "tc_groups": tc_groups, "tc_replicas": replicas})
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
