"""MAUVE of two feature sets (docs/method.md section 9), from the mauve-text package: k-means
quantisation of the pooled features, then the area under the divergence curve. Its k-means
initialisation is the only randomness, so the score is reported per seed and as their mean."""

from __future__ import annotations

from typing import Iterable

import torch

from imdm.recipe import RecipeError


def _mauve_module():
    try:
        import mauve
    except ImportError as err:
        raise RecipeError("MAUVE", [f"needs the mauve-text package ({err}): pip install 'imdm[eval]'"]) from None
    return mauve


def mauve_over_seeds(p_features: torch.Tensor, q_features: torch.Tensor, seeds: Iterable[int],
                     **options) -> dict:
    """{"mauve": mean, "mauve_seeds": one score per k-means seed, "kmeans_seeds": the seeds} of
    P (human, [N, d]) against Q (generated, [M, d]); `options` go to mauve.compute_mauve."""
    seeds = list(seeds)
    if not seeds:
        raise RecipeError("MAUVE", ["conditional.mauve_seeds: at least one k-means seed is needed"])
    if len(p_features) < 2 or len(q_features) < 2:
        raise RecipeError("MAUVE", [f"needs at least 2 texts on each side, got {len(p_features)} human and "
                                    f"{len(q_features)} generated"])
    mauve = _mauve_module()
    p, q = p_features.float().cpu().numpy(), q_features.float().cpu().numpy()
    scores = [float(mauve.compute_mauve(p_features=p, q_features=q, seed=seed, device_id=-1, verbose=False,
                                        **options).mauve) for seed in seeds]
    return {"mauve": sum(scores) / len(scores), "mauve_seeds": scores, "kmeans_seeds": seeds}
