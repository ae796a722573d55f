"""The synthetic task of docs/method.md section 6: every sequence repeats one token c ~ Uniform{0..V-1}.
The mask token is appended at id V, so the model has V + 1 outputs."""

from __future__ import annotations

import math

import torch

from imdm import rng

STREAM_SYNTHETIC = 7


class SyntheticRepeat:
    """`num_sequences` sequences of length `seq_len`, each one token repeated; sequence j's
    token is a pure function of (seed, j)."""

    def __init__(self, vocab_size: int, seq_len: int, num_sequences: int, seed: int = 0):
        self.vocab_size, self.seq_len, self.num_sequences, self.seed = vocab_size, seq_len, num_sequences, seed

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def model_vocab(self) -> int:
        return self.vocab_size + 1

    def __len__(self) -> int:
        return self.num_sequences

    def tokens(self, index: torch.Tensor) -> torch.Tensor:
        """int64 [len(index), L] for dataset indices `index`."""
        c = rng.hash32(self.seed, index.to(torch.int64), STREAM_SYNTHETIC) % self.vocab_size
        return c[:, None].expand(-1, self.seq_len).contiguous()

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, valid) like a text store; every position is valid."""
        tokens = self.tokens(index)
        return tokens, torch.ones_like(tokens, dtype=torch.bool)


def validity(samples: torch.Tensor) -> torch.Tensor:
    """Bool [B]: all L tokens of the sequence are equal."""
    return (samples == samples[:, :1]).all(dim=1)


def uniform_coverage(vocab_size: int, draws: int) -> float:
    """Expected distinct values among `draws` uniform draws from `vocab_size`: V (1 - (1 - 1/V)^n)."""
    return vocab_size * -math.expm1(draws * math.log1p(-1 / vocab_size))


def synthetic_metrics(samples: torch.Tensor, vocab_size: int) -> dict:
    """Validity (fraction of all-equal sequences), coverage (distinct tokens among the valid
    ones) and the coverage ratio: coverage over the distinct count as many uniform draws as
    there are samples would give (a model that covers the task uniformly scores about 1, a
    collapsed one about 0)."""
    valid = validity(samples)
    distinct = int(torch.unique(samples[valid, 0]).numel()) if bool(valid.any()) else 0
    return {"validity": float(valid.float().mean()), "coverage": distinct,
            "coverage_ratio": distinct / uniform_coverage(vocab_size, samples.shape[0])}
