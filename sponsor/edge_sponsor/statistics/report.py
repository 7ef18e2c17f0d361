"""The sponsor's statistics report: a result tree that serialises to JSON, and one HTML page.

The page is self-contained (inline CSS and SVG, no script, nothing fetched: its
Content-Security-Policy forbids it), so it can be archived, mailed and opened offline, as
the agent's audit report (agent/audit/report.py). Every string from a plan or a release
(site names, column names, category labels) is escaped: the sponsor's reviewers open
pages built from what hospitals and publishers wrote.

The Kaplan-Meier chart is drawn at fixed coordinates (``CHART_LEFT_PX``, ``CHART_TOP_PX``
and the ``PLOT_*`` box) so that a screenshot test can look for its curves and bands.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from edge_sponsor.html_page import HEADER_HEIGHT_PX, PAGE_LEFT_PX, render_page
from edge_sponsor.statistics.cox import CoxFit, CoxScale, HazardRatio
from edge_sponsor.statistics.cox_analysis import CoxAnalysis
from edge_sponsor.statistics.glm import Coefficient, GlmAnalysis, GlmMethod, GlmScale, GlmSite
from edge_sponsor.statistics.iptw import WeightedSurvival
from edge_sponsor.statistics.iptw_analysis import IptwAnalysis
from edge_sponsor.statistics.iptw_report import LOVE_CSS, balance_html, iptw_intro
from edge_sponsor.statistics.survival import KmCurve, Median, StratumSurvival, SurvivalAnalysis
from edge_sponsor.statistics.table_one import (
    CategoricalSummary,
    Estimate,
    NumericSummary,
    TableOne,
    TableOneColumn,
)

CHART_LEFT_PX = PAGE_LEFT_PX
CHART_TOP_PX = HEADER_HEIGHT_PX
WIDTH = 960
PLOT_LEFT = 140
PLOT_TOP = 24
PLOT_RIGHT = 940
PLOT_BOTTOM = 344
LEGEND_TOP = PLOT_BOTTOM + 64
LEGEND_ROW = 20
RISK_ROW = 20
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
OVERALL_COLOUR = "#4b5563"
BAND_OPACITY = 0.18


@dataclass(frozen=True)
class StatisticsReport:
    """Everything one report shows: the survival analysis, Table 1, the regression (any may be absent)."""

    title: str
    generated_at: str
    survival: SurvivalAnalysis | None = None
    table_one: TableOne | None = None
    notes: tuple[str, ...] = ()
    glm: GlmAnalysis | None = None
    cox: CoxAnalysis | None = None
    iptw: IptwAnalysis | None = None

    def to_dict(self) -> dict[str, Any]:
        """The tree as JSON values: NaN and infinities become null, enums their values."""
        return {str(k): _clean(v) for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        """The tree as a JSON document (strict: no NaN literals)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, indent=1)


def new_report(
    title: str,
    *,
    survival: SurvivalAnalysis | None = None,
    table_one: TableOne | None = None,
    notes: Sequence[str] = (),
    generated_at: dt.datetime | None = None,
    glm: GlmAnalysis | None = None,
    cox: CoxAnalysis | None = None,
    iptw: IptwAnalysis | None = None,
) -> StatisticsReport:
    """A report stamped with ``generated_at`` (now, UTC, when omitted)."""
    moment = generated_at or dt.datetime.now(dt.UTC)
    return StatisticsReport(
        title, moment.isoformat(timespec="seconds"), survival, table_one, tuple(notes), glm, cox, iptw
    )


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


# The page's own rules; the shell and the base style are edge_sponsor.html_page's.
_CSS = f"""
#km-chart-section{{margin:0 0 0 {CHART_LEFT_PX}px;width:960px}}
#km-chart{{display:block;width:960px}}
#km-chart .grid{{stroke:#e6e9ef;stroke-width:1}}
#km-chart .tick,#km-chart .axis{{stroke:#1d2430;stroke-width:1}}
#km-chart text{{font-size:12px;fill:#1d2430}}
#km-chart .axis-label{{font-size:13px;font-weight:600}}
#forest-plot{{display:block}}
#forest-plot text{{font-size:12px;fill:#1d2430}}
#forest-plot .grid{{stroke:#e6e9ef;stroke-width:1}}
#forest-plot .null{{stroke:#1d2430;stroke-width:1;stroke-dasharray:4 3}}
#forest-plot .ci{{stroke:#1f77b4;stroke-width:2}}
#forest-plot .point{{fill:#1f77b4}}
td.variable{{font-weight:600;background:#fafbfc}}
.suppressed{{color:#6b7280;font-style:italic}}
"""


