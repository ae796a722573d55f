"""What `imdm sample` draws from a loaded run: `sampling.batch` sequences per sampler call, from
the evaluation stream's seeds (or the conditional seeds with a prompt), so the samples do not
depend on the batch; the network calls are counted on stderr unless logging.progress is off."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from imdm import rng
from imdm.build import sampler_settings
from imdm.eval.conditional import conditional_seeds
from imdm.recipe.errors import RecipeError
from imdm.run_loading import LoadedRun
from imdm.sampling.ancestral import generation_seeds


def draw_samples(run: LoadedRun, steps: int, num_samples: int, prompt: list[int] | None) -> tuple[torch.Tensor, int]:
    """(tokens [num_samples, L], the most network calls one sampler call used)."""
    if num_samples < 1:
        raise RecipeError("imdm sample --num-samples", [f"must be at least 1, got {num_samples}"])
    s, device = run.recipe.sampling, run.model.token_embed.device
    bar = tqdm(desc=f"sampling {num_samples} x {steps} steps", unit="call", file=sys.stderr, dynamic_ncols=True,
               disable=not run.recipe.logging.progress)

    def count_call(*_) -> None:     # a forward hook returning None leaves the output alone
        bar.update(1)
    hook = run.model.register_forward_hook(count_call)
    tokens, nfe = [], []
    try:
        for first in range(0, num_samples, s.batch):
            count = min(s.batch, num_samples - first)
            if prompt is None:
                seeds, prefix = generation_seeds(s.seed, first, count, rng.STREAM_EVAL_SEED), None
            else:
                seeds = conditional_seeds(s.seed, first, count)
                prefix = torch.tensor([prompt] * count, dtype=torch.int64, device=device)
            result = run.process.sample(run.model, sampler_settings(run.recipe, steps), seeds.to(device),
                                        run.recipe.data.seq_len, prefix=prefix)
            tokens.append(result.tokens.cpu())
            nfe.append(result.nfe)
            bar.set_postfix_str(f"{first + count}/{num_samples} samples")
    finally:
        hook.remove()
        bar.close()
    return torch.cat(tokens), max(nfe)
