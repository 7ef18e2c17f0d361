"""The compliance report: one self-contained HTML page for a period.

No scripts, no external resources: inline CSS and an inline SVG chart, so
the file can be archived, mailed and opened offline. Every value that comes
from the log is escaped — coordinators choose some of them (ids, correlation
ids, package names).

Entries are read through the audit vocabulary (agent.audit.events): columns
are its fields, headed by their labels, and logs written by earlier versions
are read under the names they used. An entry about a task's end is completed
from the task's task.started entry (older versions wrote purpose and package
only there).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from agent.audit import events
from agent.audit.chart import PALETTE, BudgetSeries, chart_height, render_budget_chart
from agent.audit.events import Field
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


@dataclass(frozen=True)
class Entry:
    """One audit entry with its fields under the vocabulary's current names."""

    kind: str
    seq: int
    time: str
    moment: dt.datetime | None
    fields: Mapping[str, Any]

    def __getitem__(self, field: Field) -> Any:
        return self.fields.get(field.name)

    @classmethod
    def of(cls, record: AuditRecord) -> Entry:
        try:
            moment: dt.datetime | None = parse_time(record.time)
        except ValueError:
            moment = None
        return cls(record.kind, record.seq, record.time, moment, events.normalised(record))

    def naming_package(self, names: Mapping[str, tuple[Any, Any]]) -> Entry:
        """This entry, with the package's name and version from the log's uploads when it names only the digest."""
        found = names.get(self[events.PACKAGE_DIGEST])
        if found is None or self[events.PACKAGE_NAME] is not None:
            return self
        fields = {**self.fields, events.PACKAGE_NAME.name: found[0], events.PACKAGE_VERSION.name: found[1]}
        return Entry(self.kind, self.seq, self.time, self.moment, fields)

    def completed_by(self, started: Entry | None) -> Entry:
        """This entry, with the fields it lacks taken from the task's task.started entry."""
        if started is None:
            return self
        fields = dict(started.fields)
        fields.update({name: found for name, found in self.fields.items() if found is not None})
        return Entry(self.kind, self.seq, self.time, self.moment, fields)


def _number(found: Any) -> float | None:
    if isinstance(found, bool) or not isinstance(found, int | float):
        return None
    result = float(found)
    return result if math.isfinite(result) else None


def budget_series(
    records: Iterable[AuditRecord], period: ReportPeriod, budgets: Mapping[str, float] | None = None
) -> list[BudgetSeries]:
    """Cumulative ε per dataset from task.finished and charged task.failed entries, up to the period's end.

    The cumulative value is the ledger's own figure (`budget_epsilon_spent`)
    when the entry carries it, otherwise the running sum of `epsilon_charged`
    (each task's share of the composed ε: the shares add up to the ledger's total).
    Limits: `budgets[dataset]` when given, else the last `budget_epsilon_limit` logged.
    """
    return _budget_series([Entry.of(r) for r in records], period, budgets)


def _budget_series(
    entries: Sequence[Entry], period: ReportPeriod, budgets: Mapping[str, float] | None
) -> list[BudgetSeries]:
    by_dataset: dict[str, BudgetSeries] = {}
    for entry in entries:
        charged = _number(entry[events.EPSILON_CHARGED]) or 0.0
        if entry.kind != events.TaskFinished.kind and not (entry.kind == events.TaskFailed.kind and charged > 0):
            continue
        dataset = entry[events.DATASET]
        if not isinstance(dataset, str) or entry.moment is None:
            continue
        if period.end is not None and entry.moment >= period.end:
            continue
        series = by_dataset.setdefault(dataset, BudgetSeries(dataset))
        group = entry[events.BUDGET_GROUP]
        if isinstance(group, str):
            series.group = group
        limit = _number(entry[events.BUDGET_EPSILON_LIMIT])
        if limit is not None:
            series.limit = limit
        ledger = _number(entry[events.BUDGET_EPSILON_SPENT])
        level = ledger if ledger is not None else series.final_level + charged
        if period.start is not None and entry.moment < period.start:
            series.start_level = level
        else:
            series.points.append((entry.moment, level))
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
main{padding:8px 32px 48px;max-width:1800px}
h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dee7;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d9dee7;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f3f5f9;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.time{white-space:nowrap}
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
    everything = [Entry.of(r) for r in records]
    names = {
        e[events.PACKAGE_DIGEST]: (e[events.PACKAGE_NAME], e[events.PACKAGE_VERSION])
        for e in everything
        if e[events.PACKAGE_NAME] is not None and e[events.PACKAGE_DIGEST] is not None
    }
    everything = [e.naming_package(names) for e in everything]
    generated = generated_at or dt.datetime.now(dt.UTC)
    in_period = [e for e in everything if e.moment is not None and period.contains(e.moment)]
    series = _budget_series(everything, period, budgets)
    chart_start, chart_end = _chart_range(period, in_period, series, generated)

    started = {e[events.TASK_ID]: e for e in everything if e.kind == events.TaskStarted.kind}
    ends = (events.TaskFinished.kind, events.TaskFailed.kind, events.TaskRefused.kind)
    tasks = [e.completed_by(started.get(e[events.TASK_ID])) for e in in_period if e.kind in ends]
    denials = [e for e in in_period if e.kind == events.RpcDecision.kind and e[events.ALLOWED] is False]
    refusals = [e for e in in_period if e.kind in (events.TaskRefused.kind, events.PackageRefused.kind)]
    package_kinds = {
        events.PackageUploaded.kind,
        events.PackageRefused.kind,
        events.PackageApproved.kind,
        events.PackageRejected.kind,
    }
    packages = [e for e in in_period if e.kind in package_kinds]
    operations = {
        events.AgentStarted.kind,
        events.AgentStopped.kind,
        events.PolicyLoaded.kind,
        events.PolicyRejected.kind,
        events.TaskAbandoned.kind,
        events.AuditRecovered.kind,
    }
    lifecycle = [e for e in in_period if e.kind in operations]

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
        _summary(in_period, tasks, packages, denials, verification),
        _budget_table(series, _last_task_per_dataset(everything, period)),
        _data_use_table(tasks),
        _runs_table(tasks),
        _tasks_table(tasks),
        _refusals_table(refusals),
        _packages_table(packages),
        _denials_table(denials),
        _lifecycle_table(lifecycle),
        "</main></body></html>",
    ]
    return "\n".join(parts)


