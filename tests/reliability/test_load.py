"""Load, short profile: many concurrent coordinators, slow and cancelling clients against
a spawned agent. Deliberate statuses only, the budget holds, health stays fast, memory
does not grow. The long profile with figures: bench/load.py."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from edge_sponsor.coordinator.client import AgentClient
from tests.conftest import Pki, spawn_agent, stop_agent
from tests.packages.package_builders import good_package, new_key
from tests.reliability.loadgen import LoadPlan, run_load
from tests.tasks.test_run_task_rpc import cohort_config

SECONDS = float(os.environ.get("LOAD_SECONDS", "12"))


def test_concurrent_coordinators_get_deliberate_answers_within_budget(tmp_path: Path, pki: Pki) -> None:
    publisher = new_key()
    config = cohort_config(tmp_path, pki, publisher, budget=3.0, max_concurrent=4)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    assert agent.process is not None
    try:
        with AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30) as client:
            digest = client.upload_package(good_package(publisher)).digest
        plan = LoadPlan(seconds=SECONDS, readers=12, task_clients=3, slow_clients=1, dropping_clients=2)
        report = asyncio.run(run_load(agent.address, pki.credentials(), digest, plan, agent.process.pid))
    finally:
        assert stop_agent(agent) == 0
    print("\n".join(report.lines(plan.warmup_seconds)))
    unexpected = {k: v for k, v in report.statuses.items() if k in ("UNKNOWN", "INTERNAL", "UNAVAILABLE")}
    assert not unexpected, report.statuses
    assert report.tasks_ok > 0
    assert report.statuses["RESOURCE_EXHAUSTED"] > 0  # the small budget ran out and said so
    assert 0 < report.epsilon_spent <= report.epsilon_limit
    assert report.percentile_ms("Health", 0.99) < 1000
    assert report.latencies["RunTask(slow)"], "no slow task finished"
    # Memory after warm-up: loose bound, the figure is in the test output and bench/load.py.
    assert report.rss_growth_kib(plan.warmup_seconds) < 64 * 1024
