"""Packing token lists into fixed-length sequences.

wrap: EOS after every document, all documents concatenated, cut into (L - 2)-token chunks,
each stored as BOS + chunk + EOS; the remainder is dropped (OpenWebText and LM1B-wrap style).
pad: each document becomes BOS + its first L - 2 tokens + EOS, padded on the right with the
pad id; the number of real tokens is kept so the loss can skip padding."""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np


class WrapPacker:
    """Streams documents in; yields [n, L] blocks as they fill."""

    def __init__(self, seq_len: int, bos: int, eos: int):
        if seq_len < 3:
            raise ValueError("wrap packing needs seq_len >= 3")
        self.seq_len, self.bos, self.eos = seq_len, bos, eos
        self.carry = np.zeros(0, dtype=np.int64)

    def feed(self, docs: Iterable[list[int]]) -> np.ndarray:
        pieces = [self.carry]
        for ids in docs:
            pieces += [np.asarray(ids, dtype=np.int64), np.asarray([self.eos], dtype=np.int64)]
        stream = np.concatenate(pieces)
        body = self.seq_len - 2
        n = len(stream) // body
        self.carry = stream[n * body:]
        chunks = stream[: n * body].reshape(n, body)
        out = np.empty((n, self.seq_len), dtype=np.int64)
        out[:, 0], out[:, -1], out[:, 1:-1] = self.bos, self.eos, chunks
        return out


def pad_pack(docs: Iterable[list[int]], seq_len: int, bos: int, eos: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """([n, L] tokens, [n] real lengths) for documents packed one per sequence."""
    docs = list(docs)
    out = np.full((len(docs), seq_len), pad, dtype=np.int64)
    lengths = np.empty(len(docs), dtype=np.int32)
    for i, ids in enumerate(docs):
        body = list(ids[: seq_len - 2])
        row = [bos, *body, eos]
        out[i, : len(row)] = row
        lengths[i] = len(row)
    return out, lengths


def pack_stream(token_batches: Iterable[list[list[int]]], packing: str, seq_len: int, bos: int, eos: int,
                pad: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens [n, L], lengths [n]) per batch of tokenised documents."""
    packer = WrapPacker(seq_len, bos, eos) if packing == "wrap" else None
    for docs in token_batches:
        if packer is not None:
            block = packer.feed(docs)
            yield block, np.full(len(block), seq_len, dtype=np.int32)
        else:
            yield pad_pack(docs, seq_len, bos, eos, pad)
