"""The compliance officer's view of a real run: the report and `audit show` on logs the daemon wrote.

Two logs: the one the agents write now in tests/audit/federated_scenario.py
(a federated training as processes, a refused upload, a denied task, an
abandoned task, a reviewer's rejection and a refused task), and the one
version 0.1 wrote for the same scenario (tests/fixtures/audit-v0.1). Nothing
here comes from fixtures written by hand: expectations are read from the
log files themselves.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from federated_scenario import RUN_ID, Scenario, run_scenario

from agent.audit import events
from agent.audit.query import read_records
from agent.audit.record import AuditRecord
from agent.cli.main import main
from agent.identity.development_pki import DEV_COORDINATOR_URI

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "audit-v0.1"
EMPTY = "—"
# Everything the scenario makes the agent write.
SCENARIO_KINDS = {
    "agent.started",
    "policy.loaded",
    "rpc.decision",
    "package.uploaded",
    "package.refused",
    "package.rejected",
    "task.started",
    "task.finished",
    "task.failed",
    "task.refused",
    "agent.stopped",
    "audit.checkpoint",
}


@dataclass(frozen=True)
class Log:
    directory: Path
    public_key: Path
    package_digest: str
    # Whether the agent that wrote it knew privacy units (0.1 did not: every task was accounted per row).
    units_known: bool


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return run_scenario(tmp_path_factory.mktemp("scenario"))


@pytest.fixture(scope="module", params=["written now", "written by 0.1"])
def log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Log:
    if request.param == "written now":
        scenario: Scenario = request.getfixturevalue("scenario")
        hospital = scenario.hospital
        return Log(hospital / "state" / "audit", hospital / "identity.key.pub", scenario.package_digest, True)
    # A copy: verifying takes a lock file in the directory.
    copy = tmp_path_factory.mktemp("v0.1")
    shutil.copytree(FIXTURE, copy, dirs_exist_ok=True)
    uploaded = [r for r in read_records(copy / "audit") if r.kind == "package.uploaded"]
    return Log(copy / "audit", copy / "agent.pub", str(uploaded[0].get("package")), False)


def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120, check=False
    )


def raw_entries(log: Log) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(log.directory.glob("audit-*.jsonl")) for line in path.open()]


def test_every_kind_written_is_in_the_vocabulary(log: Log) -> None:
    written = {entry["kind"] for entry in raw_entries(log)}
    assert written == SCENARIO_KINDS
    assert written <= events.KINDS


def test_the_daemon_writes_every_field_its_kind_defines_and_no_other(scenario: Scenario) -> None:
    log = scenario.hospital / "state" / "audit"
    for record in read_records(log):
        # (Stored in sorted order: the line layout is fixed.)
        assert sorted(record.fields) == sorted(field.name for field in events.SCHEMA[record.kind]), record.kind


class _Tables(HTMLParser):
    """Each <h2> heading's tables, as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[list[str]]]] = {}
        self._heading: str | None = None
        self._text: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "td", "th"):
            self._text = []
        elif tag == "table" and self._heading is not None:
            self.sections[self._heading].append([])
        elif tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._text is not None:
            self._heading = "".join(self._text)
            self.sections[self._heading] = []
        elif tag in ("td", "th") and self._text is not None and self._row is not None:
            self._row.append("".join(self._text).strip())
        elif tag == "tr" and self._row is not None and self._heading is not None:
            self.sections[self._heading][-1].append(self._row)
        if tag in ("h2", "td", "th"):
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


