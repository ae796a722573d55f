"""`imdm plot RUN_DIR... --out FILE`: the generative perplexity of text runs, read from each run's
eval.json (docs/method.md section 9). Left: gen-PPL against sampling steps (log axes), one line
per run at temperature 1 (or the run's only temperature), the human text's gen-PPL dashed.
Right: gen-PPL against mean sample entropy, one line per run across its temperatures at its
largest step count: the frontier that low-entropy text cannot game. matplotlib is imported here
only."""

from __future__ import annotations

import json
from pathlib import Path

from imdm.recipe.errors import RecipeError

FORMATS = (".png", ".svg")
ROW_KEYS = ("steps", "temperature", "gen_ppl", "entropy")


def read_eval(run_dir: str | Path) -> dict:
    """A text run's eval.json with its generative rows; a missing or unreadable file, or one
    without text rows (a synthetic run's), is an error naming the run."""
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        raise RecipeError(str(run_dir), ["no eval.json (run `imdm eval` on it first)"])
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RecipeError(str(path), [f"not valid JSON ({err})"]) from None
    rows = [r for r in report.get("rows", []) if isinstance(r, dict) and "gen_ppl" in r]
    if not rows:
        raise RecipeError(str(run_dir), ["eval.json has no text rows with gen_ppl (a synthetic run's evaluation "
                                         "reports validity, which this plot does not show)"])
    incomplete = sorted({k for r in rows for k in ROW_KEYS if k not in r})
    if incomplete:
        raise RecipeError(str(path), [f"rows lack {', '.join(incomplete)}"])
    return {**report, "rows": rows}


def rows_against_steps(rows: list[dict], run: str) -> list[dict]:
    """The rows at temperature 1, or at the run's only temperature, by steps."""
    temperatures = sorted({r["temperature"] for r in rows})
    if 1.0 not in temperatures and len(temperatures) > 1:
        raise RecipeError(run, [f"no temperature-1 rows to plot against steps (temperatures {temperatures})"])
    chosen = 1.0 if 1.0 in temperatures else temperatures[0]
    return sorted((r for r in rows if r["temperature"] == chosen), key=lambda r: r["steps"])


def frontier_rows(rows: list[dict]) -> list[dict]:
    """The rows at the run's largest step count, by temperature."""
    most = max(r["steps"] for r in rows)
    return sorted((r for r in rows if r["steps"] == most), key=lambda r: r["temperature"])


def run_labels(run_dirs: list, reports: list[dict]) -> list[str]:
    """Each run's "method", or its directory name where the method is missing or shared."""
    methods = [report.get("method") or "" for report in reports]
    return [m if m and methods.count(m) == 1 else Path(run).name for m, run in zip(methods, run_dirs)]


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise RecipeError("imdm plot", ["needs matplotlib: pip install 'imdm[eval]'"]) from None
    return Figure


def generative_figure(run_dirs: list):
    """The two-panel matplotlib Figure of the runs (see the module docstring)."""
    reports = [read_eval(run) for run in run_dirs]
    figure = _figure_class()(figsize=(11, 4.5))
    by_steps, frontier = figure.subplots(1, 2)
    labels, all_steps = run_labels(run_dirs, reports), set()
    for run, report, label in zip(run_dirs, reports, labels):
        rows = rows_against_steps(report["rows"], str(run))
        all_steps.update(r["steps"] for r in rows)
        line, = by_steps.plot([r["steps"] for r in rows], [r["gen_ppl"] for r in rows], marker="o", label=label)
        front = frontier_rows(report["rows"])
        frontier.plot([r["entropy"] for r in front], [r["gen_ppl"] for r in front], marker="o",
                      color=line.get_color(), label=f"{label} ({front[0]['steps']} steps)")
        for r in front:
            frontier.annotate(f"T={r['temperature']:g}", (r["entropy"], r["gen_ppl"]), textcoords="offset points",
                              xytext=(4, 4), fontsize=7)
    _draw_human(by_steps, frontier, reports, labels)
    by_steps.set_xscale("log", base=2)
    by_steps.set_yscale("log")
    by_steps.set_xticks(sorted(all_steps), labels=[str(s) for s in sorted(all_steps)])
    by_steps.minorticks_off()
    by_steps.set(xlabel="sampling steps", ylabel="generative perplexity", title="gen-PPL against steps")
    frontier.set_yscale("log")
    frontier.set(xlabel="mean sample entropy (nats)", ylabel="generative perplexity",
                 title="gen-PPL against entropy across temperatures")
    for axes in (by_steps, frontier):
        axes.legend(fontsize=8)
        axes.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    return figure


def _draw_human(by_steps, frontier, reports: list[dict], labels: list[str]) -> None:
    """The human rows: a dashed line at their gen-PPL (left) and a star at (entropy, gen-PPL)
    (right), once per distinct row."""
    humans = {}
    for report, label in zip(reports, labels):
        if report.get("human"):
            humans.setdefault((report["human"]["gen_ppl"], report["human"]["entropy"]), []).append(label)
    for (gen_ppl, entropy), owners in humans.items():
        name = "human" if len(humans) == 1 else f"human ({', '.join(owners)})"
        by_steps.axhline(gen_ppl, linestyle="--", color="0.4", label=name)
        frontier.plot([entropy], [gen_ppl], marker="*", markersize=11, linestyle="none", color="0.4", label=name)


def write_generative_plot(run_dirs: list, out: str | Path) -> Path:
    """Draw the runs' figure into `out` (.png or .svg)."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise RecipeError("imdm plot", [f"--out {out}: give a .png or .svg file"])
    figure = generative_figure(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=150)
    return out
