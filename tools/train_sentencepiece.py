"""Train a SentencePiece tokenizer on local text and write NAME/tokenizer.model, usable as
[tokenizer] kind = "sentencepiece", path = "NAME". The model gets a [MASK] piece, BOS, EOS and
pad ids, so the diffusion model's mask and specials come from the file.

    python -m imdm.tools.train_sentencepiece OUT_DIR FILE_OR_GLOB [...] [--vocab-size 8000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from imdm.data.local_text import DataSourceError, local_documents, resolve_paths


def train_sentencepiece(out_dir: Path, patterns: list[str], vocab_size: int, model_type: str = "unigram",
                        documents: str = "paragraph", max_sentence_length: int = 16384) -> Path:
    """Train on the documents of `patterns` and return the model file."""
    import sentencepiece as spm
    docs = local_documents(resolve_paths(patterns, Path.cwd()), documents)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as corpus:
        for doc in docs:
            corpus.write(doc.replace("\n", " ") + "\n")
    spm.SentencePieceTrainer.train(
        input=corpus.name, model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type=model_type,
        user_defined_symbols=["[MASK]"], unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        max_sentence_length=max_sentence_length, input_sentence_size=2_000_000, shuffle_input_sentence=True,
        minloglevel=2)
    Path(corpus.name).unlink()
    return out_dir / "tokenizer.model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    parser.add_argument("--documents", default="paragraph", choices=("file", "paragraph", "line", "stripped_line"))
    args = parser.parse_args(argv)
    try:
        path = train_sentencepiece(Path(args.out_dir), args.paths, args.vocab_size, args.model_type, args.documents)
    except DataSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
