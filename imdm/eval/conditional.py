"""Conditional generation (docs/method.md section 9): prompts are the first `prefix_tokens` tokens
of validation documents at least `min_doc_tokens` long, each clamped after BOS; a prompt gets
`continuations` samples, of which the `length` tokens after the prompt are kept and compared,
through a judge's features, with the document's own next `length` tokens (MAUVE).

Conditional samples take their seeds from the evaluation stream at sample indices from
CONDITIONAL_SEED_OFFSET on, a range unconditional evaluation samples (indices from 0) never reach."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Protocol

import torch

from imdm import rng
from imdm.algorithms.protocol import Process
from imdm.build import Vocabulary, build_dataset, build_vocabulary, has_validation_split, sampler_settings
from imdm.data.text_dataset import document_tokens
from imdm.eval.mauve_score import mauve_over_seeds
from imdm.recipe import Recipe, RecipeError
from imdm.recipe.schema import DataSection, TokenizerSection
from imdm.sampling.ancestral import generation_seeds

CONDITIONAL_SEED_OFFSET = 1 << 31


class FeatureJudge(Protocol):
    """What MAUVE needs of a judge (imdm.eval.judge.Judge): its tokens and its features."""

    def encode(self, texts: list[str]) -> list[list[int]]: ...

    def features(self, ids: list[list[int]]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Prompts:
    prefixes: torch.Tensor     # [D, prefix_tokens] each document's first tokens
    references: torch.Tensor   # [D, length] the tokens that follow them: the human continuation


@dataclass(frozen=True)
class ConditionalTexts:
    generated: list[str]       # D x K decoded continuations, prompt-major (prompt d, continuation k at d K + k)
    human: list[str]           # D decoded human continuations
    nfe: float                 # mean network evaluations per sampler call


def conditional_seeds(seed: int, first: int, count: int) -> torch.Tensor:
    """Seeds of conditional samples first .. first + count - 1 (evaluation stream, offset range)."""
    return generation_seeds(seed, CONDITIONAL_SEED_OFFSET + first, count, rng.STREAM_EVAL_SEED)


def prompt_ids(vocab: Vocabulary, seq_len: int, text: str | None = None, ids: list[int] | None = None) -> list[int]:
    """The positions a prompt clamps: BOS and `text` in the run's tokens, or `ids` exactly
    (real tokens, not the mask); at least one position must be left to generate."""
    source = "imdm sample --prefix" if text is not None else "imdm sample --prefix-ids"
    if text is not None:
        if vocab.tokenizer is None:
            raise RecipeError(source, ["the run has no tokenizer (synthetic data): give token ids with --prefix-ids"])
        if not text:
            raise RecipeError(source, ["the prompt is empty"])
        ids = [vocab.tokenizer.bos_id, *vocab.tokenizer.encode(text)]
    if not ids:
        raise RecipeError(source, ["the prompt is empty"])
    bad = [i for i in ids if not 0 <= i < vocab.model_vocab or i == vocab.mask_id]
    if bad:
        raise RecipeError(source, [f"ids {bad} are not tokens of the run (0 .. {vocab.model_vocab - 1} "
                                   f"except the mask id {vocab.mask_id})"])
    if len(ids) >= seq_len:
        raise RecipeError(source, [f"the prompt takes {len(ids)} positions{' with BOS' if text is not None else ''}; "
                                   f"data.seq_len {seq_len} leaves nothing to generate"])
    return ids


def select_prompts(documents: Iterable[list[int]], count: int, min_tokens: int, prefix_tokens: int, length: int,
                   source: str = "the validation split") -> Prompts:
    """The first `count` documents (in order) with at least `min_tokens` tokens: their first
    `prefix_tokens` tokens and the `length` after them. Reads no further than it needs."""
    if min_tokens < prefix_tokens + length:
        raise RecipeError(source, [f"conditional.min_doc_tokens: {min_tokens} cannot hold {prefix_tokens} prompt "
                                   f"and {length} reference tokens"])
    chosen, seen = [], 0
    for ids in documents:
        seen += 1
        if len(ids) >= min_tokens:
            chosen.append(list(ids[: prefix_tokens + length]))
            if len(chosen) == count:
                break
    if len(chosen) < count:
        raise RecipeError(source, [f"conditional.documents: {count} documents of >= {min_tokens} tokens wanted, "
                                   f"but its {seen} documents have only {len(chosen)}; lower conditional.documents "
                                   f"or conditional.min_doc_tokens"])
    tokens = torch.tensor(chosen, dtype=torch.int64)
    return Prompts(tokens[:, :prefix_tokens], tokens[:, prefix_tokens:])


def continue_prompts(process: Process, model: torch.nn.Module, settings, prompts: torch.Tensor, continuations: int,
                     seed: int, seq_len: int, batch: int, device: torch.device) -> tuple[torch.Tensor, float]:
    """(samples [D, K, seq_len], mean NFE per sampler call): K continuations of each prompt
    [D, P], the prompt clamped at positions 0 .. P - 1; sample d K + k has conditional seed
    d K + k whatever the batch size."""
    rows = prompts.repeat_interleave(continuations, dim=0)
    out, nfe = [], []
    for start in range(0, len(rows), batch):
        stop = min(start + batch, len(rows))
        seeds = conditional_seeds(seed, start, stop - start).to(device)
        result = process.sample(model, settings, seeds, seq_len, prefix=rows[start:stop].to(device))
        out.append(result.tokens.cpu())
        nfe.append(result.nfe)
    return torch.cat(out).view(len(prompts), continuations, seq_len), sum(nfe) / len(nfe)


def document_recipe(recipe: Recipe) -> Recipe:
    """`recipe`, or for a run trained on a coupling set, `recipe` with the data and tokenizer
    sections of the run that generated the set (where its documents come from)."""
    if recipe.data.source != "couplings":
        return recipe
    manifest = build_dataset(recipe).manifest
    if manifest["tokenizer"] is None:
        raise RecipeError(f"coupling set {recipe.data.couplings!r}", ["conditional.enabled: the set was made from "
                                                                      "synthetic data: it has no documents"])
    data = DataSection(**manifest["data"], num_workers=recipe.data.num_workers, store_dir=recipe.data.store_dir)
    return dataclasses.replace(recipe, data=data, tokenizer=TokenizerSection(**manifest["tokenizer"]))


def validation_prompts(recipe: Recipe, vocab: Vocabulary) -> Prompts:
    """The prompts and human continuations of the recipe's [conditional] section."""
    c, origin = recipe.conditional, document_recipe(recipe)
    if origin.data.source == "synthetic" or not has_validation_split(origin):
        raise RecipeError(f"data.source {origin.data.source!r}", ["conditional.enabled: prompts come from validation "
                                                                  "documents, which this source does not have"])
    return select_prompts(document_tokens(origin, "validation", vocab.tokenizer), c.documents, c.min_doc_tokens,
                          c.prefix_tokens, c.length, f"the validation split of data.source '{origin.data.source}'")


