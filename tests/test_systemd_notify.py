"""sd_notify over a real AF_UNIX datagram socket: the module alone, then a real `edge-agent serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.server.systemd_notify import NotifySocketError, SystemdNotifier, WatchdogPacer
from tests.conftest import Pki, write_config


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, path
    finally:
        sock.close()


def _receive(sock: socket.socket, timeout: float) -> list[str] | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode().split("\n")
    except TimeoutError:
        return None


def _receive_until(sock: socket.socket, wanted: str, timeout: float) -> list[list[str]]:
    """Every message up to and including the first with the line `wanted`."""
    messages: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = _receive(sock, max(deadline - time.monotonic(), 0.01))
        if message is None:
            break
        messages.append(message)
        if wanted in message:
            return messages
    raise AssertionError(f"no {wanted} within {timeout} s; got {messages}")


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_values({}, pid=1234)
    assert notifier.address is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_messages_arrive_as_one_datagram_each(notify_socket: tuple[socket.socket, Path]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier.from_values({"NOTIFY_SOCKET": str(path)}, pid=os.getpid())
    assert notifier.ready("serving on port 7443")
    message = _receive(sock, 2)
    assert message is not None
    assert message[:2] == ["READY=1", "STATUS=serving on port 7443"]
    assert notifier.status("two\nlines")  # a newline would start a new assignment
    assert _receive(sock, 2) == ["STATUS=two lines"]
    assert notifier.stopping("draining")
    assert _receive(sock, 2) == ["STOPPING=1", "STATUS=draining"]


def test_abstract_socket_names_are_understood() -> None:
    name = f"edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        notifier = SystemdNotifier.from_values({"NOTIFY_SOCKET": "@" + name}, pid=os.getpid())
        assert notifier.status("hello")
        assert _receive(sock, 2) == ["STATUS=hello"]


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_values({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, pid=1)
    assert notifier.status("x") is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_the_named_process() -> None:
    values = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}
    assert SystemdNotifier.from_values(values, pid=42).watchdog_seconds == 5.0
    assert SystemdNotifier.from_values(values, pid=43).watchdog_seconds is None
    with pytest.raises(NotifySocketError, match="WATCHDOG_USEC"):
        SystemdNotifier.from_values({**values, "WATCHDOG_USEC": "ten"}, pid=42)
    with pytest.raises(NotifySocketError, match="NOTIFY_SOCKET"):
        SystemdNotifier.from_values({"NOTIFY_SOCKET": "relative.sock"}, pid=42)


def test_from_environment_removes_the_variables_so_children_cannot_ping() -> None:
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7", "PATH": "/bin"}
    notifier = SystemdNotifier.from_environment(environ, pid=7)
    assert notifier.watchdog_seconds == 1.0
    assert environ == {"PATH": "/bin"}


def test_pacer_pings_when_due_and_never_for_a_dead_server(notify_socket: tuple[socket.socket, Path]) -> None:
    sock, path = notify_socket
    notifier = SystemdNotifier.from_values({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}, pid=1)
    pacer = WatchdogPacer(notifier, now=100.0)
    assert pacer.timeout(100.0, None) == 0.0  # the first ping is due at once
    pacer.tick(100.0, alive=True)
    assert _receive(sock, 2) == ["WATCHDOG=1"]
    assert pacer.timeout(100.2, None) == pytest.approx(0.8)
    assert pacer.timeout(100.2, 0.1) == 0.1
    pacer.tick(100.5, alive=True)  # not due yet
    pacer.tick(101.5, alive=False)  # due, but the server is gone
    assert _receive(sock, 0.2) is None
    pacer.tick(101.5, alive=True)
    assert _receive(sock, 2) == ["WATCHDOG=1"]


def test_serve_reports_ready_pings_the_watchdog_and_stops_pinging_when_frozen(
    tmp_path: Path, pki: Pki, notify_socket: tuple[socket.socket, Path]
) -> None:
    """What systemd sees of a real agent: READY once listening, pings, none while SIGSTOPped, STOPPING."""
    sock, path = notify_socket
    config = write_config(tmp_path, pki)
    port_file = tmp_path / "port"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "600000", "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "agent.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--config", str(config), "--port-file", str(port_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        started = _receive_until(sock, "READY=1", timeout=30)
        ready = started[-1]
        # READY comes after the port is bound (the port file is written first).
        assert port_file.read_text().strip().isdigit()
        assert any(line.startswith("STATUS=serving on port ") for line in ready)
        assert f"MAINPID={process.pid}" in ready
        # Pings every 0.3 s (half of 0.6 s).
        pings = [m for m in (_receive(sock, 1) for _ in range(3)) if m == ["WATCHDOG=1"]]
        assert len(pings) == 3

        process.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # a ping in flight when the signal landed
        while _receive(sock, 0.05) is not None:
            pass
        assert _receive(sock, 1.0) is None, "a frozen agent must not ping"
        process.send_signal(signal.SIGCONT)
        assert _receive(sock, 2) == ["WATCHDOG=1"]

        process.send_signal(signal.SIGTERM)
        stopping = _receive_until(sock, "STOPPING=1", timeout=10)
        assert any(line.startswith("STATUS=draining") for line in stopping[-1])
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
