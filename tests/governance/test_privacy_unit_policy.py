"""The shipped policy requires a privacy unit; `policy check` and `policy explain` show it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import main

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "packaging" / "policy.toml"
EXPLAIN = [
    "policy", "explain", "--policy", str(POLICY), "--coordinator", "spiffe://pharma.example/coordinator/eu-1",
    "--dataset", "oncology-2024", "--task", "dp_gradient", "--package", "acme/x", "--purpose", "oncology-research",
    "--columns", "age", "--label-columns", "event", "--cohort-size", "500", "--at", "2026-06-01T00:00:00",
]


def test_the_packaged_policy_passes_policy_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(POLICY)]) == 0
    assert "valid" in capsys.readouterr().out


def test_explain_shows_the_privacy_unit_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(EXPLAIN) == 1
    out = capsys.readouterr().out
    assert "REFUSED (precondition) by rule dataset.privacy_unit" in out
    assert "--privacy-unit COLUMN" in out
    assert main([*EXPLAIN, "--privacy-unit", "patient_id"]) == 0
    assert "ALLOWED" in capsys.readouterr().out
