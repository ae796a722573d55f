"""A dependency-free SVG plot of synthetic-task results against the number of sampling steps, one
line per method: validity of sampled and of greedy generation, and the greedy coverage ratio."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22")
PANEL_W, PANEL_H, MARGIN = 360, 240, 50


def _panel(rows: list[dict], key: str, title: str, x0: float, methods: list[str], steps: list[int]) -> list[str]:
    def px(step: int) -> float:
        span = max(math.log2(steps[-1]), 1.0)
        return x0 + MARGIN + (math.log2(step) / span) * (PANEL_W - MARGIN - 10)

    def py(value: float) -> float:
        return 20 + (1 - value) * (PANEL_H - 50)

    out = [f'<text x="{x0 + PANEL_W / 2}" y="14" text-anchor="middle" font-size="13">{title}</text>',
           f'<line x1="{x0 + MARGIN}" y1="{py(0)}" x2="{x0 + PANEL_W - 10}" y2="{py(0)}" stroke="black"/>',
           f'<line x1="{x0 + MARGIN}" y1="{py(0)}" x2="{x0 + MARGIN}" y2="{py(1)}" stroke="black"/>']
    for v in (0, 0.5, 1):
        out.append(f'<text x="{x0 + MARGIN - 6}" y="{py(v) + 4}" text-anchor="end" font-size="11">{v}</text>')
    for s in steps:
        out.append(f'<text x="{px(s)}" y="{py(0) + 16}" text-anchor="middle" font-size="11">{s}</text>')
    out.append(f'<text x="{x0 + PANEL_W / 2}" y="{py(0) + 32}" text-anchor="middle" font-size="11">sampling steps</text>')
    for i, method in enumerate(methods):
        points = sorted((r["steps"], r[key]) for r in rows if r["method"] == method)
        path = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in points)
        color = COLORS[i % len(COLORS)]
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>' for s, v in points]
    return out


PANELS = (("validity", "validity (sampled)"), ("validity_greedy", "validity (greedy)"),
          ("coverage_ratio_greedy", "coverage ratio (greedy)"))


def write_validity_plot(rows: list[dict], path: Path, title: str) -> None:
    """Write the SVG for `rows` ({method, steps} and the keys of PANELS), a panel per key."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    width, height = len(PANELS) * PANEL_W + 170, PANEL_H + 30
    body = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{PANEL_W}" y="{height - 4}" text-anchor="middle" font-size="12">{title}</text>']
    for i, (key, label) in enumerate(PANELS):
        body += _panel(rows, key, label, i * PANEL_W, methods, steps)
    legend = len(PANELS) * PANEL_W
    for i, method in enumerate(methods):
        y = 30 + 18 * i
        body.append(f'<rect x="{legend + 10}" y="{y - 9}" width="12" height="12" fill="{COLORS[i % len(COLORS)]}"/>')
        body.append(f'<text x="{legend + 28}" y="{y + 2}" font-size="12">{method}</text>')
    body.append("</svg>")
    Path(path).write_text("\n".join(body) + "\n")
