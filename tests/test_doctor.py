"""`edge-agent doctor` against real config, policy, certificates, key and dataset files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.cli.main import main
from tests.conftest import Pki, write_config

DATASET = """
[[datasets]]
id = "cohort"
path = "{path}"
format = "csv"
columns = {columns}
"""


Capture = pytest.CaptureFixture[str]


def _doctor(capsys: Capture, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # In-process through the real entry point (argument parsing, error
    # handling, exit code): all a subprocess would add is 2 s of imports.
    code = main(["doctor", "--config", str(config), *extra])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["edge-agent", "doctor"], code, out, err)


def _lines(result: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    by_check: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        status, name, detail = line.split(maxsplit=2)
        by_check.setdefault(name, []).append(f"{status} {detail}")
    return by_check


def _installation(tmp_path: Path, pki: Pki, columns: str = '["age", "outcome"]') -> Path:
    csv = tmp_path / "cohort.csv"
    csv.write_text("age,outcome,patient_id\n61,1,p1\n54,0,p2\n")
    config = write_config(tmp_path, pki, extra=DATASET.format(path=csv, columns=columns))
    (tmp_path / "state").mkdir()
    return config


def test_a_ready_installation_passes_with_one_line_per_check(tmp_path: Path, pki: Pki, capsys: Capture) -> None:
    result = _doctor(capsys, _installation(tmp_path, pki))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _lines(result)
    for name in ("config", "policy", "memory", "identity", "tls", "client-ca", "dataset", "state", "audit", "disk",
                 "clock"):
        assert name in checks, result.stdout
        assert not any(line.startswith("FAIL") for line in checks[name]), checks[name]
    assert "cohort:" in checks["dataset"][0] and "2 columns" in checks["dataset"][0]
    assert "Traceback" not in result.stderr


def test_a_task_memory_limit_below_what_a_worker_needs_to_start_fails(
    tmp_path: Path, pki: Pki, capsys: Capture
) -> None:
    # Measured by starting a real worker: with 1024 MiB every task would fail (issue 19).
    config = _installation(tmp_path, pki)
    with (tmp_path / "policy.toml").open("a") as policy:
        policy.write("\n[limits]\ntask_memory_mb = 1024\n")
    result = _doctor(capsys, config)
    assert result.returncode == 1
    memory = _lines(result)["memory"][0]
    assert memory.startswith("FAIL") and "task_memory_mb = 1024 is below the" in memory, memory


def test_failures_name_what_is_at_fault_and_exit_non_zero(tmp_path: Path, pki: Pki, capsys: Capture) -> None:
    config = _installation(tmp_path, pki, columns='["age", "stage"]')  # no column "stage" in the file
    (tmp_path / "policy.toml").write_text("[[coordinators]]\nidentity = 3\n")
    (tmp_path / "identity.key").unlink()
    result = _doctor(capsys, config)
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["config"][0].startswith("ok")
    assert checks["policy"][0].startswith("FAIL") and "policy.toml" in checks["policy"][0]
    assert checks["identity"][0].startswith("FAIL") and "identity.key" in checks["identity"][0]
    assert checks["dataset"][0].startswith("FAIL") and "stage" in checks["dataset"][0]
    assert "FAILED" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_certificates_near_expiry_warn_then_fail(tmp_path: Path, pki: Pki, capsys: Capture) -> None:
    config = _installation(tmp_path, pki)
    warned = _doctor(capsys, config, "--cert-warn-days", "100000", "--cert-fail-days", "0")
    assert warned.returncode == 0
    assert _lines(warned)["tls"][0].startswith("warn") and "renew it soon" in _lines(warned)["tls"][0]
    failed = _doctor(capsys, config, "--cert-fail-days", "100000")
    assert failed.returncode == 1
    assert _lines(failed)["tls"][0].startswith("FAIL") and "agent.crt" in _lines(failed)["tls"][0]
    assert _lines(failed)["client-ca"][0].startswith("FAIL")


def test_missing_state_directory_and_unknown_config_key_fail(tmp_path: Path, pki: Pki, capsys: Capture) -> None:
    config = write_config(tmp_path, pki)
    result = _doctor(capsys, config, "--min-free-mb", str(2**40))
    checks = _lines(result)
    assert result.returncode == 1
    assert checks["state"][0].startswith("FAIL") and "does not exist" in checks["state"][0]
    assert checks["disk"][0].startswith("FAIL")

    config.write_text(config.read_text() + "\n[agnet]\n")
    broken = _doctor(capsys, config)
    assert broken.returncode == 1
    assert _lines(broken)["config"][0].startswith("FAIL") and "agnet" in broken.stdout