def _chart_range(
    period: ReportPeriod, in_period: Sequence[Entry], series: Sequence[BudgetSeries], generated: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    times = [e.moment for e in in_period if e.moment is not None]
    times += [moment for s in series for moment, _ in s.points]
    start = period.start or (min(times) if times else generated - dt.timedelta(days=1))
    end = period.end or (max(times) if times else generated)
    return start, end


def _when(text: str) -> str:
    """Entry times shortened for tables: 2026-03-01 18:00:00Z."""
    return text[:19].replace("T", " ") + "Z" if len(text) >= 19 else text


def _e(found: Any) -> str:
    if found is None:
        return '<span class="empty">—</span>'
    if isinstance(found, float):
        return escape(f"{found:.6g}")
    if isinstance(found, dict | list):
        return f"<code>{escape(json.dumps(found, sort_keys=True))}</code>"
    return escape(str(found))


@dataclass(frozen=True)
class Column:
    """A report column: its header and how to read its cell from an entry."""

    label: str
    cell: Callable[[Entry], Any]
    style: str = ""  # "num" (right-aligned, never wrapped) or "time" (never wrapped)


def field(item: Field, style: str = "") -> Column:
    """The column of one vocabulary field, headed by its label."""
    return Column(item.label, lambda entry: entry[item], style)


TIME = Column("Time", lambda entry: _when(entry.time), "time")
EVENT = Column("Event", lambda entry: entry.kind)


def _package(entry: Entry) -> str | None:
    """The package as a reader knows it: name and version, and the digest's start to tell builds apart."""
    name, version, digest = entry[events.PACKAGE_NAME], entry[events.PACKAGE_VERSION], entry[events.PACKAGE_DIGEST]
    label = " ".join(str(part) for part in (name, version) if part is not None)
    if isinstance(digest, str):
        short = digest[: len("sha256:") + 8] + "…"
        label = f"{label} ({short})" if label else short
    return label or None


def _outcome(entry: Entry) -> str:
    return entry.kind.removeprefix("task.")


def _why(entry: Entry) -> str | None:
    """Why a task failed or was refused, as recorded."""
    parts = [entry[events.FAILURE] or entry[events.OUTCOME], entry[events.RULE]]
    code = " ".join(str(part) for part in parts if part)
    reason = entry[events.REASON]
    if reason is None:
        return code or None
    return f"{code}: {reason}" if code else str(reason)


PACKAGE = Column("Package", _package)


def _table(columns: Sequence[Column], entries: Sequence[Entry]) -> str:
    return _grid([c.label for c in columns], [[(c.cell(e), c.style) for c in columns] for e in entries])


def _grid(headers: Sequence[str], rows: Sequence[Sequence[tuple[Any, str]]]) -> str:
    if not rows:
        return '<p class="empty">None in this period.</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{style}">{_e(cell)}</td>' if style else f"<td>{_e(cell)}</td>" for cell, style in row
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _summary(
    in_period: Sequence[Entry],
    tasks: Sequence[Entry],
    packages: Sequence[Entry],
    denials: Sequence[Entry],
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

    def count(items: Sequence[Entry], kind: str) -> int:
        return sum(1 for e in items if e.kind == kind)

    rows = [
        ("Log integrity", status),
        ("Entries in period", escape(str(len(in_period)))),
        (
            "Tasks finished / failed / refused",
            escape(
                f"{count(tasks, events.TaskFinished.kind)} / {count(tasks, events.TaskFailed.kind)} / "
                f"{count(tasks, events.TaskRefused.kind)}"
            ),
        ),
        (
            "Packages uploaded / refused at upload",
            escape(f"{count(packages, events.PackageUploaded.kind)} / {count(packages, events.PackageRefused.kind)}"),
        ),
        (
            "Packages approved / rejected by reviewers",
            escape(f"{count(packages, events.PackageApproved.kind)} / {count(packages, events.PackageRejected.kind)}"),
        ),
        ("Requests denied by policy", escape(str(len(denials)))),
    ]
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<h2>Summary</h2><table>{body}</table>"


def _bucket(found: Any) -> str | None:
    """A logged [lower, upper) count bucket in words; None when the entry has none."""
    if not isinstance(found, list | tuple) or len(found) != 2 or not all(_number(n) is not None for n in found):
        return None
    lower, upper = (int(n) for n in found)
    return f"{lower:,} to {upper - 1:,}" if lower else f"fewer than {upper:,}"


def protects(entry: Entry) -> str | None:
    """What one unit of the task's ε protects, in words; None for entries about no admitted task."""
    if entry.kind not in (events.TaskStarted.kind, events.TaskFinished.kind, events.TaskFailed.kind):
        return None
    unit, bucket = entry[events.PRIVACY_UNIT], _bucket(entry[events.UNIT_COUNT])
    if isinstance(unit, str):
        rows = entry[events.MAX_ROWS_PER_UNIT]
        cap = f", at most {rows} rows of each read" if isinstance(rows, int) else ""
        count = f"; {bucket} patients" if bucket else ""
        return f"per patient (unit {unit}{cap}{count})"
    # No unit declared, or a log from before units existed (then every task was accounted per row).
    count = f" ({bucket} rows)" if bucket else ""
    return f"per row{count}: no privacy unit; a patient with k rows is protected only at about k·ε"


def _last_task_per_dataset(entries: Sequence[Entry], period: ReportPeriod) -> Mapping[str, Entry]:
    """Per dataset, its last admitted task up to the period's end: what its ε is counted per."""
    last: dict[str, Entry] = {}
    for entry in entries:
        dataset = entry[events.DATASET]
        if protects(entry) is None or not isinstance(dataset, str) or entry.moment is None:
            continue
        if period.end is None or entry.moment < period.end:
            last[dataset] = entry
    return last


def _budget_table(series: Sequence[BudgetSeries], last_task: Mapping[str, Entry]) -> str:
    rows = []
    for item in series:
        in_period = item.final_level - item.start_level
        remaining = None if item.limit is None else item.limit - item.final_level
        numbers = (item.start_level, in_period, item.final_level, item.limit, remaining)
        task = last_task.get(item.dataset)
        unit = None if task is None else protects(task)
        rows.append([(item.dataset, ""), (item.group, ""), *((n, "num") for n in numbers), (unit, "")])
    note = (
        "<p>ε is counted per privacy unit. Where a dataset declares one (a patient id), ε bounds what the "
        "results can reveal about a whole patient, all of their rows together. Where it declares none, each "
        "row is its own unit: ε is per row, and a patient with k rows is protected only at about k·ε.</p>"
    )
    return (
        "<h2>Privacy budget per dataset</h2>"
        + note
        + _grid(
            (
                "Dataset",
                "Budget group",
                "ε before period",
                "ε in period",
                "ε at end",
                "ε limit",
                "ε remaining",
                "ε is counted",
            ),
            rows,
        )
    )


def _charged(entries: Iterable[Entry]) -> float:
    return sum(_number(e[events.EPSILON_CHARGED]) or 0.0 for e in entries)


def _data_use_table(tasks: Sequence[Entry]) -> str:
    keys = (events.COORDINATOR, events.DATASET, events.PURPOSE, events.TASK_KIND)
    groups: dict[tuple[str, ...], list[Entry]] = defaultdict(list)
    for entry in tasks:
        if entry.kind != events.TaskRefused.kind:
            groups[tuple("—" if entry[k] is None else str(entry[k]) for k in keys)].append(entry)
    rows = [
        [
            *((part, "") for part in key),
            (len(items), "num"),
            (_charged(items), "num"),
            (_when(items[0].time), "time"),
            (_when(items[-1].time), "time"),
        ]
        for key, items in sorted(groups.items())
    ]
    return "<h2>Who used which data for what</h2>" + _grid(
        (*(k.label for k in keys), "Tasks", "ε charged", "First", "Last"), rows
    )


def _runs_table(tasks: Sequence[Entry]) -> str:
    runs: dict[tuple[str, str], list[Entry]] = defaultdict(list)
    for entry in tasks:
        run = entry[events.RUN_ID]
        if run is not None:
            runs[(str(entry[events.COORDINATOR]), str(run))].append(entry)
    rows = []
    for (coordinator, run), items in sorted(runs.items(), key=lambda pair: pair[1][0].seq):
        first = items[0]
        rounds = {e[events.ROUND] for e in items if e[events.ROUND] is not None}
        kinds = sorted({str(e[events.TASK_KIND]) for e in items if e[events.TASK_KIND] is not None})
        outcomes = [
            sum(1 for e in items if e.kind == kind)
            for kind in (events.TaskFinished.kind, events.TaskFailed.kind, events.TaskRefused.kind)
        ]
        rows.append(
            [
                (run, ""),
                (coordinator, ""),
                (first[events.DATASET], ""),
                (_package(first), ""),
                (first[events.PURPOSE], ""),
                (", ".join(kinds), ""),
                (len(rounds), "num"),
                (" / ".join(str(n) for n in outcomes), "num"),
                (_charged(items), "num"),
                (_when(first.time), "time"),
                (_when(items[-1].time), "time"),
            ]
        )
    headers = (
        events.RUN_ID.label,
        events.COORDINATOR.label,
        events.DATASET.label,
        PACKAGE.label,
        events.PURPOSE.label,
        "Kinds",
        "Rounds",
        "Finished / failed / refused",
        "ε charged",
        "First",
        "Last",
    )
    return "<h2>Runs</h2>" + _grid(headers, rows)


def _tasks_table(tasks: Sequence[Entry]) -> str:
    columns = (
        TIME,
        Column("Outcome", _outcome),
        field(events.COORDINATOR),
        field(events.DATASET),
        PACKAGE,
        field(events.TASK_KIND),
        field(events.PURPOSE),
        field(events.RUN_ID),
        field(events.ROUND, "num"),
        field(events.EPSILON_CHARGED, "num"),
        Column("ε is counted", protects),
        field(events.DELTA, "num"),
        field(events.CORRELATION_ID),
        Column("Error / reason", _why),
    )
    return "<h2>Tasks</h2>" + _table(columns, sorted(tasks, key=lambda e: e.seq))


def _refusals_table(refusals: Sequence[Entry]) -> str:
    columns = (
        TIME,
        Column("What", lambda e: "package upload" if e.kind == events.PackageRefused.kind else "task"),
        field(events.COORDINATOR),
        field(events.DATASET),
        PACKAGE,
        field(events.OUTCOME),
        field(events.RULE),
        field(events.REASON),
    )
    return "<h2>Refused tasks and uploads</h2>" + _table(columns, refusals)


def _packages_table(packages: Sequence[Entry]) -> str:
    columns = (
        TIME,
        Column("Event", lambda e: e.kind.removeprefix("package.")),
        field(events.PACKAGE_NAME),
        field(events.PACKAGE_VERSION),
        field(events.PACKAGE_DIGEST),
        Column("By", lambda e: e[events.REVIEWER] or e[events.COORDINATOR]),
        Column("Status / reason", lambda e: e[events.PACKAGE_STATUS] or e[events.REASON]),
    )
    return "<h2>Packages</h2>" + _table(columns, packages)


def _denials_table(denials: Sequence[Entry]) -> str:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for entry in denials:
        counts[(str(entry[events.RULE]), str(entry[events.COORDINATOR]))] += 1
    by_rule = _grid(
        (events.RULE.label, events.COORDINATOR.label, "Denials"),
        [[(rule, ""), (who, ""), (n, "num")] for (rule, who), n in sorted(counts.items())],
    )
    columns = (
        TIME,
        field(events.COORDINATOR),
        field(events.METHOD),
        field(events.DATASET),
        PACKAGE,
        field(events.RULE),
        field(events.REASON),
    )
    return "<h2>Denied requests</h2>" + by_rule + _table(columns, denials)


def _lifecycle_table(lifecycle: Sequence[Entry]) -> str:
    columns = (
        TIME,
        EVENT,
        Column("Details", lambda e: {k: v for k, v in e.fields.items() if v is not None}),
    )
    return "<h2>Agent, policy and log events</h2>" + _table(columns, lifecycle)
