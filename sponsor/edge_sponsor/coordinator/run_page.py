"""The run report as one HTML page (``run/report.html``, beside ``report.json``).

What a statistician and a compliance officer look at after ``coordinate train``: each
federated evaluation metric round by round with its DP noise drawn as an error bar
(±1.96 SD: a metric is never shown as if it were exact), the ε every site's agent says
the run cost, the rounds, and, for a model linear in its features (the zoo's logistic,
linear and Weibull models), the trained coefficients by feature. DP-SGD's coefficients
carry the clipping's bias and no interval; the page says so and names ``study glm``.

Charts are drawn at fixed coordinates (``CHART_*``), so that a screenshot test can find
each metric's line and error bars.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import LabelKind, Manifest, OneHot, Standardise
from edge_sponsor.coordinator.report import RoundRecord, RunReport, SiteSummary
from edge_sponsor.coordinator.score_evaluation import CLASSIFIER_METRICS, ScoreHistogram
from edge_sponsor.html_page import HEADER_HEIGHT_PX, PAGE_LEFT_PX, render_page
from edge_sponsor.statistics.evaluation import calibration, roc_from_histogram

CHART_WIDTH = 960
CHART_HEIGHT = 240
PLOT_LEFT, PLOT_TOP, PLOT_RIGHT, PLOT_BOTTOM = 90, 16, 940, 196
CHARTS_TOP_PX = HEADER_HEIGHT_PX + 8
"""Where the first chart starts on the page; chart i starts CHART_HEIGHT·i below it."""
LINE_COLOUR = "#1f77b4"
BAR_COLOUR = "#d62728"
Z95 = 1.959963984540054

_CSS = f"""
#charts{{margin:8px 0 0 {PAGE_LEFT_PX}px;width:{CHART_WIDTH}px}}
.chart{{display:block;width:{CHART_WIDTH}px;height:{CHART_HEIGHT}px}}
.chart .grid{{stroke:#e6e9ef;stroke-width:1}}
.chart .axis{{stroke:#1d2430;stroke-width:1}}
.chart text{{font-size:12px;fill:#1d2430}}
.chart .title{{font-size:13px;font-weight:600}}
"""


@dataclass(frozen=True)
class Coefficient:
    """One trained parameter of a model linear in its features, with the ratio it implies
    (an odds ratio for logistic regression, a hazard ratio for Weibull; None otherwise)."""

    name: str
    value: float
    ratio: float | None


@dataclass(frozen=True)
class Coefficients:
    rows: tuple[Coefficient, ...]
    ratio_name: str | None
    scale_note: str


def design_columns(manifest: Manifest) -> tuple[str, ...]:
    """The names of the graph's input columns, in order, as the manifest's preprocessing makes them."""
    names: list[str] = []
    for feature in manifest.features:
        preprocessing = feature.preprocessing
        if isinstance(preprocessing, OneHot):
            names += [f"{feature.column}={category}" for category in preprocessing.categories]
        elif isinstance(preprocessing, Standardise):
            names.append(f"{feature.column} (per SD, {preprocessing.std:g})")
        else:
            names.append(feature.column)
        if feature.missing.indicator:
            names.append(f"{feature.column} missing")
    return tuple(names)


def coefficients_of(manifest: Manifest, parameters: Mapping[str, npt.NDArray[np.floating]]) -> Coefficients | None:
    """The coefficients of a model whose parameters are ``w`` [F] and ``b`` [] (and, for
    Weibull, ``log_shape`` []); None for any other model (an MLP has no coefficients to show)."""
    w, b = parameters.get("w"), parameters.get("b")
    extra = set(parameters) - {"w", "b", "log_shape"}
    columns = design_columns(manifest)
    if w is None or b is None or extra or np.shape(w) != (len(columns),) or np.shape(b) != ():
        return None
    weights = [float(v) for v in np.asarray(w, np.float64)]
    intercept = float(np.asarray(b, np.float64))
    kind = manifest.label.kind
    if kind is LabelKind.SURVIVAL and "log_shape" in parameters:
        # Weibull AFT: log hazard ratio = -shape * w (the zoo's docstring).
        shape = math.exp(float(np.asarray(parameters["log_shape"], np.float64)))
        rows = [Coefficient("(intercept: log scale)", intercept, None)]
        rows += [
            Coefficient(name, value, math.exp(-shape * value)) for name, value in zip(columns, weights, strict=True)
        ]
        rows.append(Coefficient("log shape", math.log(shape), None))
        return Coefficients(tuple(rows), "hazard ratio", "accelerated-failure-time coefficients; HR = exp(-shape·w)")
    ratio = kind is LabelKind.BINARY
    rows = [Coefficient("(intercept)", intercept, None)]
    rows += [
        Coefficient(name, value, _exp(value) if ratio else None) for name, value in zip(columns, weights, strict=True)
    ]
    return Coefficients(
        tuple(rows), "odds ratio" if ratio else None, "on the features as the package preprocesses them"
    )


def _exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


def render_run_page(report: RunReport, coefficients: Coefficients | None = None) -> str:
    """The page: one chart per evaluation metric, then the sites' ε, the coefficients and the rounds."""
    series = metric_series(report.rounds)
    body = [f'<section id="charts" style="height:{CHART_HEIGHT * len(series)}px">']
    body += [render_metric_chart(name, points) for name, points in series.items()]
    body.append("</section><main>")
    if not series:
        body.append('<p class="note">No federated evaluation ran: no metric to show.</p>')
    scored = next((record for record in reversed(report.rounds) if record.score_cells), None)
    if scored is not None:
        body.append(_discrimination(scored))
    body.append(_sites(report.sites))
    counted = next((record for record in reversed(report.rounds) if record.dropped_units), None)
    if counted is not None:
        body.append(_dropped_units(counted))
    if coefficients is not None:
        body.append(_coefficients(coefficients))
    body.append(_rounds(report))
    body.append("</main>")
    stopped = report.extra.get("stopped_early")
    subtitle = (
        f"Run {report.run_id} of {report.federation} · {report.algorithm} · {report.started_at} to "
        f"{report.finished_at} · every metric is pooled from differentially private releases, shown with "
        "its noise" + (f" · stopped early: {stopped}" if stopped else "")
    )
    return render_page(f"Run report: {report.package_name}", subtitle, body, css=_CSS)


@dataclass(frozen=True)
class MetricPoint:
    round: int
    value: float
    sd: float | None


def metric_series(rounds: Sequence[RoundRecord]) -> dict[str, list[MetricPoint]]:
    """Each pooled metric's finite values by round, in order of first appearance."""
    series: dict[str, list[MetricPoint]] = {}
    for record in rounds:
        for name, value in record.metrics.items():
            if math.isfinite(value):
                sd = record.metrics_noise_sd.get(name)
                finite_sd = sd if sd is not None and math.isfinite(sd) else None
                series.setdefault(name, []).append(MetricPoint(record.round, value, finite_sd))
    return series


def render_metric_chart(name: str, points: Sequence[MetricPoint]) -> str:
    """One metric against the round: a line through the values, each with a ±1.96 SD bar."""
    low = min(p.value - Z95 * (p.sd or 0.0) for p in points)
    high = max(p.value + Z95 * (p.sd or 0.0) for p in points)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    first, last = points[0].round, points[-1].round
    span = max(last - first, 1)

    def x_of(round_: int) -> float:
        return PLOT_LEFT + (round_ - first) / span * (PLOT_RIGHT - PLOT_LEFT)

    def y_of(value: float) -> float:
        return PLOT_BOTTOM - (value - low) / (high - low) * (PLOT_BOTTOM - PLOT_TOP)

    parts = [
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" '
        f'aria-label="{escape(name)} by round, with 95% DP noise bars">',
        f'<text class="title" x="{PLOT_LEFT}" y="{PLOT_TOP - 4}">{escape(name)} (±1.96 SD of the DP noise)</text>',
    ]
    for tick in _ticks(low, high):
        y = y_of(tick)
        parts.append(f'<line class="grid" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{PLOT_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{tick:.4g}</text>')
    parts.append(f'<line class="axis" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{PLOT_BOTTOM}" y2="{PLOT_BOTTOM}"/>')
    for point in points:
        parts.append(
            f'<text x="{x_of(point.round):.1f}" y="{PLOT_BOTTOM + 16}" text-anchor="middle">{point.round}</text>'
        )
    for point in points:
        if point.sd:
            x = x_of(point.round)
            top, bottom = y_of(point.value + Z95 * point.sd), y_of(point.value - Z95 * point.sd)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{bottom:.1f}" stroke="{BAR_COLOUR}" '
                'stroke-width="3"/>'
            )
    line = " ".join(f"{x_of(p.round):.1f},{y_of(p.value):.1f}" for p in points)
    parts.append(f'<polyline points="{line}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>')
    parts += [
        f'<circle cx="{x_of(p.round):.1f}" cy="{y_of(p.value):.1f}" r="3.5" fill="{LINE_COLOUR}"/>' for p in points
    ]
    parts.append(
        f'<text x="{(PLOT_LEFT + PLOT_RIGHT) / 2:.0f}" y="{PLOT_BOTTOM + 34}" text-anchor="middle">round</text></svg>'
    )
    return "".join(parts)


def _ticks(low: float, high: float) -> list[float]:
    raw = (high - low) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step) + 1)]


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return escape(str(value))
    return f"{value:.{digits}f}"


def _sites(sites: Sequence[SiteSummary]) -> str:
    rows = []
    for site in sites:
        rows.append(
            "<tr>"
            + f"<td>{escape(site.site)}</td><td>{escape(site.status)}</td>"
            + f"<td class='num'>{site.rounds_contributed}</td>"
            + "".join(
                f"<td class='num'>{_number(v)}</td>"
                for v in (site.epsilon_spent_before, site.epsilon_added, site.epsilon_spent, site.epsilon_limit)
            )
            + f"<td class='num'>{escape(f'{site.delta:g}') if site.delta is not None else '—'}</td>"
            + f"<td>{escape(site.units_described)}</td></tr>"
        )
    return (
        "<h2>Privacy spent per site</h2><p class='note'>From each agent's own ledger (GetBudget before and after "
        "the run); the agents' audit logs remain the authority.</p><table><tr><th>site</th><th>status</th>"
        "<th>rounds</th><th>ε before</th><th>ε added</th><th>ε after</th><th>ε limit</th><th>δ</th>"
        "<th>ε protects</th></tr>" + "".join(rows) + "</table>"
    )


def _coefficients(table: Coefficients) -> str:
    ratio = f"<th>{escape(table.ratio_name)}</th>" if table.ratio_name else ""
    rows = "".join(
        f"<tr><td>{escape(row.name)}</td><td class='num'>{_number(row.value, 4)}</td>"
        + (f"<td class='num'>{_number(row.ratio, 3)}</td>" if table.ratio_name else "")
        + "</tr>"
        for row in table.rows
    )
    return (
        f"<h2>Coefficients</h2><p class='note'>The trained model's parameters, {escape(table.scale_note)}. "
        "Trained by DP-SGD: the clipping can bias them, and they carry no interval. "
        "For estimates with confidence intervals that include the privacy noise, run "
        "<code>edge-sponsor study glm</code> on an analysis plan.</p>"
        f"<table><tr><th>term</th><th>coefficient</th>{ratio}</tr>{rows}</table>"
    )


ROC_SIZE = 320
"""The ROC chart's plot square, in pixels."""


def _discrimination(record: RoundRecord) -> str:
    """The ROC curve and the calibration by risk bin of the last evaluated model, from the
    pooled noisy score histogram (a survival model's: its C-index is among the charts)."""
    histogram = ScoreHistogram.of(list(record.score_cells))
    if histogram is None or not histogram.classifier:
        return ""
    cells = histogram.array(record.score_cells)
    roc = roc_from_histogram(cells)
    figures = {name: (record.metrics.get(name), record.metrics_noise_sd.get(name)) for name in CLASSIFIER_METRICS}
    auc_value, auc_sd = figures["auc"]
    margin = 40
    side = ROC_SIZE + 2 * margin

    def point(fpr: float, tpr: float) -> str:
        return f"{margin + fpr * ROC_SIZE:.1f},{margin + (1 - tpr) * ROC_SIZE:.1f}"

    curve = " ".join(point(f, t) for f, t in zip(roc.false_positive_rate, roc.true_positive_rate, strict=True))
    label = "" if auc_value is None else f"AUC {_number(auc_value)} ± {_number(auc_sd)} (DP SD)"
    chart = (
        f'<svg class="roc" width="{side}" height="{side}" viewBox="0 0 {side} {side}" role="img" '
        f'aria-label="ROC curve of the model after round {record.round}">'
        f'<rect x="{margin}" y="{margin}" width="{ROC_SIZE}" height="{ROC_SIZE}" fill="none" stroke="#1d2430"/>'
        f'<line x1="{margin}" y1="{margin + ROC_SIZE}" x2="{margin + ROC_SIZE}" y2="{margin}" stroke="#e6e9ef"/>'
        f'<polyline points="{curve}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>'
        f'<text x="{margin}" y="{margin - 10}">{escape(label)}</text>'
        f'<text x="{margin + ROC_SIZE / 2}" y="{side - 8}" text-anchor="middle">false positive rate</text>'
        f'<text x="12" y="{margin + ROC_SIZE / 2}" transform="rotate(-90 12 {margin + ROC_SIZE / 2})" '
        'text-anchor="middle">true positive rate</text></svg>'
    )
    table = calibration(cells, sd=record.score_cell_sd)
    rows = "".join(
        f"<tr><td class='num'>{_number(predicted, 3)}</td><td class='num'>{_number(total, 1)}</td>"
        f"<td class='num'>{'withheld: too few' if math.isnan(observed) else _number(observed, 3)}</td></tr>"
        for predicted, observed, total in zip(table.predicted, table.observed, table.totals, strict=True)
    )
    calibration_value, calibration_sd = figures["calibration_points"]
    overall = (
        ""
        if calibration_value is None
        else f" Calibration-in-the-large: {_number(calibration_value, 1)} ± {_number(calibration_sd, 1)} points "
        "(observed rate minus mean predicted risk)."
    )
    return (
        f"<h2>Discrimination and calibration (after round {record.round})</h2><p class='note'>From the sites' "
        f"noisy histograms of the predicted risk, added: each cell carries Gaussian noise of SD "
        f"{_number(record.score_cell_sd, 2)} patients, negative cells count as none, and a risk bin with fewer "
        f"patients than {_number(table.min_total, 1)} (3 noise SDs) shows no observed rate.{overall}</p>"
        f"{chart}<table><tr><th>predicted risk (bin midpoint)</th><th>patients (noisy)</th>"
        f"<th>observed rate (noisy)</th></tr>{rows}</table>"
    )


def _dropped_units(record: RoundRecord) -> str:
    """The last evaluation's noisy counts of patients who lost a row to a missing value, per site
    and added up, each with the SD of its noise."""
    sd = record.dropped_units_sd
    rows = [
        f"<tr><td>{escape(site)}</td><td class='num'>{count:.0f} ±{sd:.2g}</td></tr>"
        for site, count in record.dropped_units.items()
    ]
    total, total_sd = sum(record.dropped_units.values()), sd * math.sqrt(len(record.dropped_units))
    rows.append(f"<tr><th>all sites</th><td class='num'>{total:.0f} ±{total_sd:.2g}</td></tr>")
    return (
        '<h2 id="dropped-units">Patients left out for a missing value</h2>'
        f"<p class='note'>Evaluation after round {record.round}: at each site, the patients (rows, where the "
        "dataset declares no patient column) with at least one row dropped for a missing value in a column the "
        "package reads, released with Gaussian noise (± one SD), so a count may be negative or off by a few.</p>"
        "<table><tr><th>site</th><th>patients (noisy)</th></tr>" + "".join(rows) + "</table>"
    )


def _rounds(report: RunReport) -> str:
    rows = []
    for record in report.rounds:
        missing = ", ".join(record.missing_sites) or "—"
        metrics = "; ".join(
            f"{name} {value:.4g}" + (f" ±{sd:.2g}" if (sd := record.metrics_noise_sd.get(name)) else " (noisy)")
            for name, value in record.metrics.items()
        )
        rows.append(
            f"<tr><td class='num'>{record.round}</td><td>{'yes' if record.updated else 'no (no quorum)'}</td>"
            f"<td>{escape(missing)}</td><td class='num'>{record.seconds:.1f}</td><td>{escape(metrics) or '—'}</td></tr>"
        )
    return (
        "<h2>Rounds</h2><table><tr><th>round</th><th>model updated</th><th>sites missing</th><th>seconds</th>"
        "<th>pooled metrics (± SD of the DP noise)</th></tr>" + "".join(rows) + "</table>"
    )
