"""Policy enforcement end to end: real server, real certificates, real audit log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_sponsor.coordinator.client import AgentRpcError
from tests.conftest import COORDINATOR_URI, Pki, RunningAgent, spawn_agent, start_in_process, stop_agent, write_config

POLICY = f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["onco"]
task_kinds = ["dp_gradient"]

[[coordinators]]
identity = "cn-only-coordinator"
datasets = ["onco"]
task_kinds = ["dp_evaluate"]
valid_until = 2020-01-01

[[datasets]]
id = "onco"
epsilon_budget = 3.0
exposed_columns = ["age", "stage", "event"]
forbidden_columns = ["patient_id"]

[[datasets]]
id = "labs"
epsilon_budget = 1.0
"""


def audit_entries(directory: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted((directory / "state" / "audit").glob("*.jsonl")):
        entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return entries


def decisions(directory: Path) -> list[dict[str, Any]]:
    return [e for e in audit_entries(directory) if e["kind"] == "rpc.decision"]


@pytest.fixture
def governed(tmp_path: Path, pki: Pki) -> RunningAgent:
    data = tmp_path / "data"
    data.mkdir()
    table = pa.table({"patient_id": ["a"] * 30, "age": [50] * 30, "stage": [2] * 30, "event": [True] * 30,
                      "postcode": ["0001"] * 30})
    for name in ("onco", "labs", "unreleased"):
        pq.write_table(table, data / f"{name}.parquet")
    config = write_config(
        tmp_path,
        pki,
        policy=POLICY,
        extra="".join(
            f'\n[[datasets]]\nid = "{name}"\npath = "{data / name}.parquet"\n'
            for name in ("onco", "labs", "unreleased")
        ),
    )
    started = start_in_process(config)
    yield RunningAgent(f"127.0.0.1:{started.port}", started.port, config, daemon=started)
    started.stop()


def test_listing_shows_only_granted_datasets_and_exposed_columns(governed: RunningAgent, pki: Pki) -> None:
    with governed.client(pki) as client:
        datasets = client.list_datasets()
    assert [d.id for d in datasets] == ["onco"]
    assert [c.name for c in datasets[0].columns] == ["age", "stage", "event"]
    entry = decisions(governed.config_path.parent)[-1]
    assert entry["method"] == "ListDatasets" and entry["allowed"] is True
    assert entry["coordinator"] == COORDINATOR_URI and entry["rule"] == "coordinator.authorised"


def test_dataset_not_granted_is_refused_and_audited_with_its_rule(governed: RunningAgent, pki: Pki) -> None:
    with governed.client(pki) as client, pytest.raises(AgentRpcError) as failure:
        client.get_dataset("labs")
    # Told like a dataset that does not exist (tests/governance/test_dataset_visibility.py).
    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert failure.value.details == "dataset 'labs' not found"
    entry = decisions(governed.config_path.parent)[-1]
    assert entry["allowed"] is False
    assert entry["rule"] == "coordinator.dataset_not_allowed"
    assert "may not use dataset 'labs'" in entry["reason"]
    assert entry["dataset"] == "labs"
    assert entry["policy_digest"].startswith("sha256:")


def test_dataset_without_policy_rule_is_refused(governed: RunningAgent, pki: Pki) -> None:
    with governed.client(pki) as client, pytest.raises(AgentRpcError) as failure:
        client.get_dataset("unreleased")
    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert decisions(governed.config_path.parent)[-1]["rule"] == "dataset.no_policy"


def test_unknown_dataset_is_not_found(governed: RunningAgent, pki: Pki) -> None:
    with governed.client(pki) as client, pytest.raises(AgentRpcError) as failure:
        client.get_dataset("ghost")
    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert decisions(governed.config_path.parent)[-1]["rule"] == "dataset.unknown"


def test_expired_coordinator_is_refused_everywhere(governed: RunningAgent, pki: Pki) -> None:
    with governed.client(pki, who="cn-only") as client:
        for call in (client.get_info, client.list_datasets, lambda: client.get_dataset("onco")):
            with pytest.raises(AgentRpcError) as failure:
                call()
            assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    rules = {e["rule"] for e in decisions(governed.config_path.parent) if e["coordinator"] == "cn-only-coordinator"}
    assert rules == {"coordinator.expired"}


def test_unknown_coordinator_is_told_its_identity_but_nothing_else(tmp_path: Path, pki: Pki) -> None:
    policy = POLICY.replace(COORDINATOR_URI, "spiffe://pharma.example/someone-else")
    config = write_config(tmp_path, pki, policy=policy)
    started = start_in_process(config)
    try:
        agent = RunningAgent(f"127.0.0.1:{started.port}", started.port, config, daemon=started)
        with agent.client(pki) as client, pytest.raises(AgentRpcError) as failure:
            client.get_info()
        assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert COORDINATOR_URI in failure.value.details
        with agent.client(pki) as client:
            assert client.health() == "SERVING"  # infrastructure, not data: no policy needed
    finally:
        started.stop()
    assert decisions(tmp_path)[-1]["rule"] == "coordinator.unknown"


def test_sighup_applies_a_valid_policy_and_keeps_the_old_one_on_a_broken_file(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, policy=POLICY)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    try:
        with agent.client(pki) as client:
            assert client.list_datasets() == []  # the data files of this config do not exist: onco unknown

        # A broken policy: the reload command refuses it before signalling.
        (tmp_path / "policy.toml").write_text(POLICY + "\n[surprise]\n")
        cli = subprocess.run([sys.executable, "-m", "agent", "policy", "reload", "--config", str(config)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert cli.returncode == 2 and "surprise: unknown key" in cli.stderr
        # Sent straight to the daemon, it is rejected and the old policy stays.
        assert agent.process is not None
        agent.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(e["kind"] == "policy.rejected" for e in audit_entries(tmp_path)):
            time.sleep(0.1)
        rejected = [e for e in audit_entries(tmp_path) if e["kind"] == "policy.rejected"]
        assert rejected and "surprise" in rejected[0]["reason"]
        with agent.client(pki) as client:
            assert client.get_info().agent_id == "hospital-test"

        # A valid new policy that drops this coordinator applies at once.
        (tmp_path / "policy.toml").write_text(POLICY.replace(COORDINATOR_URI, "spiffe://x/other"))
        cli = subprocess.run([sys.executable, "-m", "agent", "policy", "reload", "--config", str(config)],
                             capture_output=True, text=True, env=env, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "in force" in cli.stdout
        with agent.client(pki) as client, pytest.raises(AgentRpcError) as failure:
            client.get_info()
        assert failure.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        assert stop_agent(agent) == 0
    loaded = [e for e in audit_entries(tmp_path) if e["kind"] == "policy.loaded"]
    assert len(loaded) == 2 and loaded[0]["policy_digest"] != loaded[1]["policy_digest"]


def test_policy_check_and_explain_cli(tmp_path: Path, pki: Pki) -> None:
    # explain consults the catalog too: a dataset the agent does not serve is refused as unknown.
    onco = tmp_path / "onco.parquet"
    pq.write_table(pa.table({"age": [50.0] * 20, "event": [1] * 20, "patient_id": ["p"] * 20}), onco)
    config = write_config(tmp_path, pki, policy=POLICY, extra=f'\n[[datasets]]\nid = "onco"\npath = "{onco}"\n')
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, env=env,
                              timeout=60)

    checked = cli("policy", "check", str(tmp_path / "policy.toml"))
    assert checked.returncode == 0 and "valid (2 coordinators, 2 datasets" in checked.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[[coordinators]]\nidentity = 3\n")
    broken = cli("policy", "check", str(bad))
    assert broken.returncode == 2 and f"{bad}: coordinators[0].identity: expected a string" in broken.stderr

    allowed = cli("policy", "explain", "--config", str(config), "--coordinator", COORDINATOR_URI,
                  "--dataset", "onco", "--task", "dp_gradient", "--columns", "age", "--label-columns", "event",
                  "--noise-multiplier", "1.0", "--cohort-size", "500")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert allowed.stdout.startswith("ALLOWED by rule task.allowed")
    refused = cli("policy", "explain", "--config", str(config), "--coordinator", COORDINATOR_URI,
                  "--dataset", "onco", "--task", "dp_gradient", "--columns", "patient_id", "--cohort-size", "500")
    assert refused.returncode == 1
    assert refused.stdout.startswith("REFUSED (forbidden) by rule dataset.forbidden_column")