@pytest.fixture(scope="module")
def tables(log: Log, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    return report(log, tmp_path_factory.mktemp("report"))


def report(log: Log, tmp_path: Path) -> dict[str, list[dict[str, str]]]:
    """The report `edge-agent audit report` writes, as each section's last table: rows by column header."""
    html = tmp_path / "report.html"
    done = edge_agent(
        "audit", "report", "--dir", str(log.directory), "--public-key", str(log.public_key), "--html", str(html)
    )
    assert done.returncode == 0, done.stderr
    assert "(log intact)" in done.stdout
    parser = _Tables()
    parser.feed(html.read_text())
    tables = {}
    for heading, found in parser.sections.items():
        if found and found[-1]:
            header, *rows = found[-1]
            tables[heading] = [dict(zip(header, row, strict=True)) for row in rows]
    return tables


def completed_task_ends(log: Log) -> list[AuditRecord]:
    """task.finished/failed/refused entries, in log order, with what their task.started entry says."""
    records = list(read_records(log.directory))
    started = {r.get("task_id"): r for r in records if r.kind == "task.started"}
    ends = []
    for record in records:
        if record.kind in ("task.finished", "task.failed", "task.refused"):
            first = started.get(record.get("task_id"))
            fields = {**(first.fields if first else {}), **{k: v for k, v in record.fields.items() if v is not None}}
            ends.append(AuditRecord(record.seq, record.time, record.kind, fields, record.prev, record.hash))
    return ends


def check_row(row: dict[str, str], record: AuditRecord) -> None:
    """Every column named after a vocabulary field shows a value exactly where the log has one."""
    for field in events.SCHEMA[record.kind]:
        if field.label in row:
            found = events.value(record, field)
            assert (row[field.label] != EMPTY) == (found is not None), (record.kind, field.name, row)


def test_the_report_shows_every_task_value_the_log_has(log: Log, tables: dict[str, list[dict[str, str]]]) -> None:
    rows = tables["Tasks"]
    ends = completed_task_ends(log)
    assert [row["Outcome"] for row in rows] == [end.kind.removeprefix("task.") for end in ends]
    assert {"finished", "failed", "refused"} <= {row["Outcome"] for row in rows}
    for row, end in zip(rows, ends, strict=True):
        check_row(row, end)
        assert row["Package"].startswith("edge-agent-demo/breast-cancer-malignancy 1.0.0 (sha256:"), row
        assert row["Coordinator"] == DEV_COORDINATOR_URI
        # 0.1 wrote no purpose for a task refused before admission; every admitted task has one.
        assert row["Purpose"] != EMPTY or end.get("task_id") is None
        if end.kind != "task.finished":
            assert row["Error / reason"] != EMPTY, row
    use = tables["Who used which data for what"]
    assert all(EMPTY not in row.values() for row in use), use
    (run,) = tables["Runs"]
    assert run["Run"] == RUN_ID and int(run["Rounds"]) >= 3 and run["Package"] != EMPTY


def test_the_report_says_what_epsilon_protects(log: Log, tables: dict[str, list[dict[str, str]]]) -> None:
    """Per patient where the dataset declares its patient column (the demo's hospitals now do); per row, with
    the k·ε warning, for the tasks of an agent that did not know units."""
    per_patient = re.compile(
        r"^per patient \(unit patient_id, at most 64 rows of each read; [0-9,]+ to [0-9,]+ patients\)$"
    )
    per_row = "per row: no privacy unit; a patient with k rows is protected only at about k·ε"
    admitted = [row for row in tables["Tasks"] if row["Outcome"] != "refused"]
    assert admitted
    for row in admitted:
        if log.units_known:
            assert per_patient.match(row["ε is counted"]), row
        else:
            assert row["ε is counted"] == per_row, row
    # Refused tasks were never admitted: nothing was counted for them.
    assert all(row["ε is counted"] == EMPTY for row in tables["Tasks"] if row["Outcome"] == "refused")
    (budget,) = tables["Privacy budget per dataset"]
    assert budget["Dataset"] == "breast-cancer"
    assert per_patient.match(budget["ε is counted"]) if log.units_known else budget["ε is counted"] == per_row


def test_the_report_shows_every_package_event_and_refusal(log: Log, tables: dict[str, list[dict[str, str]]]) -> None:
    packages = tables["Packages"]
    records = [r for r in read_records(log.directory) if r.kind.startswith("package.")]
    assert [row["Event"] for row in packages] == [r.kind.removeprefix("package.") for r in records]
    for row, record in zip(packages, records, strict=True):
        check_row(row, record)
        if record.kind != "package.refused":
            assert row["Package digest"] == log.package_digest and row["Version"] == "1.0.0", row
        assert row["By"] != EMPTY and row["Status / reason"] != EMPTY, row
    refused = tables["Refused tasks and uploads"]
    assert sorted(row["What"] for row in refused) == ["package upload", "task"]
    assert all(row["Reason"] != EMPTY and row["Coordinator"] != EMPTY for row in refused), refused
    (denied,) = tables["Denied requests"]
    assert denied["Rule"] == "dataset.purpose_not_allowed" and denied["Coordinator"] == DEV_COORDINATOR_URI


def shown(log: Log, *filters: str) -> list[int]:
    """`edge-agent audit show --json` with these filters, run in this process (the report runs as a command)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["audit", "show", "--dir", str(log.directory), "--json", *filters])
    assert code == 0
    return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]


def test_audit_show_finds_every_entry_about_a_package_coordinator_dataset_and_run(log: Log) -> None:
    entries = raw_entries(log)

    def seqs(*names: str, wanted: str) -> list[int]:
        # Read straight from the files, under every name either version wrote.
        return [e["seq"] for e in entries if any(e.get(name) == wanted for name in names)]

    digest = log.package_digest
    about_package = seqs("package_digest", "package", wanted=digest)
    assert len(about_package) > 10
    assert shown(log, "--package", digest.removeprefix("sha256:")[:12]) == about_package
    assert shown(log, "--package", digest) == about_package
    assert shown(log, "--coordinator", DEV_COORDINATOR_URI) == seqs("coordinator", "caller", wanted=DEV_COORDINATOR_URI)
    assert shown(log, "--dataset", "breast-cancer") == seqs("dataset", wanted="breast-cancer")
    on_run = shown(log, "--run", RUN_ID)
    assert on_run == seqs("run_id", wanted=RUN_ID) and len(on_run) >= 5


def test_audit_show_names_an_unknown_kind() -> None:
    done = edge_agent("audit", "show", "--dir", str(FIXTURE / "audit"), "--kind", "package.verified")
    assert done.returncode == 2
    assert "unknown event kind 'package.verified'" in done.stderr and "package.refused" in done.stderr