def render_html(report: StatisticsReport) -> str:
    """The report as one self-contained HTML page (UTF-8 text).

    Args:
        report: the results; a part that is None is left out of the page.

    Returns:
        The page: header, the Kaplan-Meier chart with its bands, legend and numbers at
        risk, the survival summary and log-rank test, then Table 1.
    """
    parts: list[str] = []
    survival = report.survival
    chart: tuple[list[StratumSurvival], Sequence[float], float] | None = None
    if survival is not None:
        chart = ([*survival.strata, *([survival.overall] if survival.overall is not None else [])],
                 survival.grid, survival.confidence)  # fmt: skip
    elif report.iptw is not None and report.iptw.survival is not None:
        chart = _iptw_curves(report.iptw.treatment, report.iptw.survival)
    if chart is not None:
        curves, grid, confidence = chart
        height = chart_height(len(curves))
        parts.append(f'<section id="km-chart-section" style="height:{height}px">')
        parts.append(render_km_chart(curves, grid, confidence))
        parts.append("</section>")
    parts.append("<main>")
    if survival is not None:
        parts.append(_survival_summary(survival))
    if report.table_one is not None:
        parts.append(_table_one(report.table_one))
    if report.glm is not None:
        parts.append(_glm_section(report.glm))
    if report.cox is not None:
        parts.append(_cox_section(report.cox))
    if report.iptw is not None:
        parts.append(_iptw_section(report.iptw))
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</main>")
    subtitle = (
        f"Generated {report.generated_at} · every number is pooled from differentially private releases; "
        "intervals include the privacy noise"
    )
    return render_page(report.title, subtitle, parts, css=_CSS + LOVE_CSS)


def _iptw_curves(treatment: str, survival: WeightedSurvival) -> tuple[list[StratumSurvival], Sequence[float], float]:
    """The chart's curves for a weighted study: each arm weighted, then as observed (unweighted)."""
    curves = [
        dataclasses.replace(arm.weighted, label=f"{treatment}={arm.label}, weighted") for arm in survival.arms
    ] + [dataclasses.replace(arm.unweighted, label=f"{treatment}={arm.label}, unweighted") for arm in survival.arms]
    return curves, survival.grid, survival.confidence


def _iptw_section(analysis: IptwAnalysis) -> str:
    """The weighted study: what was compared, the balance and love plot, the weighted survival's
    summary, the propensity model and the weighted Cox model."""
    text = [iptw_intro(analysis)]
    if analysis.balance is not None:
        text.append(balance_html(analysis.balance))
    if analysis.survival is not None:
        rows = "".join(
            f"<tr><td>{escape(arm.label)}</td><td>{escape(kind)}</td>"
            f'<td class="num">{escape(_count(curve.patients))}</td><td>{escape(_median(curve.curve.median))}</td></tr>'
            for arm in analysis.survival.arms
            for kind, curve in (("weighted", arm.weighted), ("unweighted", arm.unweighted))
        )
        text.append(
            "<h3>Survival per arm</h3>"
            '<p class="note">The chart above: each arm\'s Kaplan-Meier curve weighted by the propensity weights '
            "(adjusted for the covariates: what each arm's survival would be in the same population) and as "
            "observed. The weighted curve's band uses effective numbers at risk (Xie and Liu 2005) and the privacy "
            "noise. Patients: the weighted curve's effective number, the unweighted curve's noisy count.</p>"
            '<table id="iptw-survival"><thead><tr><th>Arm</th><th>Curve</th><th>Patients</th>'
            "<th>Median survival (CI)</th></tr></thead><tbody>" + rows + "</tbody></table>"
        )
    text.append(_glm_section(analysis.propensity, heading="Propensity model (logistic regression of the treatment)"))
    if analysis.cox is not None:
        text.append(_cox_section(analysis.cox, weighted=True))
    return "\n".join(text)


def risk_top(curves: int) -> int:
    """Where the numbers at risk start (under the legend)."""
    return LEGEND_TOP + curves * LEGEND_ROW + 24


def chart_height(curves: int) -> int:
    """The chart's height in CSS pixels for ``curves`` curves (legend and at-risk table grow with them)."""
    return risk_top(curves) + (curves + 1) * RISK_ROW + 8


def colour_of(index: int, label: str) -> str:
    """The colour of curve ``index`` (the overall curve is grey)."""
    return OVERALL_COLOUR if label == "all" and index > 0 else PALETTE[index % len(PALETTE)]


