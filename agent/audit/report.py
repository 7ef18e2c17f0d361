"""The compliance report: one self-contained HTML page for a period.

No scripts, no external resources: inline CSS and an inline SVG chart, so
the file can be archived, mailed and opened offline. Every value that comes
from the log is escaped — coordinators choose some of them (ids, correlation
ids, package names).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from agent.audit import events
from agent.audit.chart import PALETTE, BudgetSeries, chart_height, render_budget_chart
from agent.audit.record import AuditRecord, parse_time
from agent.audit.verify import VerificationResult

# Where the chart is drawn on the page (CSS pixels): a screenshot test looks there.
HEADER_HEIGHT_PX = 96
CHART_LEFT_PX = 32
CHART_TOP_PX = HEADER_HEIGHT_PX
__all__ = ["CHART_LEFT_PX", "CHART_TOP_PX", "PALETTE", "ReportPeriod", "budget_series", "render_html_report"]


@dataclass(frozen=True)
class ReportPeriod:
    """[start, end); None means unbounded."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def contains(self, moment: dt.datetime) -> bool:
        return (self.start is None or moment >= self.start) and (self.end is None or moment < self.end)

    def describe(self) -> str:
        start = self.start.isoformat() if self.start else "the beginning of the log"
        end = self.end.isoformat() if self.end else "now"
        return f"{start} to {end}"


def _time(record: AuditRecord) -> dt.datetime | None:
    try:
        return parse_time(record.time)
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value)
    return result if math.isfinite(result) else None


