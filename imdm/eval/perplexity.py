"""Perplexity bounds of a text model: exp(mean NELBO per token) over a packed split, each
sequence's bound averaged over `eval.t_per_sequence` times t, accumulated in float64
(docs/method.md sections 1 and 9). A zero-shot set comes from a local copy under eval.local_root
when there is one (../shared/data has WikiText-2 test, which is also WikiText-103's test set,
PTB test and LAMBADA; any set may be a folder eval/NAME written by `datasets`' save_to_disk),
and from the hub otherwise."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from imdm import rng
from imdm.algorithms.protocol import Process
from imdm.data.hub_sets import HUB_SETS, HubUnavailable
from imdm.data.local_text import DataSourceError
from imdm.data.text_dataset import TextDataset, open_text_dataset
from imdm.recipe import Recipe
from imdm.recipe.schema import TokenizerSection

ZERO_SHOT_SETS = ("wikitext2", "wikitext103", "ptb", "lambada", "lm1b", "ag_news", "scientific_papers_pubmed",
                  "scientific_papers_arxiv")   # MDLM's zero-shot suite

# name -> (file under eval.local_root, document mode, detokenizer)
LOCAL_EVAL_FILES = {
    "wikitext2": ("eval/wikitext-2-raw/wiki.test.raw", "line", "wikitext"),
    "wikitext103": ("eval/wikitext-2-raw/wiki.test.raw", "line", "wikitext"),
    "ptb": ("eval/ptb/ptb.test.txt", "stripped_line", "ptb"),
    "lambada": ("eval/lambada/lambada_test.jsonl", "file", "lambada"),
}


def _text_recipe(recipe: Recipe) -> Recipe:
    """`recipe`, or for a run trained on a coupling set, `recipe` with the tokenizer that set's
    sequences were made with (the model's vocabulary; the run's own [tokenizer] is unused)."""
    if recipe.data.source != "couplings":
        return recipe
    from imdm.build import build_dataset
    stored = build_dataset(recipe).manifest["tokenizer"]
    if stored is None:
        raise ValueError(f"eval.sets scores text, but coupling set {recipe.data.couplings!r} was made from "
                         "synthetic data: it has no tokenizer")
    return dataclasses.replace(recipe, tokenizer=TokenizerSection(**stored))


def saved_copy(recipe: Recipe, name: str) -> Path:
    """Where a copy of zero-shot set `name` saved with `datasets`' save_to_disk is looked for."""
    return Path(recipe.eval.local_root) / "eval" / name


def eval_set_recipe(recipe: Recipe, name: str) -> tuple[Recipe, str]:
    """A copy of `recipe` whose data section reads the zero-shot set `name` (wrapped at the
    model's length, tokenized as the model's training data was), and the split to read: the
    test split (openwebtext, which has none: its validation documents)."""
    recipe = _text_recipe(recipe)
    local = LOCAL_EVAL_FILES.get(name)
    data = recipe.data
    if local and (Path(recipe.eval.local_root) / local[0]).is_file():
        path, mode, detok = local
        data = dataclasses.replace(data, source="local", paths=[str(Path(recipe.eval.local_root) / path)],
                                   documents=mode, detokenizer=detok, holdout_documents=0, packing="wrap")
        return dataclasses.replace(recipe, data=data), "train"
    saved = saved_copy(recipe, name)
    data = dataclasses.replace(data, source="hub", dataset=name, hub_location=str(saved) if saved.is_dir() else "",
                               detokenizer="auto", packing="wrap")
    return dataclasses.replace(recipe, data=data), "test" if "test" in HUB_SETS[name].splits else "validation"


def open_eval_set(recipe: Recipe, name: str) -> TextDataset:
    """The packed zero-shot set `name`; a set that is neither under eval.local_root nor
    loadable from the hub is an error naming both, an unreadable saved copy one naming it."""
    sub_recipe, split = eval_set_recipe(recipe, name)
    try:
        return open_text_dataset(sub_recipe, split)
    except HubUnavailable as err:
        if sub_recipe.data.hub_location:
            raise DataSourceError(f"eval.sets: zero-shot set '{name}': {err.reason}") from None
        local = LOCAL_EVAL_FILES.get(name)
        wanted = (f"{local[0]} or " if local else "") + f"eval/{name}/ (written by datasets' save_to_disk)"
        raise DataSourceError(f"eval.sets: zero-shot set '{name}' has no local copy under eval.local_root = "
                              f"'{recipe.eval.local_root}' (looked for {wanted}), and {err.reason}") from None


def stratum_order(seed: int, batch_index: int, n: int) -> torch.Tensor:
    """A seeded uniformly random permutation of range(n): which stratum of the batch's times t
    each of its sequences gets."""
    batch_seed = rng.derive_seed(seed, torch.tensor(batch_index), rng.STREAM_EVAL_NELBO)
    return torch.argsort(rng.uniform53(batch_seed, torch.arange(n), rng.STREAM_EVAL_NELBO))


@torch.no_grad()
def nelbo_per_token(model: torch.nn.Module, process: Process, dataset, batch: int, max_batches: int,
                    device: torch.device, seed: int, t_per_sequence: int = 1) -> tuple[float, int]:
    """(mean NELBO per valid token in nats, tokens scored) over the first `max_batches` batches
    of the dataset in order (0 = all of it); the model's train/eval mode is restored.

    Each sequence's terms are averaged over k = `t_per_sequence` times. The process draws the k
    times of a batch of n sequences as one stratified global batch of k n (docs/method.md section
    1; antithetic by default: t_i = (u + i) / (k n)); sequence r takes entries p(r) + j n for
    j < k, p a seeded random permutation, so its k times fall one in each of k equal strata (1/k
    apart when antithetic) at a uniformly random offset: an unbiased estimate for every
    sequence. Seeds come from the evaluation stream (rng.STREAM_EVAL_NELBO) of `seed`."""
    was_training = model.training
    model.eval()
    eval_seed = int(rng.derive_seed(seed, torch.tensor(0), rng.STREAM_EVAL_NELBO))
    total, count = 0.0, 0
    n = len(dataset)
    batches = math.ceil(n / batch) if max_batches == 0 else min(max_batches, math.ceil(n / batch))
    try:
        for b in range(batches):
            rows = torch.arange(b * batch, min(n, (b + 1) * batch))
            tokens, valid = dataset.rows(rows)
            tokens = tokens.to(device)
            order = stratum_order(eval_seed, b, len(rows))
            for j in range(t_per_sequence):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss = process.loss(model, tokens, order + j * len(rows), len(rows) * t_per_sequence, b,
                                        seed=eval_seed, valid=valid)
                total += float(loss.double()) / t_per_sequence
            count += int(valid.sum())
    finally:
        model.train(was_training)
    return total / count, count


def evaluate_text(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device) -> list[dict]:
    """Perplexity bound on the recipe's validation split (when it has one) and every eval.sets entry."""
    from imdm.build import has_validation_split
    names = (["validation"] if has_validation_split(recipe) else []) + list(recipe.eval.sets)
    rows = []
    for name in names:
        dataset = open_text_dataset(recipe, "validation") if name == "validation" else open_eval_set(recipe, name)
        nelbo, tokens = nelbo_per_token(model, process, dataset, recipe.eval.batch, recipe.eval.max_batches,
                                        device, recipe.run.seed, recipe.eval.t_per_sequence)
        rows.append({"set": name, "sequences": len(dataset), "tokens": tokens, "nelbo": nelbo, "ppl": math.exp(nelbo)})
    return rows