def render_km_chart(curves: Sequence[StratumSurvival], grid: Sequence[float], confidence: float) -> str:
    """The ``<svg id="km-chart">``: step curves, shaded bands, axes, legend and numbers at risk."""
    end = float(grid[-1]) if grid else 1.0
    x_step = _nice_step(end / 8)

    def x_of(t: float) -> float:
        return PLOT_LEFT + min(max(t / end, 0.0), 1.0) * (PLOT_RIGHT - PLOT_LEFT)

    def y_of(s: float) -> float:
        return PLOT_BOTTOM - min(max(s, 0.0), 1.0) * (PLOT_BOTTOM - PLOT_TOP)

    height = chart_height(len(curves))
    out = [
        f'<svg id="km-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="km-chart-title">',
        f'<title id="km-chart-title">Kaplan&#8211;Meier survival per stratum with pointwise {confidence:.0%} '
        "intervals (sampling and privacy noise)</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    for tenth in range(0, 11, 2):
        y = y_of(tenth / 10)
        out.append(f'<line class="grid" x1="{PLOT_LEFT}" y1="{y:.1f}" x2="{PLOT_RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<line class="tick" x1="{PLOT_LEFT - 5}" y1="{y:.1f}" x2="{PLOT_LEFT}" y2="{y:.1f}"/>')
        out.append(f'<text x="{PLOT_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{tenth / 10:.1f}</text>')
    ticks = [i * x_step for i in range(int(end / x_step + 1e-9) + 1)]
    for tick in ticks:
        x = x_of(tick)
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{PLOT_BOTTOM}" x2="{x:.1f}" y2="{PLOT_BOTTOM + 5}"/>')
        out.append(f'<text x="{x:.1f}" y="{PLOT_BOTTOM + 20}" text-anchor="middle">{_number(tick)}</text>')
    out.append(
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{PLOT_BOTTOM}"/>'
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}"/>'
        f'<text class="axis-label" x="{(PLOT_LEFT + PLOT_RIGHT) / 2:.0f}" y="{PLOT_BOTTOM + 40}" '
        'text-anchor="middle">time (plan grid units)</text>'
        f'<text class="axis-label" transform="translate(18 {(PLOT_TOP + PLOT_BOTTOM) / 2:.0f}) rotate(-90)" '
        'text-anchor="middle">survival probability</text>'
    )
    # Bands first, then every curve over them.
    for index, item in enumerate(curves):
        colour = colour_of(index, item.label)
        band = _band_path(item.curve, x_of, y_of)
        if band:
            out.append(
                f'<path class="km-band" data-stratum="{escape(item.label)}" d="{band}" fill="{colour}" '
                f'fill-opacity="{BAND_OPACITY}" stroke="none"/>'
            )
    for index, item in enumerate(curves):
        colour = colour_of(index, item.label)
        line = _step_path(item.curve.times, item.curve.survival, x_of, y_of)
        if line:
            dash = ' stroke-dasharray="8 5"' if item.label == "all" and index > 0 else ""
            out.append(
                f'<path class="km-curve" data-stratum="{escape(item.label)}" d="{line}" fill="none" '
                f'stroke="{colour}" stroke-width="3" shape-rendering="crispEdges"{dash}>'
                f"<title>{escape(item.label)}: median {escape(_median(item.curve.median))}</title></path>"
            )
    # Legend under the axis title, one row per curve.
    for index, item in enumerate(curves):
        colour = colour_of(index, item.label)
        y = LEGEND_TOP + index * LEGEND_ROW
        x = PLOT_LEFT
        out.append(
            f'<g class="legend-item"><rect x="{x}" y="{y - 9}" width="28" height="14" fill="{colour}" '
            f'fill-opacity="{BAND_OPACITY}"/><line x1="{x}" y1="{y - 2}" x2="{x + 28}" y2="{y - 2}" '
            f'stroke="{colour}" stroke-width="3"/><text x="{x + 36}" y="{y + 2}">{escape(item.label)} '
            f"· median survival {escape(_median(item.curve.median))}</text></g>"
        )
    # Numbers at risk under the plot, at the axis ticks.
    top = risk_top(len(curves))
    out.append(f'<text class="axis-label" x="8" y="{top - 8}">Number at risk</text>')
    for index, item in enumerate(curves):
        colour = colour_of(index, item.label)
        y = top + (index + 1) * RISK_ROW - 6
        out.append(
            f'<text x="{PLOT_LEFT - 28}" y="{y}" text-anchor="end" fill="{colour}">{escape(item.label[:16])}</text>'
        )
        shown = _at_risk_shown(item.curve)
        for tick in ticks:
            out.append(
                f'<text x="{x_of(tick):.1f}" y="{y}" text-anchor="middle">{escape(_at(shown, item.curve.times, tick))}'
                "</text>"
            )
    out.append("</svg>")
    return "\n".join(out)


def _finite(curve: KmCurve) -> int:
    """How many leading points of the curve are estimable."""
    count = 0
    for value in curve.survival:
        if not math.isfinite(value):
            break
        count += 1
    return count


def _step_path(times: Sequence[float], values: Sequence[float], x_of: Any, y_of: Any) -> str:
    count = 0
    for value in values:
        if not math.isfinite(value):
            break
        count += 1
    if count == 0:
        return ""
    path = [f"M{x_of(times[0]):.1f} {y_of(values[0]):.1f}"]
    for j in range(1, count):
        path.append(f"H{x_of(times[j]):.1f} V{y_of(values[j]):.1f}")
    return " ".join(path)


