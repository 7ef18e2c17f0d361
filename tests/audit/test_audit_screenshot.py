"""The report opens in headless Chromium and the chart is actually drawn."""

from __future__ import annotations

from pathlib import Path

from audit_fixtures import write_usage_log

from agent.audit.chart import PALETTE, PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT, PLOT_TOP
from agent.audit.query import read_records
from agent.audit.report import CHART_LEFT_PX, CHART_TOP_PX, ReportPeriod, render_html_report
from agent.identity.agent_key import AgentKey
from tests.headless_chromium import WHITE, decode_png, rgb, screenshot


def test_the_chart_is_drawn_in_chromium(tmp_path: Path, agent_key: AgentKey, chromium: str) -> None:
    directory = tmp_path / "audit"
    write_usage_log(directory, agent_key)
    page = tmp_path / "report.html"
    page.write_text(render_html_report(list(read_records(directory)), ReportPeriod()), encoding="utf-8")
    out = tmp_path / "shot.png"
    screenshot(chromium, page, out, tmp_path / "profile")

    width, height, rows, bpp = decode_png(out.read_bytes())
    assert (width, height) == (1280, 1600)
    left, top = CHART_LEFT_PX + PLOT_LEFT, CHART_TOP_PX + PLOT_TOP
    right, bottom = CHART_LEFT_PX + PLOT_RIGHT, CHART_TOP_PX + PLOT_BOTTOM
    counts: dict[tuple[int, int, int], int] = {}
    for y in range(top, bottom + 1):
        row = rows[y]
        for x in range(left, right + 1):
            pixel = (row[x * bpp], row[x * bpp + 1], row[x * bpp + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
    total = sum(counts.values())
    background = counts.get(WHITE, 0)
    drawn = total - background
    assert drawn > 0.01 * total, f"chart region nearly blank: {drawn} of {total} pixels drawn"
    for colour in PALETTE[:3]:
        # The step lines are horizontal/vertical and crisp: their exact colour shows.
        assert counts.get(rgb(colour), 0) > 100, f"line colour {colour} missing from the chart"
