"""Generative perplexity and unigram entropy of a set of sequences (docs/method.md section 9).

Each sequence (the generating model's ids) is decoded with that model's tokenizer, encoded again
with the judge's, and scored by the judge. The count follows the reference: every scored token
(positions 1 .. n-1 of the judge's ids) that is not the judge's EOS, plus the sequence's first
EOS if it is a scored token; gen-PPL = exp(sum of the counted NLLs / their number), so longer
sequences weigh more. Entropy is that of each sequence's own ids, in nats, averaged over the
sequences."""

from __future__ import annotations

import math
import sys
from typing import Callable

import torch
from tqdm import tqdm

from imdm.eval.judge import Judge
from imdm.recipe import RecipeError


def counted_targets(ids: list[int], eos_id: int | None) -> torch.Tensor:
    """bool [n - 1] over positions 1 .. n-1: not the EOS, or the sequence's first EOS (position 0
    included in finding it, never counted itself: it is no target)."""
    ids_t = torch.tensor(ids, dtype=torch.int64)
    if eos_id is None:
        return torch.ones(max(len(ids) - 1, 0), dtype=torch.bool)
    is_eos = ids_t == eos_id
    first_eos = is_eos & (is_eos.cumsum(0) == 1)
    return (~is_eos | first_eos)[1:]


def retokenize(sequences: list[list[int]], decode: Callable[[list[int]], str], judge: Judge) -> list[list[int]]:
    """The judge's ids of each sequence's text (`decode`: the generating model's tokenizer)."""
    return judge.encode([decode(seq) for seq in sequences])


def generative_perplexity(judge: Judge, ids: list[list[int]], progress: bool = False, label: str = "judging"
                          ) -> tuple[float, int]:
    """(gen-PPL, counted tokens) of sequences already in the judge's ids."""
    if not ids:
        raise RecipeError("generative perplexity", ["no sequences to score"])
    total, count = 0.0, 0
    bar = tqdm(total=len(ids), desc=label, unit="seq", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for first in range(0, len(ids), judge.batch):
        chunk = ids[first: first + judge.batch]
        for seq, nll in zip(chunk, judge.token_nll(chunk)):
            keep = counted_targets(seq, judge.eos_id)
            total += float(nll[keep].sum())
            count += int(keep.sum())
        bar.update(len(chunk))
    bar.close()
    if count == 0:
        raise RecipeError("generative perplexity", [f"the {len(ids)} sequences are too short: the judge "
                                                    f"'{judge.name}' has no token to score (each needs two or more)"])
    return math.exp(total / count), count


def unigram_entropy(sequences: list[list[int]]) -> float:
    """Mean over sequences of the entropy (nats) of each sequence's token frequencies."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise RecipeError("entropy", ["needs at least one sequence, and no empty one"])
    total = 0.0
    for seq in sequences:
        _, counts = torch.unique(torch.tensor(seq, dtype=torch.int64), return_counts=True)
        p = counts.double() / counts.sum()
        total += float(-(p * p.log()).sum())
    return total / len(sequences)


def score_sequences(judge: Judge, sequences: list[list[int]], decode: Callable[[list[int]], str],
                    progress: bool = False, label: str = "judging") -> dict:
    """{"gen_ppl", "entropy", "num_samples", "tokens"} of the generating model's `sequences`."""
    if not sequences:
        raise RecipeError("generative perplexity", ["no sequences to score"])
    gen_ppl, tokens = generative_perplexity(judge, retokenize(sequences, decode, judge), progress, label)
    return {"gen_ppl": gen_ppl, "entropy": unigram_entropy(sequences), "num_samples": len(sequences),
            "tokens": tokens}
