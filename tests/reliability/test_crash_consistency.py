"""Crash consistency: tasks, uploads and reads under load while the daemon (and, in
some cycles, a task's worker) is killed with SIGKILL at random moments; after every
restart the ledger, package store and audit log must be consistent.

After each restart:
- the ledger shows at least the ε of every result a coordinator received;
- every acknowledged upload is listed and readable, nothing half-stored is listed;
- `edge-agent audit verify` passes (a torn last line is a reported recovery);
- every task the audit log calls finished is settled as spent in the ledger.

CRASH_CYCLES (default 3: the suite draws new kill moments on every run, and `make soak`
runs 50 cycles) and CRASH_SEED set the length and the kill moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from edge_sponsor.coordinator.tasks import run_task
from tests.conftest import Pki, spawn_agent, stop_agent
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_crash_recovery import audit_kinds, worker_processes
from tests.tasks.test_run_task_rpc import PARAMETERS, cohort_config, secure_channel

CYCLES = int(os.environ.get("CRASH_CYCLES", "3"))
SEED = int(os.environ.get("CRASH_SEED", str(random.SystemRandom().randrange(2**32))))


@dataclass
class Observed:
    """What the coordinators were told, across all cycles."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    epsilon_received: float = 0.0
    results: int = 0
    uploads: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)


def task_load(address: str, pki: Pki, digest: str, stop: threading.Event, seen: Observed) -> None:
    channel = secure_channel(pki, address)
    spec = pb.TaskSpec(
        kind=pb.TASK_KIND_DP_GRADIENT,
        package_digest=digest,
        dataset_id="cohort",
        hyperparameters=pb.DPHyperparameters(clip_norm=1.0, noise_multiplier=5.0, sampling_rate=0.5),
        correlation_id="crash-load",
    )
    try:
        while not stop.is_set():
            try:
                run = run_task(pb_grpc.AgentStub(channel), spec, PARAMETERS, timeout=30)
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):  # type: ignore[attr-defined]
                    return
                with seen.lock:
                    seen.refusals.append(f"{exc.code()}: {exc.details()}")  # type: ignore[attr-defined]
                continue
            with seen.lock:
                seen.results += 1
                seen.epsilon_received = max(seen.epsilon_received, run.epsilon_charged)
    finally:
        channel.close()


def upload_load(address: str, pki: Pki, publisher: object, first: int, stop: threading.Event, seen: Observed) -> None:
    from edge_sponsor.coordinator.client import AgentClient, AgentRpcError

    version = first
    with AgentClient(address, pki.credentials(), server_name="localhost", timeout=30) as client:
        while not stop.is_set():
            archive = good_package(publisher, version=f"1.{version}.0")  # type: ignore[arg-type]
            version += 1
            try:
                stored = client.upload_package(archive)
            except AgentRpcError:
                return
            with seen.lock:
                seen.uploads.add(stored.digest)


def ledger_states(directory: Path, task_ids: list[str]) -> dict[str, str]:
    uri = f"file:{directory / 'state' / 'privacy-ledger.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return {
            row[0]: row[1]
            for row in conn.execute(
                f"SELECT task_id, state FROM tasks WHERE task_id IN ({','.join('?' * len(task_ids))})", task_ids
            )
        }


def check_consistency(directory: Path, config: Path, address: str, pki: Pki, seen: Observed) -> None:
    channel = secure_channel(pki, address)
    stub = pb_grpc.AgentStub(channel)
    try:
        budget = stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
        assert budget.epsilon_spent + 1e-9 >= seen.epsilon_received, (budget.epsilon_spent, seen.epsilon_received)
        assert budget.tasks_charged >= seen.results
        listed = {p.digest for p in stub.ListPackages(pb.ListPackagesRequest(), timeout=30).packages}
        assert seen.uploads <= listed, seen.uploads - listed
        for digest in listed:
            assert stub.GetPackage(pb.GetPackageRequest(digest=digest), timeout=30).digest == digest
    finally:
        channel.close()
    finished = [str(e["task_id"]) for e in audit_kinds(directory) if e["kind"] == "task.finished"]
    if finished:
        states = ledger_states(directory, finished)
        unsettled = {t: states.get(t) for t in finished if states.get(t) != "committed"}
        assert not unsettled, f"finished in the audit log but not spent in the ledger: {unsettled}"
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


# Five daemon kills and restarts, each waiting for a real worker: about a minute on a quiet
# machine, several on a loaded one; the suite's 120 s default is for ordinary tests.
@pytest.mark.timeout(600)
def test_random_sigkills_under_load_lose_nothing(tmp_path: Path, pki: Pki) -> None:
    rng = random.Random(SEED)
    print(f"CRASH_SEED={SEED} CRASH_CYCLES={CYCLES}")
    publisher = new_key()
    config = cohort_config(tmp_path, pki, publisher, budget=100.0, max_concurrent=4)
    seen = Observed()
    agent = spawn_agent(["--config", str(config)], tmp_path)
    from edge_sponsor.coordinator.client import AgentClient

    with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as client:
        digest = client.upload_package(good_package(publisher)).digest
    try:
        kills = {"daemon": 0, "worker": 0}
        for cycle in range(CYCLES):
            stop = threading.Event()
            threads = [
                threading.Thread(target=task_load, args=(agent.address, pki, digest, stop, seen), daemon=True)
                for _ in range(3)
            ]
            threads.append(
                threading.Thread(
                    target=upload_load,
                    args=(agent.address, pki, publisher, 1000 * (cycle + 1), stop, seen),
                    daemon=True,
                )
            )
            for thread in threads:
                thread.start()
            # Let at least one task finish in this cycle (the first one warms the worker up),
            # then kill at a random moment in the middle of the next ones.
            before = seen.results
            deadline = time.monotonic() + 60
            while seen.results == before and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            assert agent.process is not None
            if cycle % 2 == 1:
                workers = [pid for pid in worker_processes(agent.process.pid) if pid != agent.process.pid]
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills["worker"] += 1
                time.sleep(rng.uniform(0.1, 1.0))
            os.kill(agent.process.pid, signal.SIGKILL)
            agent.process.wait(timeout=10)
            kills["daemon"] += 1
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            agent = spawn_agent(["--config", str(config)], tmp_path)
            check_consistency(tmp_path, config, agent.address, pki, seen)
        assert stop_agent(agent) == 0
    finally:
        # A failed or timed-out run must not leave its agent serving.
        if agent.process is not None and agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
    check_report = {
        "seed": SEED,
        "cycles": CYCLES,
        "kills": kills,
        "results": seen.results,
        "uploads": len(seen.uploads),
        "refusals": sorted(set(seen.refusals))[:5],
    }
    print(json.dumps(check_report))
    assert seen.results > 0