def conditional_texts(recipe: Recipe, model: torch.nn.Module, process: Process, device: torch.device,
                      steps: int | None = None) -> ConditionalTexts:
    """The decoded continuations (`length` tokens after each prompt, at `steps` reverse steps,
    default the last of sampling.steps) and the human ones."""
    c, s = recipe.conditional, recipe.sampling
    if not c.enabled:
        raise RecipeError("conditional.enabled", ["false: set conditional.enabled = true to generate from prompts"])
    vocab = build_vocabulary(recipe)
    prompts = validation_prompts(recipe, vocab)
    clamped = torch.cat([torch.full((len(prompts.prefixes), 1), vocab.tokenizer.bos_id), prompts.prefixes], dim=1)
    samples, nfe = continue_prompts(process, model, sampler_settings(recipe, steps or s.steps[-1]), clamped,
                                    c.continuations, s.seed, recipe.data.seq_len, s.batch, device)
    kept = samples[:, :, clamped.shape[1]: clamped.shape[1] + c.length].reshape(-1, c.length)
    decode = vocab.tokenizer.decode
    return ConditionalTexts([decode(ids) for ids in kept.tolist()],
                            [decode(ids) for ids in prompts.references.tolist()], nfe)


def conditional_mauve(recipe: Recipe, model: torch.nn.Module, process: Process, judge: FeatureJudge,
                      device: torch.device, steps: int | None = None, **mauve_options) -> dict:
    """MAUVE of the continuations against the human ones in the judge's feature space: the mean
    and per-seed values over conditional.mauve_seeds k-means seeds, with the protocol's sizes.
    `mauve_options` go to mauve.compute_mauve (e.g. num_buckets)."""
    c = recipe.conditional
    steps = steps or recipe.sampling.steps[-1]
    texts = conditional_texts(recipe, model, process, device, steps)
    human = judge.features(judge.encode(texts.human))
    generated = judge.features(judge.encode(texts.generated))
    scores = mauve_over_seeds(human, generated, range(c.mauve_seeds), **mauve_options)
    return {**scores, "documents": c.documents, "continuations": c.continuations, "prefix_tokens": c.prefix_tokens,
            "length": c.length, "steps": steps, "nfe": texts.nfe}
