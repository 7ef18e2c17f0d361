"""Queries over the log and the HTML report (content, chart, escaping)."""

from __future__ import annotations

import datetime as dt
import re
from html import escape
from pathlib import Path

import pytest
from audit_fixtures import START, XSS_CALLER, XSS_CORRELATION, XSS_DATASET, write_usage_log

from agent.audit import events, verify_log
from agent.audit.chart import PALETTE, BudgetSeries, render_budget_chart
from agent.audit.query import AuditQuery, read_records, select
from agent.audit.record import AuditRecord, parse_time
from agent.audit.report import ReportPeriod, budget_series, render_html_report
from agent.identity.agent_key import AgentKey


@pytest.fixture
def usage_dir(tmp_path: Path, agent_key: AgentKey) -> Path:
    directory = tmp_path / "audit"
    write_usage_log(directory, agent_key)
    return directory


def test_docs_show_the_vocabulary_as_the_code_defines_it() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    begin, end = (
        "<!-- generated from agent/audit/events.py: begin -->\n",
        "<!-- generated from agent/audit/events.py: end -->",
    )
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == events.markdown_tables(), (
        "docs/audit.md is out of date: replace its generated tables with agent.audit.events.markdown_tables()"
    )


def test_a_field_is_read_under_the_name_an_older_version_wrote() -> None:
    old = AuditRecord.from_entry(
        {
            "seq": 1,
            "time": "2026-03-01T08:00:00.000000Z",
            "kind": "package.uploaded",
            "prev": "0" * 64,
            "hash": "0" * 64,
            "caller": "c",
            "package": "sha256:" + "12" * 32,
            "name": "n",
            "version": "1.0",
            "size": 10,
            "status": "pending",
        }
    )
    assert events.normalised(old) | {} == {
        "coordinator": "c",
        "package_digest": "sha256:" + "12" * 32,
        "package_name": "n",
        "package_version": "1.0",
        "publisher": None,
        "signer_key_ids": None,
        "package_status": "pending",
        "size_bytes": 10,
        "policy_digest": None,
    }
    # `version` is the agent's in agent.started, never a package's.
    started = AuditRecord.from_entry(
        {"seq": 1, "time": "t", "kind": "agent.started", "prev": "", "hash": "", "version": "0.1.0"}
    )
    assert events.value(started, events.PACKAGE_VERSION) is None
    assert events.value(started, events.AGENT_VERSION) == "0.1.0"
    # 0.1's `code` was a failure in task.failed and a rule in package.refused.
    failed = AuditRecord.from_entry({"seq": 1, "time": "t", "kind": "task.failed", "prev": "", "hash": "", "code": "x"})
    assert (events.value(failed, events.FAILURE), events.value(failed, events.RULE)) == ("x", None)
    refused = AuditRecord.from_entry(
        {"seq": 1, "time": "t", "kind": "package.refused", "prev": "", "hash": "", "code": "y"}
    )
    assert (events.value(refused, events.RULE), events.value(refused, events.FAILURE)) == ("y", None)


def test_queries_filter_by_kind_coordinator_dataset_package_and_time(usage_dir: Path) -> None:
    records = list(read_records(usage_dir))

    def find(**filters: object) -> list[int]:
        return [r.seq for r in select(records, AuditQuery(**filters))]  # type: ignore[arg-type]

    assert len(find(kinds=("rpc.decision",))) == 6
    tasks = find(kinds=("task",))
    assert tasks and all(records[s - 1].kind.startswith("task.") for s in tasks)
    # denials + the tasks of days 0 and 3 (started and finished)
    assert len(find(coordinator=XSS_CALLER)) == 6 + 2 * (2 * 3 - 1)
    assert {records[s - 1].get("dataset") for s in find(dataset="labs")} == {"labs"}
    assert len(find(package="1212")) == len(find(package="sha256:" + "12" * 32)) > 1
    assert find(package="3434") == find(kinds=("package.rejected",))
    day_one = find(since=START + dt.timedelta(days=1), until=START + dt.timedelta(days=2))
    assert day_one and all(
        START + dt.timedelta(days=1) <= parse_time(records[s - 1].time) < START + dt.timedelta(days=2) for s in day_one
    )
    assert find(kinds=("rpc.decision",), dataset="labs") == []