def budget_series(
    records: Iterable[AuditRecord], period: ReportPeriod, budgets: Mapping[str, float] | None = None
) -> list[BudgetSeries]:
    """Cumulative ε per dataset from task.finished entries, over the whole log up to the period's end.

    The cumulative value is the ledger's own figure (`budget_epsilon_spent`)
    when the entry carries it, otherwise the running sum of `epsilon_charged`
    (each task's share of the composed ε: the shares add up to the ledger's total).
    Limits: `budgets[dataset]` when given, else the last `budget_epsilon_limit` logged.
    """
    by_dataset: dict[str, BudgetSeries] = {}
    for record in records:
        if record.kind != events.TASK_FINISHED:
            continue
        dataset = record.get("dataset")
        moment = _time(record)
        if not isinstance(dataset, str) or moment is None:
            continue
        if period.end is not None and moment >= period.end:
            continue
        series = by_dataset.setdefault(dataset, BudgetSeries(dataset))
        group = record.get("budget_group")
        if isinstance(group, str):
            series.group = group
        limit = _number(record.get("budget_epsilon_limit"))
        if limit is not None:
            series.limit = limit
        charged = _number(record.get("epsilon_charged")) or 0.0
        ledger = _number(record.get("budget_epsilon_spent"))
        level = ledger if ledger is not None else series.final_level + charged
        if period.start is not None and moment < period.start:
            series.start_level = level
        else:
            series.points.append((moment, level))
    for dataset, limit in (budgets or {}).items():
        by_dataset.setdefault(dataset, BudgetSeries(dataset)).limit = limit
    return [by_dataset[name] for name in sorted(by_dataset)]


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2430;
background:#ffffff}
header{height:96px;overflow:hidden;padding:18px 32px 0;border-bottom:1px solid #d9dee7}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#4a5568}
#budget-chart-section{margin:0 0 0 32px;width:960px}
#budget-chart{display:block;width:960px}
#budget-chart .grid{stroke:#e6e9ef;stroke-width:1}
#budget-chart .tick,#budget-chart .axis{stroke:#1d2430;stroke-width:1}
#budget-chart text{font-size:12px;fill:#1d2430}
#budget-chart .axis-label{font-size:13px;font-weight:600}
main{padding:8px 32px 48px;max-width:1200px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dee7;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d9dee7;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f3f5f9;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-ok{color:#1b7a32;font-weight:600}
.status-bad{color:#b3261e;font-weight:600}
.empty{color:#6b7280;font-style:italic}
code{font-size:12px}
"""


def render_html_report(
    records: Iterable[AuditRecord],
    period: ReportPeriod,
    budgets: Mapping[str, float] | None = None,
    *,
    agent_id: str | None = None,
    verification: VerificationResult | None = None,
    generated_at: dt.datetime | None = None,
) -> str:
    """The report for `period`. Pass the whole log: budgets spent before the period count."""
    everything = list(records)
    generated = generated_at or dt.datetime.now(dt.UTC)
    in_period = [r for r in everything if (moment := _time(r)) is not None and period.contains(moment)]
    series = budget_series(everything, period, budgets)
    chart_start, chart_end = _chart_range(period, in_period, series, generated)

    finished = [r for r in in_period if r.kind == events.TASK_FINISHED]
    failed = [r for r in in_period if r.kind == events.TASK_FAILED]
    denials = [r for r in in_period if r.kind == events.RPC_DECISION and r.get("allowed") is False]
    package_kinds = (
        events.PACKAGE_APPROVED,
        events.PACKAGE_REJECTED_BY_REVIEWER,
        events.PACKAGE_REJECTED,
        events.PACKAGE_VERIFIED,
        events.PACKAGE_UPLOADED,
    )
    packages = [r for r in in_period if r.kind in package_kinds]
    operations = (
        events.AGENT_STARTED,
        events.AGENT_STOPPED,
        events.POLICY_LOADED,
        events.POLICY_REJECTED,
        events.CONFIG_CHANGED,
        events.AUDIT_RECOVERED,
    )
    lifecycle = [r for r in in_period if r.kind in operations]

    title = "Edge Agent audit report" + (f" — {agent_id}" if agent_id else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p>Period: {escape(period.describe())} · generated "
        f"{escape(generated.isoformat(timespec='seconds'))}</p></header>",
        f'<section id="budget-chart-section" style="height:{chart_height(len(series))}px">',
        render_budget_chart(series, chart_start, chart_end),
        "</section><main>",
        _summary(
            in_period=in_period,
            finished=finished,
            failed=failed,
            denials=denials,
            packages=packages,
            verification=verification,
        ),
        _budget_table(series),
        _data_use_table(finished),
        _tasks_table(finished, failed),
        _packages_table(packages),
        _denials_table(denials),
        _lifecycle_table(lifecycle),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _chart_range(
    period: ReportPeriod, in_period: Sequence[AuditRecord], series: Sequence[BudgetSeries], generated: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    times = [m for r in in_period if (m := _time(r)) is not None]
    times += [moment for s in series for moment, _ in s.points]
    start = period.start or (min(times) if times else generated - dt.timedelta(days=1))
    end = period.end or (max(times) if times else generated)
    return start, end


def _when(text: str) -> str:
    """Entry times shortened for tables: 2026-03-01 18:00:00Z."""
    return text[:19].replace("T", " ") + "Z" if len(text) >= 19 else text


def _e(value: Any) -> str:
    if value is None:
        return '<span class="empty">—</span>'
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, dict | list):
        return f"<code>{escape(json.dumps(value, sort_keys=True))}</code>"
    return escape(str(value))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: frozenset[int] = frozenset()) -> str:
    if not rows:
        return '<p class="empty">None in this period.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(cell)}</td>' if index in numeric else f"<td>{_e(cell)}</td>"
            for index, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(
    *,
    in_period: Sequence[AuditRecord],
    finished: Sequence[AuditRecord],
    failed: Sequence[AuditRecord],
    denials: Sequence[AuditRecord],
    packages: Sequence[AuditRecord],
    verification: VerificationResult | None,
) -> str:
    if verification is None:
        status = '<span class="empty">not verified with this report</span>'
    elif verification.ok:
        status = (
            f'<span class="status-ok">intact</span> ({verification.entries_checked} entries, last signed '
            f"checkpoint at seq {verification.last_checkpoint_seq})"
        )
    else:
        first = verification.first_break
        status = f'<span class="status-bad">NOT INTACT</span>: {escape(str(first))}'
    approved = sum(1 for r in packages if r.kind == events.PACKAGE_APPROVED)
    refused = sum(1 for r in packages if r.kind in (events.PACKAGE_REJECTED, events.PACKAGE_REJECTED_BY_REVIEWER))
    rows = [
        ("Log integrity", status),
        ("Entries in period", escape(str(len(in_period)))),
        ("Tasks finished / failed", escape(f"{len(finished)} / {len(failed)}")),
        ("Packages approved / rejected", escape(f"{approved} / {refused}")),
        ("Requests denied", escape(str(len(denials)))),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _budget_table(series: Sequence[BudgetSeries]) -> str:
    rows = []
    for item in series:
        in_period = item.final_level - item.start_level
        remaining = None if item.limit is None else item.limit - item.final_level
        rows.append((item.dataset, item.group, item.start_level, in_period, item.final_level, item.limit, remaining))
    return "<h2>Privacy budget per dataset</h2>" + _table(
        ("Dataset", "Budget group", "ε before period", "ε in period", "ε at end", "ε limit", "ε remaining"),
        rows,
        frozenset({2, 3, 4, 5, 6}),
    )


def _data_use_table(finished: Sequence[AuditRecord]) -> str:
    groups: dict[tuple[str, str, str, str], list[AuditRecord]] = defaultdict(list)
    for record in finished:
        coordinator, dataset, purpose, kind = (
            "—" if record.get(name) is None else str(record.get(name))
            for name in ("coordinator", "dataset", "purpose", "task_kind")
        )
        groups[(coordinator, dataset, purpose, kind)].append(record)
    rows = []
    for (coordinator, dataset, purpose, kind), items in sorted(groups.items()):
        epsilon = sum(_number(r.get("epsilon_charged")) or 0.0 for r in items)
        rows.append(
            (coordinator, dataset, purpose, kind, len(items), epsilon, _when(items[0].time), _when(items[-1].time))
        )
    return "<h2>Who used which data for what</h2>" + _table(
        ("Coordinator", "Dataset", "Purpose", "Task kind", "Tasks", "ε charged", "First", "Last"),
        rows,
        frozenset({4, 5}),
    )


def _tasks_table(finished: Sequence[AuditRecord], failed: Sequence[AuditRecord]) -> str:
    rows = [
        (
            _when(r.time),
            "finished" if r.kind == events.TASK_FINISHED else "failed",
            r.get("coordinator"),
            r.get("dataset"),
            r.get("package_digest"),
            r.get("task_kind"),
            r.get("epsilon_charged"),
            r.get("delta"),
            r.get("correlation_id"),
            r.get("error"),
        )
        for r in sorted([*finished, *failed], key=lambda r: r.seq)
    ]
    return "<h2>Tasks</h2>" + _table(
        ("Time", "Outcome", "Coordinator", "Dataset", "Package", "Kind", "ε", "δ", "Correlation id", "Error"),
        rows,
        frozenset({6, 7}),
    )


def _packages_table(packages: Sequence[AuditRecord]) -> str:
    rows = [
        (
            _when(r.time),
            r.kind.removeprefix("package."),
            r.get("package_name"),
            r.get("package_version"),
            r.get("package_digest"),
            r.get("reviewer") or r.get("caller") or r.get("publisher"),
            r.get("comment") or r.get("reason"),
        )
        for r in packages
    ]
    return "<h2>Packages</h2>" + _table(("Time", "Event", "Name", "Version", "Digest", "By", "Comment / reason"), rows)


def _denials_table(denials: Sequence[AuditRecord]) -> str:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in denials:
        counts[(str(r.get("rule")), str(r.get("caller")))] += 1
    by_rule = _table(("Rule", "Caller", "Denials"), [(*key, n) for key, n in sorted(counts.items())], frozenset({2}))
    rows = [
        (_when(r.time), r.get("caller"), r.get("method"), r.get("dataset"), r.get("rule"), r.get("reason"))
        for r in denials
    ]
    return (
        "<h2>Denied requests</h2>" + by_rule + _table(("Time", "Caller", "Method", "Dataset", "Rule", "Reason"), rows)
    )


def _lifecycle_table(lifecycle: Sequence[AuditRecord]) -> str:
    rows = []
    for r in lifecycle:
        details = {k: v for k, v in r.fields.items() if v is not None}
        rows.append((_when(r.time), r.kind, details))
    return "<h2>Agent, policy and log events</h2>" + _table(("Time", "Event", "Details"), rows)
