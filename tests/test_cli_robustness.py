"""Command-line robustness: --listen, --port-file, `keys generate` output paths."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.model import ListenAddressError, parse_listen_address
from tests.conftest import Pki, spawn_agent, stop_agent, write_config


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


@pytest.mark.parametrize("value", ["127.0.0.1:0", "localhost:7443", "[::1]:0", "[::]:65535", "agent.example:1"])
def test_listen_addresses_that_are_accepted(value: str) -> None:
    assert parse_listen_address(value) == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("127.0.0.1:99999", "between 0 and 65535"),
        ("::1:0", "needs brackets"),
        ("[::1:0", "[IPV6]:PORT"),
        ("[127.0.0.1]:0", "[IPV6]:PORT"),
        ("garbage", "expected HOST:PORT"),
        (":7443", "expected HOST:PORT"),
        ("host:", "numeric port"),
        ("bad host:1", "not an IPv4 address or host name"),
    ],
)
def test_listen_addresses_that_are_refused(value: str, problem: str) -> None:
    with pytest.raises(ListenAddressError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_listen_address(value)


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "::1:0", "nonsense"])
def test_a_bad_listen_flag_exits_2_naming_the_flag_and_starts_nothing(tmp_path: Path, value: str) -> None:
    """Before: 99999 silently listened on port 34463; the others failed later with a raw gRPC error."""
    state = tmp_path / "state"
    result = run_cli("serve", "--state-dir", str(state), "--listen", value, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "--listen" in result.stderr
    assert "Traceback" not in result.stderr
    assert not state.exists()


def test_a_bad_listen_key_exits_2_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, listen="127.0.0.1:99999")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert f"{config}: server.listen: port must be between 0 and 65535" in result.stderr
    assert not (tmp_path / "state").exists()


def test_the_port_file_is_removed_when_the_agent_exits(tmp_path: Path, pki: Pki) -> None:
    agent = spawn_agent(["--config", str(write_config(tmp_path, pki))], tmp_path)
    assert (tmp_path / "port").read_text().strip() == str(agent.port)
    assert stop_agent(agent) == 0
    assert not (tmp_path / "port").exists()


def test_a_stale_port_file_never_survives_a_failed_start(tmp_path: Path, pki: Pki) -> None:
    """Before: a port file from an earlier run stayed, and a script read a port nobody served."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config(tmp_path, pki, listen=f"127.0.0.1:{busy.getsockname()[1]}")
        port_file = tmp_path / "port"
        port_file.write_text("4242\n")
        result = run_cli("serve", "--config", str(config), "--port-file", str(port_file))
    assert result.returncode == 1, result.stderr
    assert not port_file.exists()


@pytest.mark.parametrize("where", ["directory", "missing-parent"])
def test_an_unusable_port_file_exits_2_naming_the_users_path(tmp_path: Path, pki: Pki, where: str) -> None:
    config = write_config(tmp_path, pki)
    if where == "directory":
        port_file = tmp_path / "port-dir"
        port_file.mkdir()
    else:
        port_file = tmp_path / "no-such-dir" / "port"
    result = run_cli("serve", "--config", str(config), "--port-file", str(port_file))
    assert result.returncode == 2, result.stderr
    assert f"--port-file {port_file}:" in result.stderr
    assert not (tmp_path / "state").exists()


def test_keys_generate_into_a_directory_names_the_users_path(tmp_path: Path) -> None:
    """Before: the error named the hidden temp file the key was being written to."""
    target = tmp_path / "keys"
    target.mkdir()
    result = run_cli("keys", "generate", "--out", str(target))
    assert result.returncode == 2, result.stderr
    assert f"{target}: is a directory" in result.stderr
    assert ".keys." not in result.stderr and "/." not in result.stderr
    assert list(target.iterdir()) == []
