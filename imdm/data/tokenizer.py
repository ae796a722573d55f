"""Tokenizers: GPT-2 byte-level BPE, BERT-base-uncased WordPiece, and SentencePiece models, from
local files or (online) the Hugging Face hub. The mask token, BOS/EOS/pad and the number of
model outputs derive from the tokenizer (docs/method.md section 1), never from hand-typed numbers.

GPT-2: [MASK] appended at 50257 (V = 50258), BOS = EOS = 50256. BERT: [MASK] = 103,
BOS = [CLS] = 101, EOS = [SEP] = 102, pad = 0. SentencePiece: its [MASK] piece if it has one,
else appended; BOS/EOS/pad from the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from imdm.data.hub import hub_online

KIND_FILES = {"gpt2": ("vocab.json", "merges.txt"), "bert": ("vocab.txt",), "sentencepiece": ("tokenizer.model",)}


class TokenizerError(RuntimeError):
    pass


@dataclass
class TextTokenizer:
    """Encode/decode text without special tokens; the ids the diffusion model needs."""
    kind: str
    vocab_size: int          # model outputs, the mask included
    mask_id: int
    bos_id: int
    eos_id: int
    pad_id: int
    content_hash: str        # sha256 over the kind and the tokenizer files' bytes
    encode_batch: Callable[[list[str]], list[list[int]]] = field(repr=False)
    decode: Callable[[list[int]], str] = field(repr=False)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]


def _hash_files(kind: str, files: list[Path]) -> str:
    h = hashlib.sha256(kind.encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _resolve_files(kind: str, location: str) -> list[Path]:
    """Local files for `kind` at `location` (a folder, a .model file, or a hub repo id)."""
    names = KIND_FILES[kind]
    path = Path(location)
    if path.is_file() and kind == "sentencepiece":
        return [path]
    if path.is_dir():
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise TokenizerError(f"tokenizer folder {path} lacks {', '.join(missing)} (a {kind} tokenizer needs "
                                 f"{', '.join(names)})")
        return [path / n for n in names]
    if path.is_absolute() or location.startswith(".") or path.suffix:
        raise TokenizerError(f"tokenizer.path: '{location}' does not exist (looked in {Path.cwd()})")
    return [_hub_file(location, n) for n in names]


def _hub_file(repo_id: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, etag_timeout=5,
                                    local_files_only=not hub_online()))
    except Exception as err:  # offline, unknown repo, missing file: all end the same way
        raise TokenizerError(
            f"cannot fetch {filename} of tokenizer '{repo_id}' from the Hugging Face hub "
            f"({type(err).__name__}). Offline, point tokenizer.path at a local folder holding the files "
            f"(for GPT-2: vocab.json and merges.txt, e.g. ../shared/data/tokenizers/gpt2)") from None


def _gpt2(files: list[Path]) -> TextTokenizer:
    from tokenizers.implementations import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer.from_file(str(files[0]), str(files[1]))
    n = tok.get_vocab_size()
    eos = tok.token_to_id("<|endoftext|>")
    if eos is None:
        raise TokenizerError(f"{files[0]} has no <|endoftext|> token: not a GPT-2 vocabulary")
    return TextTokenizer("gpt2", n + 1, n, eos, eos, eos, _hash_files("gpt2", files),
                         lambda texts: [e.ids for e in tok.encode_batch(texts)], tok.decode)


def _bert(files: list[Path]) -> TextTokenizer:
    from tokenizers.implementations import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(str(files[0]), lowercase=True)
    ids = {t: tok.token_to_id(t) for t in ("[MASK]", "[CLS]", "[SEP]", "[PAD]")}
    if None in ids.values():
        raise TokenizerError(f"{files[0]} lacks one of {sorted(ids)}: not a BERT vocabulary")
    return TextTokenizer("bert", tok.get_vocab_size(), ids["[MASK]"], ids["[CLS]"], ids["[SEP]"], ids["[PAD]"],
                         _hash_files("bert", files),
                         lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)],
                         tok.decode)


def _sentencepiece(files: list[Path]) -> TextTokenizer:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(files[0]))
    n = sp.get_piece_size()
    mask = sp.piece_to_id("[MASK]")
    has_mask = mask != sp.unk_id() and sp.id_to_piece(mask) == "[MASK]"
    vocab = n if has_mask else n + 1
    mask = mask if has_mask else n
    if sp.eos_id() < 0:
        raise TokenizerError(f"{files[0]} has no EOS piece; train it with eos_id set (tools/train_sentencepiece.py)")
    bos = sp.bos_id() if sp.bos_id() >= 0 else sp.eos_id()
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
    return TextTokenizer("sentencepiece", vocab, mask, bos, sp.eos_id(), pad, _hash_files("sentencepiece", files),
                         lambda texts: sp.encode(texts, num_threads=0), lambda ids: sp.decode(list(ids)))


def load_tokenizer(kind: str, location: str) -> TextTokenizer:
    """A tokenizer of `kind` ('gpt2', 'bert', 'sentencepiece') from a local folder/file or a hub repo id."""
    if kind not in KIND_FILES:
        raise TokenizerError(f"unknown tokenizer kind {kind!r} (known: {', '.join(KIND_FILES)})")
    files = _resolve_files(kind, location)
    return {"gpt2": _gpt2, "bert": _bert, "sentencepiece": _sentencepiece}[kind](files)
