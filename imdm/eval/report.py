"""The evaluation report of a text run: RUN_DIR/eval.json (the payload as it is) and
RUN_DIR/eval.md (step counts against the metrics, the human-text row under them, then the
zero-shot perplexity bounds and MAUVE when present)."""

from __future__ import annotations

import json
from pathlib import Path


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def generative_table(payload: dict) -> list[str]:
    """Markdown lines: one row per step count, then the human row."""
    rows, human = payload["rows"], payload["human"]
    with_tc = any(r.get("tc_nats") is not None for r in rows)
    head = ["steps", "NFE", "temperature", "gen PPL", "entropy (nats)", "samples", "tokens"] + (["TC (nats)"] * with_tc)
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for r in rows:
        cells = [str(r["steps"]), _number(r["nfe"], 1), _number(r["temperature"], 2), _number(r["gen_ppl"], 2),
                 _number(r["entropy"], 3), str(r["num_samples"]), str(r["tokens"])]
        lines.append("| " + " | ".join(cells + [_number(r.get("tc_nats"), 3)] * with_tc) + " |")
    if human is not None:
        cells = ["human (validation)", "", "", _number(human["gen_ppl"], 2), _number(human["entropy"], 3),
                 str(human["num_samples"]), ""]
        lines.append("| " + " | ".join(cells + [""] * with_tc) + " |")
    return lines


def zero_shot_table(rows: list[dict]) -> list[str]:
    lines = ["| set | sequences | tokens | NELBO (nats/token) | PPL <= |", "|---|---:|---:|---:|---:|"]
    return lines + [f"| {r['set']} | {r['sequences']} | {r['tokens']} | {r['nelbo']:.4f} | {r['ppl']:.2f} |"
                    for r in rows]


def mauve_table(rows: list[dict]) -> list[str]:
    """Markdown lines: one row per step count, the mean and the per-seed scores."""
    lines = ["| steps | NFE | MAUVE | per seed | prompts x continuations |", "|---:|---:|---:|---|---:|"]
    return lines + [f"| {r['steps']} | {r['nfe']:.1f} | {r['mauve']:.4f} | "
                    f"{', '.join(f'{v:.4f}' for v in r['mauve_seeds'])} | {r['documents']} x {r['continuations']} |"
                    for r in rows]


def format_markdown(payload: dict) -> str:
    """eval.md's text."""
    judge = payload["judge"] or "none (eval.judge is empty)"
    lines = [f"# Evaluation of {payload['run_dir']} at step {payload['step']}", "",
             f"method: {payload['method']}; judge: {judge}", ""]
    if payload["rows"]:
        lines += ["## Generative perplexity and entropy", ""] + generative_table(payload) + [""]
    if payload["zero_shot"]:
        lines += ["## Zero-shot perplexity bounds", ""] + zero_shot_table(payload["zero_shot"]) + [""]
    if payload.get("mauve"):
        lines += ["## MAUVE of prompted continuations", ""] + mauve_table(payload["mauve"]) + [""]
    return "\n".join(lines)


def write_report(run_dir: str | Path, payload: dict) -> str:
    """Write eval.json and eval.md into `run_dir`; returns the markdown."""
    run_dir = Path(run_dir)
    text = format_markdown(payload)
    (run_dir / "eval.json").write_text(json.dumps(payload, indent=1))
    (run_dir / "eval.md").write_text(text)
    return text
