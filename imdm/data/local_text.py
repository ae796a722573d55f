"""Documents from local files: .txt, .xz, .gz, .zip (each member a file), .jsonl (one field per
line), found by paths and globs. Text that is not UTF-8 is read as Latin-1 (the NLTK corpora
have such members)."""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import lzma
import zipfile
from pathlib import Path
from typing import Iterator

DOCUMENT_MODES = ("file", "paragraph", "line", "stripped_line")


class DataSourceError(RuntimeError):
    pass


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def resolve_paths(patterns: list[str], root: Path) -> list[Path]:
    """Files matched by `patterns` (relative ones under `root`), sorted, each pattern matching something."""
    files: list[Path] = []
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        matched = sorted(Path(p) for p in glob.glob(full, recursive=True) if Path(p).is_file())
        if not matched:
            raise DataSourceError(f"data.paths: '{pattern}' matches no file (looked in {root})")
        files += matched
    return files


def _file_texts(path: Path, jsonl_field: str) -> Iterator[str]:
    name = path.name
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.namelist()):
                if not member.endswith("/") and Path(member).name.upper() != "README":
                    yield _decode(archive.read(member))
        return
    raw = path.read_bytes()
    if name.endswith(".xz"):
        raw, name = lzma.decompress(raw), name[:-3]
    elif name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name[:-3]
    text = _decode(raw)
    if name.endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if jsonl_field not in record:
                    raise DataSourceError(f"{path}:{number}: no field '{jsonl_field}' (data.jsonl_field)")
                yield record[jsonl_field]
        return
    yield text


def split_documents(text: str, mode: str) -> list[str]:
    """One text -> documents: the whole text, blank-line paragraphs, lines (kept with their
    newline, as Hugging Face's line datasets give them), or stripped non-empty lines."""
    if mode == "file":
        return [text]
    if mode == "paragraph":
        return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]
    if mode == "line":
        return text.splitlines(keepends=True)
    if mode == "stripped_line":
        return [line.strip() for line in text.splitlines() if line.strip()]
    raise ValueError(f"unknown document mode {mode!r}")


def local_documents(files: list[Path], mode: str, jsonl_field: str = "text") -> list[str]:
    """Every document of `files`, in order."""
    docs: list[str] = []
    for path in files:
        for text in _file_texts(path, jsonl_field):
            docs += [text] if path.name.endswith((".jsonl", ".jsonl.gz", ".jsonl.xz")) else split_documents(text, mode)
    return docs


def fingerprint_files(files: list[Path]) -> str:
    """sha256 over the files' names and bytes: any edit gives a new store."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()
