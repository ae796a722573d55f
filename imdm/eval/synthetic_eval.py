"""Validity and coverage of a model on the synthetic task at several step counts."""

from __future__ import annotations

import torch

from imdm.algorithms.protocol import Process
from imdm.build import sampler_settings
from imdm.data.synthetic import synthetic_metrics
from imdm.recipe import Recipe
from imdm.sampling.ancestral import generation_seeds

def evaluate_synthetic(recipe: Recipe, model: torch.nn.Module, process: Process,
                       device: torch.device) -> list[dict]:
    """One row per step count of `sampling.steps`: steps, nfe, validity, coverage."""
    s = recipe.sampling
    rows = []
    for steps in s.steps:
        settings = sampler_settings(recipe, steps)
        samples, nfe = [], 0
        for start in range(0, s.num_samples, s.batch):
            seeds = generation_seeds(s.seed, start, s.batch)
            result = process.sample(model, settings, seeds.to(device), recipe.data.seq_len)
            samples.append(result.tokens.cpu())
            nfe += result.nfe
        metrics = synthetic_metrics(torch.cat(samples), recipe.data.vocab_size)
        rows.append({"steps": steps, "nfe": nfe / (s.num_samples // s.batch), **metrics})
    return rows
