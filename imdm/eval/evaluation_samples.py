"""The evaluation's unconditional samples: indices 0 .. `sampling.num_samples` - 1 of the
evaluation stream (rng.STREAM_EVAL_SEED), drawn `sampling.batch` per sampler call, so they do
not depend on the batch size and never start from a training or coupling seed."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from imdm import rng
from imdm.algorithms.protocol import Process
from imdm.recipe import Recipe
from imdm.sampling.ancestral import generation_seeds


def evaluation_samples(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device, settings,
                       progress_label: str | None = None) -> tuple[torch.Tensor, float]:
    """(tokens [N, L] on the CPU, mean NFE per sampler call) with the process's `settings`; a
    progress bar on stderr when `progress_label` is given."""
    s, out, nfe = recipe.sampling, [], []
    bar = tqdm(total=s.num_samples, desc=progress_label, unit="seq", file=sys.stderr, dynamic_ncols=True,
               disable=progress_label is None)
    for first in range(0, s.num_samples, s.batch):
        seeds = generation_seeds(s.seed, first, min(s.batch, s.num_samples - first), rng.STREAM_EVAL_SEED)
        result = process.sample(model, settings, seeds.to(device), recipe.data.seq_len)
        out.append(result.tokens.cpu())
        nfe.append(result.nfe)
        bar.update(len(seeds))
    bar.close()
    return torch.cat(out), sum(nfe) / len(nfe)
