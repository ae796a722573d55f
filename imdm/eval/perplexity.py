"""Perplexity bounds of a text model: exp(mean NELBO per token) over a packed split, one t per
sequence, accumulated in float64 (docs/method.md section 1). Zero-shot sets come from local copies when
they exist (../shared/data has WikiText-2 test, PTB test and LAMBADA) and from the hub otherwise."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from imdm.algorithms.protocol import Process
from imdm.data.text_dataset import open_text_dataset
from imdm.recipe import Recipe
from imdm.recipe.schema import TokenizerSection

STREAM_EVAL = 19_191

# name -> (file under eval.local_root, document mode, detokenizer)
LOCAL_EVAL_FILES = {
    "wikitext2": ("eval/wikitext-2-raw/wiki.test.raw", "line", "wikitext"),
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


def eval_set_recipe(recipe: Recipe, name: str) -> tuple[Recipe, str]:
    """A copy of `recipe` whose data section reads the zero-shot set `name` (wrapped at the
    model's length, tokenized as the model's training data was), and the split to read."""
    recipe = _text_recipe(recipe)
    local = LOCAL_EVAL_FILES.get(name)
    data = recipe.data
    if local and (Path(recipe.eval.local_root) / local[0]).is_file():
        path, mode, detok = local
        data = dataclasses.replace(data, source="local", paths=[str(Path(recipe.eval.local_root) / path)],
                                   documents=mode, detokenizer=detok, holdout_documents=0, packing="wrap")
        return dataclasses.replace(recipe, data=data), "train"
    data = dataclasses.replace(data, source="hub", dataset=name, hub_location="", detokenizer="auto", packing="wrap")
    return dataclasses.replace(recipe, data=data), "test" if name != "openwebtext" else "validation"


@torch.no_grad()
def nelbo_per_token(model: torch.nn.Module, process: Process, dataset, batch: int,
                    max_batches: int, device: torch.device, seed: int) -> tuple[float, int]:
    """(mean NELBO per valid token in nats, tokens scored) over the first `max_batches` batches
    of the dataset in order (0 = all of it); the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    n = len(dataset)
    batches = math.ceil(n / batch) if max_batches == 0 else min(max_batches, math.ceil(n / batch))
    try:
        for b in range(batches):
            rows = torch.arange(b * batch, min(n, (b + 1) * batch))
            tokens, valid = dataset.rows(rows)
            index = torch.arange(len(rows))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = process.loss(model, tokens.to(device), index, len(rows), b, seed=seed + STREAM_EVAL,
                                      valid=valid)
            total += float(loss.double())
            count += int(valid.sum())
    finally:
        model.train(was_training)
    return total / count, count


def evaluate_text(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device) -> list[dict]:
    """Perplexity bound on the recipe's validation split (when it has one) and every eval.sets entry."""
    from imdm.build import has_validation_split
    targets = []
    if has_validation_split(recipe):
        targets.append(("validation", recipe, "validation"))
    for name in recipe.eval.sets:
        targets.append((name, *eval_set_recipe(recipe, name)))
    rows = []
    for name, sub_recipe, split in targets:
        dataset = open_text_dataset(sub_recipe, split)
        nelbo, tokens = nelbo_per_token(model, process, dataset, recipe.eval.batch, recipe.eval.max_batches,
                                        device, recipe.run.seed)
        rows.append({"set": name, "sequences": len(dataset), "tokens": tokens, "nelbo": nelbo, "ppl": math.exp(nelbo)})
    return rows
