"""The privacy-budget chart: cumulative ε per dataset over time, as inline SVG.

Drawn by hand (no JavaScript, no fonts or scripts fetched): one step line
per dataset, a dashed line at its limit in the same colour, axes with ticks
and labels, and a legend under the plot. The plot area has a fixed size so
that screenshots can be checked at known coordinates.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH = 960
PLOT_LEFT = 72
PLOT_TOP = 24
PLOT_RIGHT = 940
PLOT_BOTTOM = 320
LEGEND_TOP = 376
LEGEND_ROW = 24
LEGEND_COLUMNS = 2
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")

# A demo or a short study runs for minutes: its axis needs ticks in seconds.
_TIME_STEPS = (
    [dt.timedelta(seconds=s) for s in (1, 5, 10, 15, 30)]
    + [dt.timedelta(minutes=m) for m in (1, 5, 10, 15, 30)]
    + [dt.timedelta(hours=h) for h in (1, 2, 3, 6, 12)]
    + [dt.timedelta(days=d) for d in (1, 2, 7, 14, 30, 61, 91, 182, 365, 730, 1461, 3652)]
)


@dataclass
class BudgetSeries:
    dataset: str
    group: str | None = None
    limit: float | None = None
    # Spent before the period starts (the line starts there).
    start_level: float = 0.0
    # (time, cumulative ε after this task), in time order, within the period.
    points: list[tuple[dt.datetime, float]] = field(default_factory=list)

    @property
    def final_level(self) -> float:
        return self.points[-1][1] if self.points else self.start_level


def chart_height(series_count: int) -> int:
    rows = max(1, math.ceil(series_count / LEGEND_COLUMNS))
    return LEGEND_TOP + rows * LEGEND_ROW + 8


def render_budget_chart(series: Sequence[BudgetSeries], start: dt.datetime, end: dt.datetime) -> str:
    """The <svg id="budget-chart"> element."""
    if end <= start:
        start, end = start - dt.timedelta(hours=1), start + dt.timedelta(hours=1)
    top_value = max([0.0] + [s.limit or 0.0 for s in series] + [max(s.start_level, s.final_level) for s in series])
    y_step = _nice_step((top_value or 1.0) * 1.1 / 5)
    y_max = y_step * math.ceil((top_value or 1.0) * 1.1 / y_step)

    def x_of(moment: dt.datetime) -> float:
        fraction = (moment - start) / (end - start)
        return PLOT_LEFT + min(max(fraction, 0.0), 1.0) * (PLOT_RIGHT - PLOT_LEFT)

    def y_of(value: float) -> float:
        return PLOT_BOTTOM - min(max(value / y_max, 0.0), 1.05) * (PLOT_BOTTOM - PLOT_TOP)

    height = chart_height(len(series))
    out: list[str] = [
        f'<svg id="budget-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="budget-chart-title">',
        '<title id="budget-chart-title">Privacy budget spent over time per dataset (cumulative ε)</title>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    # Y axis: grid lines, ticks and labels.
    value = 0.0
    while value <= y_max + y_step / 1000:
        y = y_of(value)
        out.append(f'<line class="grid" x1="{PLOT_LEFT}" y1="{y:.1f}" x2="{PLOT_RIGHT}" y2="{y:.1f}"/>')
        out.append(f'<line class="tick" x1="{PLOT_LEFT - 5}" y1="{y:.1f}" x2="{PLOT_LEFT}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick-label" x="{PLOT_LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{_number(value)}</text>'
        )
        value += y_step
    # X axis: time ticks.
    time_step = next((s for s in _TIME_STEPS if (end - start) / s <= 8), _TIME_STEPS[-1])
    tick = _first_tick(start, time_step)
    label_format = _tick_format(start, end, time_step)
    while tick <= end:
        x = x_of(tick)
        out.append(f'<line class="tick" x1="{x:.1f}" y1="{PLOT_BOTTOM}" x2="{x:.1f}" y2="{PLOT_BOTTOM + 5}"/>')
        out.append(
            f'<text class="tick-label" x="{x:.1f}" y="{PLOT_BOTTOM + 20}" text-anchor="middle">'
            f"{escape(tick.strftime(label_format))}</text>"
        )
        tick += time_step
    out.append(
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_TOP}" x2="{PLOT_LEFT}" y2="{PLOT_BOTTOM}"/>'
        f'<line class="axis" x1="{PLOT_LEFT}" y1="{PLOT_BOTTOM}" x2="{PLOT_RIGHT}" y2="{PLOT_BOTTOM}"/>'
        f'<text class="axis-label" x="{(PLOT_LEFT + PLOT_RIGHT) / 2:.0f}" y="{PLOT_BOTTOM + 40}" '
        f'text-anchor="middle">{escape(_axis_label(start, end, time_step))}</text>'
        f'<text class="axis-label" transform="translate(18 {(PLOT_TOP + PLOT_BOTTOM) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">cumulative ε spent</text>'
    )
    # Limits first (dashed), then the step lines over them.
    for index, item in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        if item.limit is not None:
            y = y_of(item.limit)
            out.append(
                f'<line class="budget-limit" data-dataset="{escape(item.dataset)}" x1="{PLOT_LEFT}" y1="{y:.1f}" '
                f'x2="{PLOT_RIGHT}" y2="{y:.1f}" stroke="{colour}" stroke-width="2" stroke-dasharray="10 6"/>'
            )
    for index, item in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        path = [f"M{PLOT_LEFT} {y_of(item.start_level):.1f}"]
        for moment, level in item.points:
            path.append(f"H{x_of(moment):.1f} V{y_of(level):.1f}")
        path.append(f"H{PLOT_RIGHT}")
        out.append(
            f'<path class="budget-line" data-dataset="{escape(item.dataset)}" d="{" ".join(path)}" fill="none" '
            f'stroke="{colour}" stroke-width="3" shape-rendering="crispEdges">'
            f"<title>{escape(item.dataset)}: ε {_number(item.final_level)} spent</title></path>"
        )
    # Legend.
    for index, item in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        column, row = index % LEGEND_COLUMNS, index // LEGEND_COLUMNS
        x = PLOT_LEFT + column * 440
        y = LEGEND_TOP + row * LEGEND_ROW
        limit = f"limit {_number(item.limit)}" if item.limit is not None else "limit not recorded"
        group = f" (budget group {item.group})" if item.group and item.group != item.dataset else ""
        out.append(
            f'<g class="legend-item"><line x1="{x}" y1="{y}" x2="{x + 28}" y2="{y}" stroke="{colour}" '
            f'stroke-width="3"/><line x1="{x + 32}" y1="{y}" x2="{x + 52}" y2="{y}" stroke="{colour}" '
            f'stroke-width="2" stroke-dasharray="6 4"/><text x="{x + 60}" y="{y + 4}">'
            f"{escape(item.dataset)}{escape(group)}: ε {_number(item.final_level)} spent, {limit}</text></g>"
        )
    if not series:
        out.append(
            f'<text x="{(PLOT_LEFT + PLOT_RIGHT) / 2:.0f}" y="{(PLOT_TOP + PLOT_BOTTOM) / 2:.0f}" '
            'text-anchor="middle">no task has spent privacy budget up to the end of this period</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _tick_format(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> str:
    """Tick labels as precise as the step, without repeating a date the whole axis shares."""
    if step >= dt.timedelta(days=1):
        return "%Y-%m-%d"
    same_day = start.date() == end.date()
    if step >= dt.timedelta(minutes=1):
        return "%H:%M" if same_day else "%m-%d %H:%M"
    return "%H:%M:%S" if same_day else "%m-%d %H:%M:%S"


def _axis_label(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> str:
    """The time axis's title; it carries the date when the ticks show only times of one day."""
    if step < dt.timedelta(days=1) and start.date() == end.date():
        return f"time (UTC) on {start.date().isoformat()}"
    return "time (UTC)"


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    base = 10.0**exponent
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= multiple * base:
            return multiple * base
    return 10.0 * base


def _first_tick(start: dt.datetime, step: dt.timedelta) -> dt.datetime:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    steps = math.ceil((start - epoch) / step)
    return epoch + steps * step


def _number(value: float) -> str:
    return f"{value:.4g}"
