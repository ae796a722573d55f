"""The token store: sequences tokenised and packed once into a flat memory-mapped array
(uint16 when the vocabulary fits, else uint32) with their real lengths, and a manifest that
records everything that decided the contents. A store is built in a hidden partial folder and
renamed only when complete; its folder name carries a hash of the manifest's key fields, so a
changed tokenizer, source, detokenizer, packing or length never reuses a stale store."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from imdm.data.local_text import DataSourceError
from imdm.data.packing import pack_stream

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KEY_FIELDS = ("format_version", "tokenizer_kind", "tokenizer_hash", "source", "split", "documents",
              "detokenizer", "packing", "seq_len")


@dataclass(frozen=True)
class StoreKey:
    """What decides a store's contents."""
    tokenizer_kind: str
    tokenizer_hash: str
    source: str            # content fingerprint of the source
    split: str
    documents: str
    detokenizer: str
    packing: str
    seq_len: int

    def as_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, **self.__dict__}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds the token ids."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def manifest_mismatch(manifest: dict, key: StoreKey) -> list[str]:
    """Key fields whose stored value differs from what the recipe asks for."""
    wanted = key.as_dict()
    return [f"{k}: store has {manifest.get(k)!r}, recipe wants {wanted[k]!r}" for k in KEY_FIELDS
            if manifest.get(k) != wanted[k]]


class TokenStore:
    """Read-only view of a complete store: rows of [L] token ids and their real lengths."""

    def __init__(self, path: Path):
        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file():
            raise DataSourceError(f"{self.path} is not a complete token store (no {MANIFEST})")
        self.manifest = json.loads(manifest_file.read_text())
        n, length = self.manifest["num_sequences"], self.manifest["seq_len"]
        self.seq_len = length
        if n == 0:
            raise DataSourceError(f"token store {self.path} is empty")
        self.tokens = np.memmap(self.path / "tokens.bin", dtype=self.manifest["dtype"], mode="r", shape=(n, length))
        self.lengths = np.memmap(self.path / "lengths.bin", dtype=np.int32, mode="r", shape=(n,))

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens int64 [b, L], valid bool [b, L]) for store rows `index`."""
        idx = index.numpy()
        tokens = torch.from_numpy(self.tokens[idx].astype(np.int64))
        lengths = torch.from_numpy(np.asarray(self.lengths[idx]))
        valid = torch.arange(self.seq_len)[None, :] < lengths[:, None]
        return tokens, valid


def store_path(folder: Path, key: StoreKey) -> Path:
    """Where the store for `key` lives under `folder`."""
    return folder / f"{key.split}-{key.packing}{key.seq_len}-{key.digest()}"


def build_store(folder: Path, key: StoreKey, documents: Callable[[], Iterable[str]],
                encode_batch: Callable[[list[str]], list[list[int]]], detokenize: Callable[[str], str],
                specials: dict, vocab_size: int, batch_docs: int = 512, label: str = "",
                progress: bool = False) -> Path:
    """Return the complete store for `key` under `folder`, building it if needed. Building
    writes into a partial folder renamed at the end; an interrupted build leaves nothing that
    looks complete. With `progress`, the documents tokenised so far are counted on stderr."""
    final = store_path(folder, key)
    if (final / MANIFEST).is_file():
        mismatch = manifest_mismatch(json.loads((final / MANIFEST).read_text()), key)
        if mismatch:
            raise DataSourceError(f"{final}: manifest does not match its name: {'; '.join(mismatch)}")
        return final
    partial = folder / f".partial-{final.name}-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    dtype = token_dtype(vocab_size)
    start, n_docs, n_seq, n_tokens = time.perf_counter(), 0, 0, 0
    bar = tqdm(desc=f"token store {label or key.source} ({key.split})", unit="doc", file=sys.stderr,
               dynamic_ncols=True, disable=not progress)

    def encoded(batch: list[str]) -> list[list[int]]:
        nonlocal n_docs, n_tokens
        ids = encode_batch(batch)
        n_docs, n_tokens = n_docs + len(batch), n_tokens + sum(map(len, ids))
        bar.update(len(batch))
        bar.set_postfix_str(f"{n_tokens:,} tokens")
        return ids

    def token_batches():
        batch = []
        for doc in documents():
            batch.append(detokenize(doc))
            if len(batch) == batch_docs:
                yield encoded(batch)
                batch = []
        if batch:
            yield encoded(batch)

    with open(partial / "tokens.bin", "wb") as tok_f, open(partial / "lengths.bin", "wb") as len_f:
        for tokens, lengths in pack_stream(token_batches(), key.packing, key.seq_len, specials["bos"],
                                           specials["eos"], specials["pad"]):
            tok_f.write(tokens.astype(dtype).tobytes())
            len_f.write(lengths.astype(np.int32).tobytes())
            n_seq += len(tokens)
        tok_f.flush(), os.fsync(tok_f.fileno()), len_f.flush(), os.fsync(len_f.fileno())
    bar.close()
    seconds = time.perf_counter() - start
    if n_seq == 0:
        shutil.rmtree(partial)
        raise DataSourceError(
            f"{label or key.source} ({key.split}) packs into 0 sequences of {key.seq_len} tokens: it has {n_tokens} "
            f"tokens in {n_docs} documents{' (wrap drops the remainder)' if key.packing == 'wrap' else ''}. "
            f"Use a shorter data.seq_len or more text")
    manifest = {**key.as_dict(), "dtype": np.dtype(dtype).name, "num_sequences": n_seq, "num_documents": n_docs,
                "num_document_tokens": n_tokens, "specials": specials, "vocab_size": vocab_size,
                "build_seconds": seconds, "created": time.time()}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final
