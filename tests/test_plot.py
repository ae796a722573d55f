"""The synthetic-result SVG: one line per method per panel, points placed by steps and value."""

import xml.etree.ElementTree as ET

from imdm.tools.plot_synthetic import PANEL_H, write_validity_plot


def test_plot_has_a_line_per_method_with_points_at_their_values(tmp_path):
    rows = [{"method": m, "steps": s, "validity": v, "validity_greedy": v, "coverage_ratio_greedy": c}
            for m, v0 in (("mdlm", 0.0), ("imredi", 1.0)) for s, v, c in ((1, v0, 0.5), (8, 1.0, 1.0))]
    path = tmp_path / "plot.svg"
    write_validity_plot(rows, path, "test")
    svg = ET.parse(path).getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 6      # 2 methods x 3 panels
    bottom, top = 20 + (PANEL_H - 50), 20
    first = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]   # mdlm validity
    second = [tuple(map(float, p.split(","))) for p in lines[1].get("points").split()]  # imredi validity
    assert first[0][1] == bottom and first[1][1] == top and second[0][1] == top
    assert first[0][0] < first[1][0]
