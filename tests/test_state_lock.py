"""One daemon per state directory (issue 19, item 6), with real `python -m agent serve` processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from agent.governance.status import PID_FILENAME
from agent.state_lock import LOCK_FILENAME, lock_holder
from tests.conftest import Pki, spawn_agent, stop_agent, write_config


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_a_second_daemon_on_the_same_state_directory_is_refused_and_reload_finds_the_first(
    tmp_path: Path, pki: Pki
) -> None:
    first_config = write_config(tmp_path, pki)
    # A second configuration (another file, another port) that names the same state directory.
    second_config = tmp_path / "second.toml"
    shutil.copy(first_config, second_config)
    state = tmp_path / "state"
    first = spawn_agent(["--config", str(first_config)], tmp_path)
    assert first.process is not None
    try:
        started = time.monotonic()
        second = run_cli("serve", "--config", str(second_config))
        assert second.returncode == 1
        assert time.monotonic() - started < 30
        message = second.stderr.strip()
        assert message == (
            f"edge-agent: error: state directory {state} is in use by `edge-agent serve` (PID {first.process.pid}) "
            f"(lock {state / LOCK_FILENAME}); stop that process first, or give this instance its own agent.state_dir"
        )
        # The refused daemon touched nothing: agent.pid still names the first one, and reload reaches it.
        assert (state / PID_FILENAME).read_text().strip() == str(first.process.pid)
        reloaded = run_cli("policy", "reload", "--config", str(second_config))
        assert reloaded.returncode == 0, reloaded.stderr
        # A key rotation under a running daemon would leave it signing with the old key.
        rotated = run_cli("keys", "rotate", "--config", str(first_config))
        assert rotated.returncode == 1 and f"PID {first.process.pid}" in rotated.stderr
    finally:
        assert stop_agent(first) == 0

    # The kernel released the lock with the process: the second configuration now starts.
    assert lock_holder(state) is None
    second_agent = spawn_agent(["--config", str(second_config)], tmp_path)
    try:
        assert second_agent.process is not None
        holder = lock_holder(state)
        assert holder is not None and holder.pid == second_agent.process.pid
    finally:
        assert stop_agent(second_agent) == 0


def test_reload_does_not_signal_a_process_named_by_a_stale_pid_file(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    state = tmp_path / "state"
    state.mkdir()
    # Left by an agent that was killed; the PID now belongs to an unrelated process.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (state / PID_FILENAME).write_text(f"{bystander.pid}\n")
        reloaded = run_cli("policy", "reload", "--config", str(config))
        assert reloaded.returncode == 1
        assert f"{state}: no running agent found" in reloaded.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
