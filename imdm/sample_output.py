"""How `imdm sample` shows its samples. `text`: a text run's decoded samples, one block each; the
synthetic task's samples as compact rows of token ids marked valid (all tokens equal) or not;
`json`: one object with every sample; `jsonl`: one object per sample, each with the call's
settings."""

from __future__ import annotations

import json

FORMATS = ("text", "json", "jsonl")


def _header(payload: dict) -> str:
    n = len(payload["samples"])
    prompt = f", continuing a prompt of {len(payload['prefix'])} tokens" if "prefix" in payload else ""
    return (f"{payload['run_dir']} (checkpoint step {payload['step']}): {n} sample{'s' * (n != 1)}, "
            f"{payload['steps']} steps, {payload['nfe']} network calls{prompt}")


def _text_blocks(payload: dict) -> list[str]:
    n = len(payload["text"])
    return [f"--- sample {i} of {n} ---\n{text}\n" for i, text in enumerate(payload["text"], 1)]


def _token_rows(payload: dict, synthetic: bool) -> list[str]:
    samples = payload["samples"]
    width = max((len(str(t)) for row in samples for t in row), default=1)
    rows = []
    for i, row in enumerate(samples, 1):
        mark = ("valid    " if len(set(row)) == 1 else "invalid  ") if synthetic else ""
        rows.append(f"{i:>4}  {mark}{' '.join(str(t).rjust(width) for t in row)}")
    if synthetic:
        valid = [row[0] for row in samples if len(set(row)) == 1]
        rows.append(f"valid (all tokens equal): {len(valid)} of {len(samples)}, "
                    f"{len(set(valid))} distinct tokens among them")
    return rows


def format_samples(payload: dict, fmt: str, synthetic: bool) -> str:
    """The samples of `payload` (run_dir, step, steps, nfe, samples; prefix and text when present)
    as `fmt`; `synthetic` marks the synthetic task's validity in the text view."""
    if fmt == "json":
        return json.dumps(payload)
    if fmt == "jsonl":
        common = {k: v for k, v in payload.items() if k not in ("samples", "text")}
        return "\n".join(json.dumps({**common, "index": i, "tokens": tokens,
                                     **({"text": payload["text"][i]} if "text" in payload else {})})
                         for i, tokens in enumerate(payload["samples"]))
    body = _text_blocks(payload) if "text" in payload else _token_rows(payload, synthetic)
    return "\n".join([_header(payload), *body])