def _band_path(curve: KmCurve, x_of: Any, y_of: Any) -> str:
    count = _finite(curve)
    if count < 2:
        return ""
    times = curve.times[:count]
    upper = [f"M{x_of(times[0]):.1f} {y_of(curve.upper[0]):.1f}"]
    for j in range(1, count):
        upper.append(f"H{x_of(times[j]):.1f} V{y_of(curve.upper[j]):.1f}")
    lower = [f"V{y_of(curve.lower[count - 1]):.1f}"]
    for j in range(count - 1, 0, -1):
        lower.append(f"H{x_of(times[j]):.1f} V{y_of(curve.lower[j - 1]):.1f}")
    return " ".join(upper + lower) + " Z"


def _at_risk_shown(curve: KmCurve) -> list[int | None]:
    """Numbers at risk as shown: rounded, at least 0 and never rising (noise can make the raw suffix sums rise)."""
    shown: list[int | None] = []
    lowest = math.inf
    for value in curve.at_risk:
        if not math.isfinite(value):
            shown.append(None)
            continue
        lowest = min(lowest, max(round(value), 0))
        shown.append(int(lowest))
    return shown


def _at(shown: Sequence[int | None], times: Sequence[float], tick: float) -> str:
    """At risk at ``tick``: the number still at risk after the last grid time at or before it."""
    index = max(j for j, t in enumerate(times) if t <= tick + 1e-9)
    value = shown[index]
    return "—" if value is None else str(value)


def _nice_step(raw: float) -> float:
    if not raw > 0:
        return 1.0
    exponent = math.floor(math.log10(raw))
    base = 10.0**exponent
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= multiple * base:
            return multiple * base
    return 10.0 * base


def _number(value: float) -> str:
    return f"{value:.4g}"


def _time(value: float | None) -> str:
    return "not reached" if value is None else _number(value)


def _median(median: Median) -> str:
    if median.estimate is None and median.lower is None:
        return "not reached"
    return f"{_time(median.estimate)} ({_time(median.lower)} to {_time(median.upper)})"


def _survival_summary(survival: SurvivalAnalysis) -> str:
    level = f"{survival.confidence:.0%}"
    rows = []
    items = [*survival.strata, *([survival.overall] if survival.overall is not None else [])]
    for item in items:
        cells = [
            escape(item.label),
            escape(_count(item.patients)),
            escape(_median(item.curve.median)),
            escape(_median(item.median_follow_up)),
            escape(", ".join(item.sites) or "none"),
            escape(", ".join(item.sites_left_out) or "none"),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "Stratum",
            "Patients (noisy)",
            f"Median survival ({level} CI)",
            f"Median follow-up, reverse KM ({level} CI)",
            "Sites pooled",
            "Sites left out (withheld)",
        )
    )
    text = [
        "<h2>Survival</h2>",
        f'<p class="note">Grouped Kaplan&#8211;Meier ({escape(survival.method.value)}) on the plan\'s grid of '
        f"{len(survival.grid)} times; pointwise {level} intervals on the log(&#8722;log) scale, variance = Greenwood + "
        "privacy noise (delta method).</p>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
    ]
    test = survival.log_rank
    if test is not None:
        text.append(
            f'<p id="log-rank">Log-rank test between {escape(", ".join(test.strata))}: χ² = '
            f"{escape(f'{test.statistic:.3f}')} on {test.degrees_of_freedom} df, p = "
            f"{escape(f'{test.p_value:.4g}')}; privacy noise is {escape(f'{test.noise_share:.0%}')} of the "
            f"variance of O &#8722; E. Sites: {escape(', '.join(test.sites))}"
            + (
                f"; left out (withheld a stratum): {escape(', '.join(test.sites_left_out))}"
                if test.sites_left_out
                else ""
            )
            + ".</p>"
        )
    return "\n".join(text)


def _count(value: float) -> str:
    return "suppressed" if not math.isfinite(value) else f"{value:.0f}"


def _estimate(estimate: Estimate, digits: int = 3) -> str:
    if not math.isfinite(estimate.value):
        return "—"
    return f"{estimate.value:.{digits}g} ({estimate.lower:.{digits}g} to {estimate.upper:.{digits}g})"


def _percent(estimate: Estimate) -> str:
    if not math.isfinite(estimate.value):
        return "—"
    return f"{100 * estimate.value:.1f}% ({100 * estimate.lower:.1f} to {100 * estimate.upper:.1f})"


def _cell(text: str) -> str:
    if text == "suppressed":
        return '<td class="num suppressed">suppressed</td>'
    return f'<td class="num">{escape(text)}</td>'


