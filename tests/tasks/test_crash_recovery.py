"""SIGKILL the daemon in the middle of a task: after a restart the ledger is not under-charged.

The agent cannot know whether a result left before it died, so the reservation
of the interrupted task is counted as spent at the next start, audited as
task.abandoned, and the audit chain still verifies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.tasks import run_task
from tests.conftest import Pki, spawn_agent, stop_agent
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import PARAMETERS, cohort_config, secure_channel


def audit_kinds(directory: Path) -> list[dict[str, object]]:
    import json

    entries: list[dict[str, object]] = []
    for path in sorted((directory / "state" / "audit").glob("*.jsonl")):
        entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return entries


def worker_processes(daemon_pid: int) -> list[int]:
    """Live processes whose parent chain leads to the daemon (its forkserver and workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found = []
    for pid in parents:
        current = pid
        while current in parents and current > 1:
            current = parents[current]
            if current == daemon_pid:
                found.append(pid)
                break
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_mid_task_never_undercharges(tmp_path: Path, pki: Pki) -> None:
    publisher = new_key()
    config = cohort_config(tmp_path, pki, publisher)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    assert agent.process is not None
    with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as client:
        digest = client.upload_package(good_package(publisher)).digest

    spec = pb.TaskSpec(
        kind=pb.TASK_KIND_DP_LOCAL_TRAINING,
        package_digest=digest,
        dataset_id="cohort",
        hyperparameters=pb.DPHyperparameters(
            clip_norm=1.0, noise_multiplier=20.0, sampling_rate=1.0, local_steps=1000, learning_rate=0.1
        ),
        correlation_id="crash-1",
    )
    computing = threading.Event()
    channel = secure_channel(pki, agent.address)

    def attempt() -> None:
        with contextlib.suppress(grpc.RpcError):  # the agent dies under it
            run_task(pb_grpc.AgentStub(channel), spec, PARAMETERS, timeout=60, on_progress=lambda f, s: computing.set())

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    assert computing.wait(timeout=60), (tmp_path / "agent.log").read_text()
    started = [e for e in audit_kinds(tmp_path) if e["kind"] == "task.started"]
    assert len(started) == 1
    task_id = started[0]["task_id"]

    children = worker_processes(agent.process.pid)
    assert children  # the forkserver and the task's worker
    os.kill(agent.process.pid, signal.SIGKILL)
    agent.process.wait(timeout=10)
    thread.join(timeout=30)
    channel.close()
    # The worker dies with its parents instead of computing on for nobody.
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]

    restarted = spawn_agent(["--config", str(config)], tmp_path)
    try:
        channel = secure_channel(pki, restarted.address)
        budget = pb_grpc.AgentStub(channel).GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
        channel.close()
        assert budget.tasks_charged == 1 and budget.epsilon_spent > 0
        abandoned = [e for e in audit_kinds(tmp_path) if e["kind"] == "task.abandoned"]
        assert [e["task_id"] for e in abandoned] == [task_id]
    finally:
        assert stop_agent(restarted) == 0
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The log was cut mid-write at worst; verify reports that as a recovered truncation, not tampering.
    assert verified.returncode == 0, verified.stdout + verified.stderr
