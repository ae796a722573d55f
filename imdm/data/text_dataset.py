"""Open the text split a recipe names as packed sequences: from local files or a hub dataset
(through a token store built once) or from a prepared store (whose manifest must match)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from imdm.data.detokenizers import DETOKENIZERS
from imdm.data.hub_sets import HUB_SETS, load_hub_documents
from imdm.data.local_text import DataSourceError, fingerprint_files, local_documents, resolve_paths
from imdm.data.token_store import MANIFEST, StoreKey, TokenStore, build_store, manifest_mismatch, store_path
from imdm.data.tokenizer import TextTokenizer, load_tokenizer
from imdm.parallel.distributed import barrier
from imdm.recipe import Recipe


@dataclass
class TextDataset:
    """Packed sequences with the tokenizer's ids."""
    store: TokenStore
    tokenizer: TextTokenizer
    name: str

    @property
    def seq_len(self) -> int:
        return self.store.seq_len

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_id

    @property
    def model_vocab(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return len(self.store)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store.rows(index)


def _documents_for_split(docs: list[str], split: str, holdout: int) -> list[str]:
    if holdout >= len(docs):
        raise DataSourceError(f"data.holdout_documents: {holdout} >= the {len(docs)} documents of the source")
    if split == "train":
        return docs[: len(docs) - holdout]
    return docs[len(docs) - holdout:]


def _open_store(path: str, tokenizer: TextTokenizer, recipe: Recipe) -> TokenStore:
    store = TokenStore(Path(path))
    m, d = store.manifest, recipe.data
    wrong = [f"{k}: store has {m.get(k)!r}, recipe wants {v!r}" for k, v in
             (("tokenizer_kind", tokenizer.kind), ("tokenizer_hash", tokenizer.content_hash),
              ("packing", d.packing), ("seq_len", d.seq_len)) if m.get(k) != v]
    if wrong:
        raise DataSourceError(f"token store {path} does not match the recipe: {'; '.join(wrong)}")
    return store


@dataclass(frozen=True)
class SplitSource:
    """Where a text split's documents come from, before tokenization."""
    documents: Callable[[], Iterable[str]]   # the split's raw documents, in order
    fingerprint: str                         # content fingerprint of the source
    detokenizer: str                         # a DETOKENIZERS name, applied to each document
    name: str
    doc_mode: str


def split_source(recipe: Recipe, split: str) -> SplitSource:
    """The documents of `split` of the recipe's local or hub source."""
    d = recipe.data
    if d.source == "local":
        files = resolve_paths(d.paths, Path.cwd())
        docs = _documents_for_split(local_documents(files, d.documents, d.jsonl_field), split, d.holdout_documents)
        detok = "none" if d.detokenizer == "auto" else d.detokenizer
        return SplitSource(lambda: docs, f"local:{fingerprint_files(files)}:{d.holdout_documents}", detok, "local",
                           d.documents)
    if d.source == "hub":
        documents, fingerprint = load_hub_documents(d.dataset, split, d.hub_location)
        detok = HUB_SETS[d.dataset].detokenizer if d.detokenizer == "auto" else d.detokenizer
        return SplitSource(documents, fingerprint, detok, d.dataset, "rows")
    raise DataSourceError(f"data.source '{d.source}' is not a text source")


def document_tokens(recipe: Recipe, split: str, tokenizer: TextTokenizer, batch_docs: int = 64) -> Iterator[list[int]]:
    """Each document of `split`, detokenized and encoded as the token store encodes it (no
    special tokens), in order; documents are read and encoded only as far as the caller goes."""
    source = split_source(recipe, split)
    detokenize, batch = DETOKENIZERS[source.detokenizer], []
    for doc in source.documents():
        batch.append(detokenize(doc))
        if len(batch) == batch_docs:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)


def open_text_dataset(recipe: Recipe, split: str, is_main: bool = True) -> TextDataset:
    """The packed `split` of the recipe's text source, building its token store on the main
    rank if it does not exist yet (other ranks wait, then open it)."""
    d = recipe.data
    tokenizer = load_tokenizer(recipe.tokenizer.kind, recipe.tokenizer.path)
    if d.source == "store":
        return TextDataset(_open_store(d.store, tokenizer, recipe), tokenizer, d.store)
    source = split_source(recipe, split)
    key = StoreKey(tokenizer.kind, tokenizer.content_hash, source.fingerprint, split, source.doc_mode,
                   source.detokenizer, d.packing, d.seq_len)
    return _build_and_open(recipe, tokenizer, key, source.documents, is_main, source.name)


def _build_and_open(recipe: Recipe, tokenizer: TextTokenizer, key: StoreKey, documents, is_main: bool,
                    name: str) -> TextDataset:
    folder = Path(recipe.data.store_dir)
    path = store_path(folder, key)
    if is_main:
        specials = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id, "mask": tokenizer.mask_id}
        path = build_store(folder, key, documents, tokenizer.encode_batch, DETOKENIZERS[key.detokenizer], specials,
                           tokenizer.vocab_size, label=name, progress=recipe.logging.progress)
    barrier()
    mismatch = manifest_mismatch(json.loads((path / MANIFEST).read_text()), key)
    if mismatch:
        raise DataSourceError(f"{path}: {'; '.join(mismatch)}")
    return TextDataset(TokenStore(path), tokenizer, name)