def _table_one(table: TableOne) -> str:
    columns = table.columns
    level = f"{table.confidence:.0%}"
    groups: list[tuple[str, int]] = []
    for column in columns:
        if groups and groups[-1][0] == column.stratum:
            groups[-1] = (column.stratum, groups[-1][1] + 1)
        else:
            groups.append((column.stratum, 1))
    top = "<th></th>" + "".join(f'<th colspan="{n}">{escape(label)}</th>' for label, n in groups)
    second = "<th></th>" + "".join(f"<th>{escape(c.site)}</th>" for c in columns)
    rows = [
        "<tr><td>Patients, N (± noise SD)</td>"
        + "".join(
            _cell("suppressed" if c.suppressed else f"{c.patients.value:.0f} ± {c.patients.se:.1f}") for c in columns
        )
        + "</tr>"
    ]
    for position, first in enumerate(columns[0].variables):
        if isinstance(first, NumericSummary):
            rows.append(f'<tr><td class="variable" colspan="{len(columns) + 1}">{escape(first.column)}</td></tr>')
            for label, read in (
                (f"mean ({level} CI)", _mean_text),
                ("SD", _sd_text),
                ("median [Q1, Q3]", _quartiles_text),
                ("% missing", _missing_text),
            ):
                rows.append(
                    f"<tr><td>{escape(label)}</td>"
                    + "".join(_cell(read(_numeric(c, position))) for c in columns)
                    + "</tr>"
                )
        elif isinstance(first, CategoricalSummary):
            rows.append(
                f'<tr><td class="variable" colspan="{len(columns) + 1}">{escape(first.column)}, '
                f"n and % ({escape(level)} CI)</td></tr>"
            )
            for index, row in enumerate(first.rows):
                cells = []
                for column in columns:
                    found = _categorical(column, position).rows[index]
                    cells.append(
                        _cell("suppressed" if found.suppressed else f"{found.count:.0f}, {_percent(found.proportion)}")
                    )
                rows.append(f"<tr><td>{escape(row.label)}</td>" + "".join(cells) + "</tr>")
    note = (
        f'<p class="note">Counts are noisy; means and shares with {escape(level)} intervals whose variance adds the '
        "sampling error and the privacy noise. “suppressed”: withheld by a hospital under its minimum cell size.</p>"
    )
    return (
        "<h2>Table 1</h2>"
        + note
        + f'<table id="table-one"><thead><tr>{top}</tr><tr>{second}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _mean_text(summary: NumericSummary) -> str:
    return _estimate(summary.mean)


def _sd_text(summary: NumericSummary) -> str:
    return _plain(summary.sd)


def _quartiles_text(summary: NumericSummary) -> str:
    return f"{_plain(summary.median)} [{_plain(summary.q1)}, {_plain(summary.q3)}]"


def _missing_text(summary: NumericSummary) -> str:
    return "suppressed" if summary.missing_suppressed else _plain(summary.missing_percent, "{:.1f}")


def _numeric(column: TableOneColumn, position: int) -> NumericSummary:
    found = column.variables[position]
    if not isinstance(found, NumericSummary):
        raise TypeError(f"column {column.site}/{column.stratum}: variable {position} is not numeric")
    return found


def _categorical(column: TableOneColumn, position: int) -> CategoricalSummary:
    found = column.variables[position]
    if not isinstance(found, CategoricalSummary):
        raise TypeError(f"column {column.site}/{column.stratum}: variable {position} is not categorical")
    return found


def _plain(value: float, form: str = "{:.3g}") -> str:
    return form.format(value) if math.isfinite(value) else "—"


def _glm_section(analysis: GlmAnalysis, heading: str = "Logistic regression") -> str:
    """The regression: coefficients on both scales, the rounds and what each site was charged."""
    fit = analysis.fit
    method = "lower-bound steps" if fit is not None and fit.method is GlmMethod.BOUND else "Newton&#8211;Raphson"
    text = [f"<h2>{escape(heading)} (DP {method})</h2>"]
    done = len(analysis.rounds)
    text.append(
        f'<p class="note">{done} of {analysis.rounds_planned} rounds at noise multiplier '
        f"{escape(f'{analysis.noise_multiplier:g}')}; each round is one dp_glm task per site, each charged. "
        "Standard errors: sampling (inverse information) and the privacy noise of the last round's score, "
        "independent, so the total is their root sum of squares; intervals are the estimate ± z·SE total, "
        "odds ratios their exponentials.</p>"
    )
    if fit is not None and fit.method is GlmMethod.BOUND:
        text.append(
            '<p class="note">Lower-bound steps (Böhning and Lindsay): every round steps by the score over the '
            "information released in the first round, at β = 0 (XᵀX/4, which bounds the information at every β), so "
            "each round's noisy information only enters the standard errors. The coefficients are the mean of the "
            f"last {fit.averaged_rounds} iterates (each round keeps {escape(f'{fit.contraction:.2g}')} of the "
            "error); their noise covariance is that of this linear recursion's average.</p>"
        )
    elif fit is not None and fit.averaged_rounds > 1:
        text.append(
            f'<p class="note">The coefficients are the mean of the last {fit.averaged_rounds} rounds\' one-step '
            "estimates, with the information averaged over them: their noise variance is that of one step divided "
            "by the rounds averaged.</p>"
        )
    if analysis.stopped_early:
        text.append(f'<p class="warning">The run stopped early: {escape(analysis.stopped_early)}.</p>')
    if analysis.not_converged:
        text.append(f'<p class="warning">The estimate may not have converged: {escape(analysis.not_converged)}.</p>')
    if fit is not None:
        level = f"{fit.confidence:.0%}"
        text.append(
            f"<p>Patients in the model (noisy, summed over {escape(', '.join(fit.sites))}): "
            f"{escape(f'{fit.included:.0f}')}; excluded (a covariate missing or not a listed category, "
            f"or the outcome not 0/1): {escape(_count(fit.excluded))}.</p>"
        )
        if fit.unreliable:
            text.append(f'<p class="warning" id="glm-unreliable">Not to be trusted: {escape(fit.unreliable)}.</p>')
        text.append("<h3>Per unit of each covariate</h3>")
        text.append(_coefficient_table("glm-original", fit.original, level))
        text.append(
            '<h3>Design scale</h3><p class="note">Numeric covariates centred at their bounds\' midpoint and '
            "divided by their half-width (per half-range); the intercept is the log-odds at the midpoints and "
            "reference categories.</p>"
        )
        text.append(_coefficient_table("glm-design", fit.design, level))
    rows = "".join(
        f"<tr><td>{r.index + 1}</td><td>{escape(', '.join(r.sites))}</td>"
        f'<td class="num">{escape(f"{r.included:.0f}")}</td><td class="num">{r.floored_eigenvalues}</td></tr>'
        for r in analysis.rounds
    )
    text.append(
        '<h3>Rounds</h3><table id="glm-rounds"><thead><tr><th>Round</th><th>Sites pooled</th>'
        "<th>Patients (noisy)</th><th>Eigenvalues floored</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
    text.append(_sites_table("glm-sites", analysis.sites))
    return "\n".join(text)


def _sites_table(identifier: str, sites: Sequence[GlmSite]) -> str:
    """Each site of a dp_glm run: its status, the rounds and ε charged, its budget group's ε."""
    rows = "".join(
        f"<tr><td>{escape(s.site)}</td><td>{escape(s.status)}{escape(': ' + s.detail if s.detail else '')}</td>"
        f'<td class="num">{s.rounds_charged}</td><td class="num">{escape(f"{s.epsilon_charged:.4g}")}</td>'
        f'<td class="num">{escape(f"{s.budget_epsilon_spent:.4g}")}</td></tr>'
        for s in sites
    )
    return (
        f'<h3>Sites</h3><table id="{escape(identifier)}"><thead><tr><th>Site</th><th>Status</th>'
        "<th>Rounds charged</th><th>ε charged by the run</th><th>Budget ε spent</th></tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )


def _cox_section(analysis: CoxAnalysis, *, weighted: bool = False) -> str:
    """The Cox model: the forest plot and table of hazard ratios, the baselines, rounds and sites."""
    fit = analysis.fit
    title = "Weighted Cox proportional hazards" if weighted else "Cox proportional hazards"
    text = [f"<h2>{title} (DP, piecewise-exponential baseline)</h2>"]
    if fit is not None and fit.weighted_variance:
        text.append(
            '<p class="note">Each patient\'s terms carry their propensity weight. The inverse information alone '
            "would be too narrow for weighted data (it counts the sum of the weights as patients); the sampling SE "
            f"is instead the model-based one with {escape(fit.weighted_variance)} (Σw)²/Σw², from the weighted "
            "description's sums of weights: within 2 to 4 % of the robust sandwich (lifelines' robust=True) on "
            "gbsg2. It leaves out the propensity model's own uncertainty, as the sandwich does.</p>"
        )
    text.append(
        f'<p class="note">{len(analysis.rounds)} of {analysis.rounds_planned} rounds at noise multiplier '
        f"{escape(f'{analysis.noise_multiplier:g}')}; each round is one dp_glm task per site, each charged. "
        "The baseline hazard is constant on each interval of the plan's survival grid and follow-up ends at its "
        "last time. Standard errors: sampling (inverse information, the baselines profiled out) and the "
        "privacy noise, independent, so the total is their root sum of squares; intervals are the log hazard "
        "ratio ± z·SE total, hazard ratios their exponentials.</p>"
    )
    if analysis.stopped_early:
        text.append(f'<p class="warning">The run stopped early: {escape(analysis.stopped_early)}.</p>')
    if analysis.not_converged:
        text.append(f'<p class="warning">The estimate may not have converged: {escape(analysis.not_converged)}.</p>')
    if fit is not None:
        text += _cox_fit(fit)
    rows = "".join(
        f"<tr><td>{r.index + 1}</td><td>{escape(', '.join(r.sites))}</td>"
        f'<td class="num">{escape(f"{r.included:.0f}")}</td></tr>'
        for r in analysis.rounds
    )
    text.append(
        '<h3>Rounds</h3><table id="cox-rounds"><thead><tr><th>Round</th><th>Sites pooled</th>'
        "<th>Patients (noisy)</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
    text.append(_sites_table("cox-sites", analysis.sites))
    return "\n".join(text)


def _cox_fit(fit: CoxFit) -> list[str]:
    level = f"{fit.confidence:.0%}"
    text = [
        f"<p>Patients in the model (noisy, summed over {escape(', '.join(fit.sites))}): "
        f"{escape(f'{fit.included:.0f}')}, of whom about {escape(_count(fit.clamped))} had their cumulative "
        f"hazard clamped at {escape(f'{fit.max_cumulative_hazard:g}')}"
        + (
            f" (and fewer than the minimum cell size at each of {fit.clamped_withheld} more sites)"
            if fit.clamped_withheld
            else ""
        )
        + "; excluded (a covariate missing or not a "
        f"listed category, or no usable time or event): {escape(_count(fit.excluded))}.</p>"
    ]
    if fit.unreliable:
        text.append(f'<p class="warning" id="cox-unreliable">Not to be trusted: {escape(fit.unreliable)}.</p>')
    text.append(f"<h3>Hazard ratios per unit of each covariate ({level} intervals)</h3>")
    text.append(forest_plot(fit.original))
    text.append(_hazard_table("cox-original", fit.original, level))
    text.append(
        '<h3>Design scale</h3><p class="note">Numeric covariates divided by their half-width (per half-range).</p>'
    )
    text.append(_hazard_table("cox-design", fit.design, level))
    rows = "".join(
        f"<tr><td>{escape(site.site)}</td><td>{escape(interval.name)}</td>"
        f'<td class="num">{escape(_g(interval.hazard))}</td>'
        f'<td class="num">{escape(_g(interval.lower))} to {escape(_g(interval.upper))}</td>'
        f'<td class="num">{escape(_g(interval.events))}</td><td>{escape(interval.note)}</td></tr>'
        for site in fit.baselines
        for interval in site.intervals
    )
    text.append(
        '<h3>Baseline hazards</h3><p class="note">Per site and interval, per unit of time, at the numeric '
        "covariates' midpoints and the reference categories; events are noisy.</p>"
        '<table id="cox-baselines"><thead><tr><th>Site</th><th>Interval</th><th>Hazard</th>'
        f"<th>{escape(level)} CI</th><th>Events</th><th>Note</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )
    return text


def _hazard_table(identifier: str, scale: CoxScale, level: str) -> str:
    heads = ("Covariate", "Log HR", "SE sampling", "SE privacy noise", "SE total", "Hazard ratio", f"{level} CI")
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return (
        f'<table id="{escape(identifier)}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(_hazard_row(c) for c in scale.coefficients)
        + "</tbody></table>"
    )


def _hazard_row(c: HazardRatio) -> str:
    cells = [
        f"<td>{escape(c.name)}</td>",
        *(f'<td class="num">{escape(_g(v))}</td>' for v in (c.estimate, c.se_sampling, c.se_noise, c.se)),
        f'<td class="num">{escape(_g(c.hazard_ratio))}</td>',
        f'<td class="num">{escape(_g(c.hazard_ratio_lower))} to {escape(_g(c.hazard_ratio_upper))}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


# The forest plot: one row per covariate, the hazard ratio on a log axis.
FOREST_LABELS = 260
FOREST_PLOT = 520
FOREST_ROW = 26
FOREST_TOP = 28
# A name longer than this is cut with an ellipsis (the whole name in its tooltip and the table).
FOREST_NAME_CHARACTERS = 34
# Room for "1.123 (0.0001234, 1.235e+04)" in 12 px text.
FOREST_VALUES = 240
# A log axis spans at most this many factors of 10 each side of 1: an interval beyond it is
# drawn to the edge with an arrow (a DP interval can be very wide).
FOREST_DECADES = 3.0


def forest_plot(scale: CoxScale) -> str:
    """An SVG forest plot of ``scale``'s hazard ratios with their intervals, on a log axis with a
    dashed line at 1. A bound past the axis on its own side is drawn at that edge with an
    arrowhead; a row whose ratio is not a number says "not estimable"."""
    finite = [
        math.log10(v)
        for c in scale.coefficients
        for v in (c.hazard_ratio_lower, c.hazard_ratio_upper)
        if math.isfinite(v) and v > 0
    ]
    reach = min(FOREST_DECADES, max([0.3, *(abs(v) for v in finite)]))
    reach = math.ceil(reach * 2) / 2  # ticks at half decades

    def position(ratio: float) -> float:
        """log10(ratio) within the axis (0 and below: its left end; infinite: its right end)."""
        if not ratio > 0:
            return -reach
        if not math.isfinite(ratio):
            return reach
        return max(-reach, min(reach, math.log10(ratio)))

    def x_of(ratio: float) -> float:
        return FOREST_LABELS + (position(ratio) + reach) / (2 * reach) * FOREST_PLOT

    height = FOREST_TOP + FOREST_ROW * len(scale.coefficients) + 40
    width = FOREST_LABELS + FOREST_PLOT + FOREST_VALUES
    parts = [
        f'<svg id="forest-plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Forest plot of hazard ratios">'
    ]
    bottom = FOREST_TOP + FOREST_ROW * len(scale.coefficients)
    tick = -reach
    while tick <= reach + 1e-9:
        x = x_of(10.0**tick)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{FOREST_TOP - 8}" x2="{x:.1f}" y2="{bottom}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{escape(f"{10.0**tick:.3g}")}</text>')
        tick += 0.5
    one = x_of(1.0)
    parts.append(f'<line class="null" x1="{one:.1f}" y1="{FOREST_TOP - 8}" x2="{one:.1f}" y2="{bottom}"/>')
    parts.append(
        f'<text x="{FOREST_LABELS + FOREST_PLOT / 2:.1f}" y="{bottom + 34}" text-anchor="middle">'
        "hazard ratio (log scale)</text>"
    )
    for row, c in enumerate(scale.coefficients):
        y = FOREST_TOP + FOREST_ROW * row + FOREST_ROW / 2
        name = c.name if len(c.name) <= FOREST_NAME_CHARACTERS else c.name[: FOREST_NAME_CHARACTERS - 1] + "…"
        parts.append(
            f'<text x="{FOREST_LABELS - 10}" y="{y + 4:.1f}" text-anchor="end"><title>{escape(c.name)}</title>'
            f"{escape(name)}</text>"
        )
        values = (c.hazard_ratio, c.hazard_ratio_lower, c.hazard_ratio_upper)
        if any(math.isnan(v) for v in values):
            parts.append(f'<text x="{one + 8:.1f}" y="{y + 4:.1f}">not estimable</text>')
            continue
        low, high, point = x_of(c.hazard_ratio_lower), x_of(c.hazard_ratio_upper), x_of(c.hazard_ratio)
        parts.append(f'<line class="ci" x1="{low:.1f}" y1="{y:.1f}" x2="{high:.1f}" y2="{y:.1f}"/>')
        # An arrowhead where a bound is past the axis on its own side: the interval goes on.
        for edge, beyond, sign in (
            (low, not c.hazard_ratio_lower > 0 or math.log10(c.hazard_ratio_lower) < -reach, -1),
            (high, not math.isfinite(c.hazard_ratio_upper) or math.log10(c.hazard_ratio_upper) > reach, 1),
        ):
            if beyond:
                tip = edge + 6 * sign
                parts.append(
                    f'<path class="point" d="M{tip:.1f},{y:.1f} L{edge:.1f},{y - 4:.1f} L{edge:.1f},{y + 4:.1f} Z"/>'
                )
        parts.append(f'<rect class="point" x="{point - 4:.1f}" y="{y - 4:.1f}" width="8" height="8"/>')
        parts.append(
            f'<text x="{FOREST_LABELS + FOREST_PLOT + 12}" y="{y + 4:.1f}">{escape(_g(c.hazard_ratio))} '
            f"({escape(_g(c.hazard_ratio_lower))}, {escape(_g(c.hazard_ratio_upper))})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _coefficient_table(identifier: str, scale: GlmScale, level: str) -> str:
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in (
            "Coefficient",
            "Estimate",
            "SE sampling",
            "SE privacy noise",
            "SE total",
            f"{level} CI",
            "Odds ratio",
            f"{level} CI (odds ratio)",
        )
    )
    return (
        f'<table id="{escape(identifier)}"><thead><tr>{head}</tr></thead><tbody>'
        + "".join(_coefficient_row(c) for c in scale.coefficients)
        + "</tbody></table>"
    )


def _coefficient_row(c: Coefficient) -> str:
    cells = [
        f"<td>{escape(c.name)}</td>",
        *(f'<td class="num">{escape(_g(v))}</td>' for v in (c.estimate, c.se_sampling, c.se_noise, c.se)),
        f'<td class="num">{escape(_g(c.lower))} to {escape(_g(c.upper))}</td>',
        f'<td class="num">{escape(_g(c.odds_ratio))}</td>',
        f'<td class="num">{escape(_g(c.odds_ratio_lower))} to {escape(_g(c.odds_ratio_upper))}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _g(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "—"
