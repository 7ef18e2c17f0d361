"""`edge-agent audit verify|show|report` through argparse, with real keys and files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from audit_fixtures import XSS_CALLER, log_lines, write_lines, write_usage_log

from agent.cli import audit as audit_cli
from agent.identity.agent_key import AgentKey, generate_key_file, public_key_path


def run(argv: list[str]) -> int:
    """What agent/cli/main.py does once it registers the module and its error tuples."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    audit_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except audit_cli.USAGE_ERRORS:
        return 2
    except audit_cli.FAILURE_ERRORS:
        return 1


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, AgentKey]:
    """A development state dir: the identity key where the config expects it, and a log."""
    state_dir = tmp_path / "state"
    key = generate_key_file(state_dir / "agent-identity.key")
    write_usage_log(state_dir / "audit", key)
    return state_dir, key


def test_verify_uses_the_configured_directory_and_identity_key(
    state: tuple[Path, AgentKey], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, _ = state
    assert run(["audit", "verify", "--state-dir", str(state_dir)]) == 0
    assert "intact" in capsys.readouterr().out
    # Without the .pub, the private key's public half.
    public_key_path(state_dir / "agent-identity.key").unlink()
    assert run(["audit", "verify", "--state-dir", str(state_dir)]) == 0


def test_verify_reports_where_it_breaks_and_exits_1(
    state: tuple[Path, AgentKey], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, _ = state
    path = state_dir / "audit" / "audit-000001.jsonl"
    lines = log_lines(path)
    del lines[4]
    write_lines(path, lines)
    pub = public_key_path(state_dir / "agent-identity.key")
    assert run(["audit", "verify", "--dir", str(state_dir / "audit"), "--public-key", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "NOT INTACT" in out and "first break: audit-000001.jsonl:5 (seq 6)" in out


def test_verify_input_errors_exit_2(state: tuple[Path, AgentKey], tmp_path: Path, other_key: AgentKey) -> None:
    state_dir, _ = state
    assert run(["audit", "verify", "--dir", str(tmp_path / "missing"), "--public-key", "x"]) == 2
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert run(["audit", "verify", "--dir", str(state_dir / "audit"), "--public-key", str(bad)]) == 2
    other = tmp_path / "other.key"
    generate_key_file(other)
    # A well-formed but different key: the log is not intact for it.
    assert run(["audit", "verify", "--dir", str(state_dir / "audit"), "--public-key", str(other)]) == 1
    with pytest.raises(SystemExit) as exit_info:
        run(["audit", "show", "--dir", str(state_dir / "audit"), "--since", "yesterday"])
    assert exit_info.value.code == 2


def test_show_filters_and_prints_a_table_or_json(
    state: tuple[Path, AgentKey], capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, _ = state
    audit_dir = str(state_dir / "audit")
    assert run(["audit", "show", "--dir", audit_dir, "--kind", "rpc.decision", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(entries) == 6 and all(e["kind"] == "rpc.decision" and "hash" in e for e in entries)

    assert run(["audit", "show", "--dir", audit_dir, "--dataset", "labs", "--kind", "task", "--last", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SEQ", "TIME", "(UTC)"] and len(table) == 3
    assert all("labs" in line for line in table[1:])

    assert run(["audit", "show", "--dir", audit_dir, "--coordinator", XSS_CALLER, "--until", "2026-03-01"]) == 0
    out = capsys.readouterr().out
    assert XSS_CALLER in out and "2026-03-02" not in out

    assert (
        run(["audit", "show", "--dir", audit_dir, "--since", "2026-03-02T00:00:00+00:00", "--until", "2026-03-02"]) == 0
    )
    days = {line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    assert days == {"2026-03-02"}


def test_show_neutralises_terminal_escapes(
    tmp_path: Path, agent_key: AgentKey, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.audit import AuditLog

    with AuditLog.open(tmp_path / "audit", agent_key) as log:
        log.append("rpc.decision", caller="evil\x1b[2J\x1b]0;pwned\x07", allowed=False)
    assert run(["audit", "show", "--dir", str(tmp_path / "audit")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out


def test_report_writes_a_self_contained_page(
    state: tuple[Path, AgentKey], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state_dir, _ = state
    out = tmp_path / "report.html"
    argv = ["audit", "report", "--state-dir", str(state_dir), "--html", str(out), "--since", "2026-03-02"]
    assert run(argv) == 0
    html = out.read_text()
    assert "dev-agent" in html and 'id="budget-chart"' in html and ">intact<" in html
    assert "Period: 2026-03-02T00:00:00+00:00 to now" in html
    assert "report written" in capsys.readouterr().out