def test_budget_series_start_where_the_period_starts(usage_dir: Path) -> None:
    records = list(read_records(usage_dir))
    whole = {s.dataset: s for s in budget_series(records, ReportPeriod())}
    assert set(whole) == {"onco", "labs", XSS_DATASET}
    assert whole["onco"].final_level == pytest.approx(6 * 0.4) and whole["onco"].limit == 3.0
    last_task = max(parse_time(r.time) for r in records if r.kind == "task.finished" and r.get("dataset") == "onco")
    later = {s.dataset: s for s in budget_series(records, ReportPeriod(start=last_task - dt.timedelta(minutes=1)))}
    assert later["onco"].start_level == pytest.approx(5 * 0.4) and len(later["onco"].points) == 1


def test_report_has_the_chart_and_the_tables(usage_dir: Path, agent_key: AgentKey) -> None:
    records = list(read_records(usage_dir))
    verification = verify_log(usage_dir, [agent_key.public_key])
    html = render_html_report(records, ReportPeriod(), agent_id="hospital-a", verification=verification)
    assert html.count('class="budget-line"') == 3
    assert html.count('class="budget-limit"') == 3
    assert '<svg id="budget-chart"' in html and 'class="legend-item"' in html
    assert html.count('class="tick-label"') >= 6
    for colour in PALETTE[:3]:
        assert f'stroke="{colour}"' in html
    for heading in ("Who used which data for what", "Packages", "Denied requests", "Privacy budget per dataset"):
        assert heading in html
    assert "survival-mlp" in html and "coordinator.unknown" in html and "intact" in html
    # Self-contained: nothing fetched, nothing executed.
    assert "<script" not in html and "<link" not in html and "<img" not in html
    assert not re.search(r"<[^>]*\s(src|href)\s*=", html)
    assert re.findall(r"https?://[^\"' <]+", html) == ["http://www.w3.org/2000/svg"]


def test_report_escapes_every_value_from_the_log(usage_dir: Path) -> None:
    html = render_html_report(list(read_records(usage_dir)), ReportPeriod())
    for hostile in (XSS_CALLER, XSS_CORRELATION, XSS_DATASET, "<i>exfil</i>", "<not>", "<ok>"):
        assert hostile not in html
    assert "&lt;script&gt;alert(&quot;caller&quot;)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert 'data-dataset="&lt;b&gt;bold&lt;/b&gt;&amp;co"' in html


def test_report_for_a_period_without_use_still_draws_the_chart(usage_dir: Path) -> None:
    period = ReportPeriod(START + dt.timedelta(days=60), START + dt.timedelta(days=90))
    html = render_html_report(list(read_records(usage_dir)), period)
    # The budget spent before the period is still shown, as flat lines.
    assert html.count('class="budget-line"') == 3
    assert "None in this period." in html
    empty = render_html_report([], ReportPeriod())
    assert "no task has spent privacy budget" in empty and 'class="budget-line"' not in empty


def test_a_run_of_a_few_minutes_gets_time_labels_in_seconds() -> None:
    start = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.UTC)
    series = [
        BudgetSeries("onco", limit=3.0, points=[(start + dt.timedelta(seconds=20 * i), 0.1 * i) for i in range(5)])
    ]
    svg = render_budget_chart(series, start, start + dt.timedelta(seconds=90))
    labels = re.findall(r'text-anchor="middle">(\d\d:\d\d:\d\d)</text>', svg)
    assert len(labels) >= 4 and labels[0] == "08:00:00"
    assert "time (UTC) on 2026-03-01" in svg
    # Over several days the ticks are dates and the axis names no single day.
    week = render_budget_chart(series, start, start + dt.timedelta(days=6))
    assert re.findall(r'text-anchor="middle">(2026-03-0\d)</text>', week) and "time (UTC)<" in week


def test_report_says_what_each_datasets_epsilon_is_counted_per(usage_dir: Path) -> None:
    html = render_html_report(list(read_records(usage_dir)), ReportPeriod())
    per_patient = "per patient (unit patient_id, at most 64 rows of each read; 1,000 to 1,999 patients)"
    per_row = "per row (5,000 to 9,999 rows): no privacy unit; a patient with k rows is protected only at about k·ε"
    budget = html[html.index("Privacy budget per dataset") : html.index("Who used which data for what")]
    assert escape(per_patient) in budget and escape(per_row) in budget
    tasks = html[html.index("<h2>Tasks</h2>") : html.index("Refused tasks and uploads")]
    # onco's 6 days of tasks, started and finished, are reported by their end entry: 6 rows each.
    assert tasks.count(escape(per_patient)) == 6 and tasks.count(escape(per_row)) == 6 + 3
