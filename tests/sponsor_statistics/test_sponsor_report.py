"""The report: JSON round trip, escaping, and the Kaplan-Meier chart actually drawn in headless Chromium."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
from lifelines.datasets import load_gbsg2

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable, Stratum, SurvivalSpec
from agent.packages.release_layout import layout
from edge_sponsor.statistics.report import (
    BAND_OPACITY,
    CHART_LEFT_PX,
    CHART_TOP_PX,
    PALETTE,
    PLOT_BOTTOM,
    PLOT_LEFT,
    PLOT_RIGHT,
    PLOT_TOP,
    StatisticsReport,
    new_report,
    render_html,
)
from edge_sponsor.statistics.survival import analyse_survival
from edge_sponsor.statistics.table_one import table_one
from tests.headless_chromium import WHITE, decode_png, rgb, screenshot
from tests.sponsor_statistics.simulate import releases, split_sites

HOSTILE = '<script>alert("x")</script>'
PLAN = AnalysisPlan(
    (),
    (Stratum("horTh", ("no", "yes")),),
    (
        NumericVariable("age", 20, 80, tuple(float(a) for a in range(20, 81, 5))),
        CategoricalVariable("tgrade", ("I", "II", "III")),
    ),
    SurvivalSpec("time", "cens", tuple(float(t) for t in np.arange(91.3, 2300, 91.3))),
)


def _report(*, survival: bool = True, site: str = "site-1") -> StatisticsReport:
    parts = split_sites(load_gbsg2(), 3, 0)
    describe = releases(parts, PLAN, layout(PLAN, TaskKind.DP_DESCRIBE), 1.0, 1, min_cell_size=10)
    described = [type(r)(site if i == 0 else r.site, r.scalars, r.noise_multiplier) for i, r in enumerate(describe)]
    curves = (
        analyse_survival(PLAN, releases(parts, PLAN, layout(PLAN, TaskKind.DP_SURVIVAL), 1.0, 2)) if survival else None
    )
    return new_report(
        "GBSG2 & friends",
        survival=curves,
        table_one=table_one(PLAN, described),
        notes=(HOSTILE,),
        generated_at=dt.datetime(2026, 12, 7, tzinfo=dt.UTC),
    )


def test_json_is_strict_and_complete() -> None:
    report = _report()
    value = json.loads(report.to_json())
    assert value["title"] == "GBSG2 & friends"
    assert value["survival"]["method"] in ("product-limit", "actuarial")
    assert len(value["survival"]["strata"]) == 2 and value["survival"]["overall"]["label"] == "all"
    assert value["survival"]["log_rank"]["degrees_of_freedom"] == 1
    # Withheld numbers are NaN in the tree and null in JSON (JSON has no NaN).
    assert "NaN" not in report.to_json()
    other = value["table_one"]["columns"][0]["variables"][1]["rows"][3]
    assert other["label"] == "(other)" and other["suppressed"] is True and other["count"] is None


def test_every_string_is_escaped_and_nothing_is_fetched() -> None:
    page = render_html(_report(site=HOSTILE))
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "GBSG2 &amp; friends" in page
    assert "default-src 'none'" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_a_report_without_survival_has_no_chart() -> None:
    page = render_html(_report(survival=False))
    assert 'id="km-chart"' not in page and 'id="table-one"' in page


# -- the page in a real browser ----------------------------------------------------------

def _tint(hex_colour: str) -> tuple[int, int, int]:
    """The band's colour over white: the palette colour at BAND_OPACITY."""
    return tuple(round(255 + BAND_OPACITY * (c - 255)) for c in rgb(hex_colour))  # type: ignore[return-value]


def test_the_curves_and_their_bands_are_drawn_in_chromium(tmp_path: Path, chromium: str) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()), encoding="utf-8")
    out = tmp_path / "shot.png"
    screenshot(chromium, page, out, tmp_path / "profile")
    width, height, rows, bpp = decode_png(out.read_bytes())
    assert (width, height) == (1280, 1600)
    left, top = CHART_LEFT_PX + PLOT_LEFT + 2, CHART_TOP_PX + PLOT_TOP
    right, bottom = CHART_LEFT_PX + PLOT_RIGHT, CHART_TOP_PX + PLOT_BOTTOM - 2
    counts: dict[tuple[int, int, int], int] = {}
    for y in range(top, bottom + 1):
        row = rows[y]
        for x in range(left, right + 1):
            pixel = (row[x * bpp], row[x * bpp + 1], row[x * bpp + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
    total = sum(counts.values())
    assert total - counts.get(WHITE, 0) > 0.05 * total, "the plot region is nearly blank"
    for colour in PALETTE[:2]:
        # Step lines are crisp horizontal and vertical runs: their exact colour shows.
        assert counts.get(rgb(colour), 0) > 200, f"curve colour {colour} missing from the plot"
        # Where a band is alone over the white plot its tint shows (±2 for rounding in the compositor).
        tint = _tint(colour)
        near = sum(n for pixel, n in counts.items() if all(abs(a - b) <= 2 for a, b in zip(pixel, tint, strict=True)))
        assert near > 300, f"band tint {tint} of {colour} missing from the plot"
