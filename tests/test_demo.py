"""`edge-sponsor demo` as a real process, including being killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Imported by every Python process started with this directory on
# PYTHONPATH. The first process to get here (the demo) carries on; the next
# (the agent the demo starts) stalls, so the test can kill the demo while its
# child is alive and its temp dir holds a development CA key.
STALL_THE_CHILD = """
import os, time
marker = os.environ["EDGE_AGENT_TEST_MARKER"]
try:
    os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
except FileExistsError:
    time.sleep(60)
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; the fields after ")" are fixed.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_single_agent_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "edge_sponsor", "demo", "--single-agent"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "dataset cardio-demo" in result.stdout
    assert "- patient_id" not in result.stdout
    assert "- age: int32" in result.stdout
    assert "health:           SERVING" in result.stdout
    assert "exit code 0" in result.stdout


def test_sigterm_stops_the_demos_agent_and_removes_its_temp_dir(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALL_THE_CHILD)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"},
        "PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "EDGE_AGENT_TEST_MARKER": str(tmp_path / "first-process"),
        "TMPDIR": str(scratch),
    }
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_sponsor", "demo", "--single-agent"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    child: int | None = None
    try:
        deadline = time.monotonic() + 30
        while child is None and time.monotonic() < deadline:
            children = _children(demo.pid)
            child = children[0] if children else None
            time.sleep(0.05)
        assert child is not None, "the demo did not start its agent"
        assert [p.name for p in scratch.iterdir() if p.name.startswith("edge-agent-demo-")]
        demo.send_signal(signal.SIGTERM)
        _, stderr = demo.communicate(timeout=30)
        assert demo.returncode == 130, stderr
        assert b"Traceback" not in stderr
        time.sleep(0.2)
        assert not _alive(child), "the demo's agent outlived the demo"
        left = [p.name for p in scratch.iterdir() if p.name.startswith("edge-agent-demo-")]
        assert left == [], "the demo left its temp dir (with a CA key) behind"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_sigterm_stops_the_federated_demos_three_agents_and_removes_its_temp_dir(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_sponsor", "demo", "--rounds", "200"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    agents: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(agents) < 3:
            agents = _children(demo.pid)
            time.sleep(0.1)
        assert len(agents) == 3, "the demo did not start three agents"
        time.sleep(3)  # into training
        demo.send_signal(signal.SIGTERM)
        _, stderr = demo.communicate(timeout=60)
        assert demo.returncode == 130, stderr
        assert b"Traceback" not in stderr
        assert not [pid for pid in agents if _alive(pid)], "an agent outlived the demo"
        left = [p.name for p in scratch.iterdir() if p.name.startswith("edge-agent-demo-")]
        assert left == [], "the interrupted demo left its temp dir (with a CA key) behind"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in agents:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
