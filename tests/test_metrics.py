"""Prometheus metrics: a real agent's /metrics listener, and the audit-fed task figures."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.audit.record import AuditRecord
from agent.config import ConfigError, load_config
from agent.observability.metrics import AgentMetrics
from agent.privacy.accounting import make_accountant
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.privacy.mechanism import Mechanism
from agent.tasks.parameter_cache import ParameterCache, RunKey
from agent.tasks.tensors import TensorDecl
from agent.tasks.worker import WorkerLimits, WorkerPool
from edge_sponsor.coordinator.client import AgentRpcError
from tests.conftest import Pki, spawn_agent, stop_agent, write_config
from tests.tasks import worker_jobs


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metrics_port(log: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"metrics.listening"' in line:
                return int(json.loads(line)["port"])
        time.sleep(0.05)
    raise AssertionError(f"no metrics.listening in {log.read_text()}")


def test_a_running_agent_serves_rpc_package_and_budget_metrics(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    ledger = PrivacyLedger(tmp_path / "state" / LEDGER_FILENAME, make_accountant("pld"))
    ledger.reserve(
        "cohort",
        "t1",
        Mechanism.dp_local_training(0.01, 1.0, 50),
        limit_epsilon=8.0,
        delta=1e-6,
        coordinator="c",
        dataset="cohort",
        correlation_id="r",
    )
    ledger.commit("t1")
    config = write_config(tmp_path, pki, extra='[metrics]\nlisten = "127.0.0.1:0"\n')
    agent = spawn_agent(["--config", str(config)], tmp_path)
    try:
        port = _metrics_port(tmp_path / "agent.log")
        with agent.client(pki) as client:
            assert client.get_info().agent_id == "hospital-test"
            with pytest.raises(AgentRpcError):
                client.upload_package(b"not a package archive")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            samples = _samples(response.read().decode())
    finally:
        assert stop_agent(agent) == 0
    get_info = ("edge_agent_rpcs_total", (("code", "OK"), ("method", "/edge_agent.v1.Agent/GetInfo")))
    assert samples[get_info] == 1.0
    assert samples[("edge_agent_rpc_duration_seconds_count", (("method", "/edge_agent.v1.Agent/GetInfo"),))] == 1.0
    refused = [v for (name, _), v in samples.items() if name == "edge_agent_package_verification_failures_total"]
    assert refused == [1.0]
    spent = samples[("edge_agent_privacy_epsilon_spent", (("budget_group", "cohort"),))]
    assert 0 < spent < 8.0
    assert samples[("edge_agent_privacy_epsilon_limit", (("budget_group", "cohort"),))] == 8.0
    # Reuse is reported from the start, before any task ran.
    assert samples[("edge_agent_task_workers_started_total", ())] == 0.0
    assert samples[("edge_agent_parameter_cache_hits_total", ())] == 0.0
    assert samples[("edge_agent_parameter_cache_bytes", ())] == 0.0


def _record(seq: int, kind: str, **fields: object) -> AuditRecord:
    return AuditRecord(seq=seq, time="2026-11-23T20:00:00Z", kind=kind, fields=fields, prev="", hash="")


def test_tasks_are_counted_by_kind_and_outcome_with_durations() -> None:
    now = [100.0]
    metrics = AgentMetrics(clock=lambda: now[0])
    metrics.observe_audit(_record(1, "task.started", task_id="a", task_kind="dp_gradient"))
    now[0] = 102.5
    metrics.observe_audit(_record(2, "task.finished", task_id="a", task_kind="dp_gradient"))
    metrics.observe_audit(_record(3, "task.refused", task_kind="dp_evaluate", status="PERMISSION_DENIED"))
    metrics.observe_audit(_record(4, "package.refused", rule="bad_signature"))
    r = metrics.registry
    assert r.get_sample_value("edge_agent_tasks_total", {"kind": "dp_gradient", "outcome": "succeeded"}) == 1
    assert r.get_sample_value("edge_agent_tasks_total", {"kind": "dp_evaluate", "outcome": "refused"}) == 1
    labels = {"kind": "dp_gradient", "outcome": "succeeded"}
    assert r.get_sample_value("edge_agent_task_duration_seconds_sum", labels) == 2.5
    assert r.get_sample_value("edge_agent_package_verification_failures_total", {"code": "bad_signature"}) == 1
    # Each agent has its own registry: nothing leaks into a second one.
    assert AgentMetrics().registry.get_sample_value("edge_agent_tasks_total", labels) is None


def test_an_unreadable_ledger_does_not_fail_the_scrape(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILENAME
    path.write_bytes(b"this is not an SQLite database, not even close" * 100)
    metrics = AgentMetrics()
    metrics.watch_budgets(PrivacyLedger(path, make_accountant("pld")).groups)
    assert metrics.registry.get_sample_value("edge_agent_privacy_ledger_readable") == 0.0


def test_metrics_listen_is_validated_and_optional(tmp_path: Path, pki: Pki) -> None:
    assert load_config(write_config(tmp_path, pki)).metrics.listen is None
    config = write_config(tmp_path, pki, extra='[metrics]\nlisten = "127.0.0.1:99999"\n')
    with pytest.raises(ConfigError, match=r"metrics\.listen"):
        load_config(config)


def test_warm_worker_reuse_and_parameter_cache_hits_are_counted() -> None:
    metrics = AgentMetrics()
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"])
    cache = ParameterCache(1 << 20, 60.0, sweep_in_background=False)
    metrics.watch_reuse(pool.stats, cache.stats)
    # Ample: a worker forked from a forkserver another test started with the daemon's imports holds ~1.6 GiB.
    limits = WorkerLimits(memory_bytes=4 * 1024**3, cpu_seconds=30, wall_seconds=30)
    try:
        for _ in range(3):
            pool.run(worker_jobs.add, (1, 2), limits, reuse_key="run-1")
        key = RunKey.of("coordinator", "run-1", "sha256:package")
        weights = np.arange(8, dtype=np.float32)
        declared = [TensorDecl("w", "float32", (8,), hashlib.sha256(weights.tobytes()).digest())]
        assert cache.lookup(key, declared) == {}
        cache.store(key, declared, {"w": weights})
        assert list(cache.lookup(key, declared)) == [0]
        r = metrics.registry
        assert r.get_sample_value("edge_agent_task_workers_started_total") == 1
        assert r.get_sample_value("edge_agent_task_workers_reused_total") == 2
        assert r.get_sample_value("edge_agent_task_workers_warm") == 1
        assert r.get_sample_value("edge_agent_parameter_cache_hits_total") == 1
        assert r.get_sample_value("edge_agent_parameter_cache_misses_total") == 1
        assert r.get_sample_value("edge_agent_parameter_cache_hit_bytes_total") == 32
        assert r.get_sample_value("edge_agent_parameter_cache_bytes") == cache.held_bytes > 0
    finally:
        pool.close()
