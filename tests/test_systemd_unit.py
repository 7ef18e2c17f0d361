"""The shipped systemd files, checked by systemd's own tools (systemd-analyze, -sysusers, -tmpfiles)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "edge-agent.service"
# Acceptance: systemd-analyze security --offline=yes scores the unit at most this.
MAX_EXPOSURE = 2.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # Not a skip: the unit is part of the product. `make tools` installs it.
        pytest.fail(f"{name} not found: install the Debian package 'systemd' (make tools does, as root)")
    return path


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    # verify checks that ExecStart= points at an executable on this machine;
    # the installed /usr/bin/edge-agent is the venv's console script of the
    # same program, so only that path is swapped in a copy of the unit.
    console_script = Path(sys.executable).parent / "edge-agent"
    assert console_script.exists(), "run from the project's venv"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/bin/edge-agent", str(console_script)))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "/usr/bin/edge-agent serve --config /etc/edge-agent/agent.toml" in UNIT.read_text()


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def test_unit_exposure_is_at_most_two() -> None:
    score = exposure(UNIT)
    print(f"systemd-analyze security exposure of {UNIT.name}: {score}")
    assert score <= MAX_EXPOSURE


def test_unit_carries_the_required_directives() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=edge-agent",
        "StateDirectory=edge-agent",
        "LogsDirectory=edge-agent",
        "ConfigurationDirectory=edge-agent",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "MemoryMax=",
        "CPUQuota=",
        "UMask=0077",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert line in text, line


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [_tool("systemd-sysusers"), f"--root={root}", str(SYSTEMD / "edge-agent.sysusers")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("edge-agent:"))
    uid = int(entry.split(":")[2])
    assert uid < 1000  # a system user
    assert entry.endswith(":/usr/sbin/nologin")
    subprocess.run(
        [_tool("systemd-tmpfiles"), f"--root={root}", "--create", str(SYSTEMD / "edge-agent.tmpfiles")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    state = (root / "var" / "lib" / "edge-agent").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o700)
    assert ((root / "var" / "log" / "edge-agent").stat().st_mode & 0o777) == 0o750
    config = (root / "etc" / "edge-agent").stat()
    assert (config.st_uid, config.st_mode & 0o777) == (0, 0o750)
