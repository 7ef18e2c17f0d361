"""Dataset ids cannot be enumerated (issue 19, item 5).

A coordinator is told of a dataset it may not see exactly what it is told of an id
that does not exist: NOT_FOUND, in the same words, from every RPC that takes a
dataset id; the audit log keeps the true rule. Real agent, real mTLS, real audit log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.tasks import run_task
from tests.conftest import Pki, start_in_process
from tests.packages.package_builders import good_package
from tests.tasks import test_run_task_rpc as rpc
from tests.tasks.test_run_task_rpc import PARAMETERS, Agent, cohort_config, cohort_table, secure_channel, spec

# The ids, all 4 characters so that the messages can be compared byte for byte once
# the id the caller sent is blanked: "tiny" has a policy rule but is not granted to
# the CN-only coordinator, "hide" is catalogued but has no policy rule, "nope" does
# not exist.
NOT_GRANTED, NO_POLICY, NONEXISTENT = "tiny", "hide", "nope"
# The true rule each refusal is audited with.
RULES = {NOT_GRANTED: "coordinator.dataset_not_allowed", NO_POLICY: "dataset.no_policy",
         NONEXISTENT: "dataset.unknown"}

publisher = rpc.publisher


@pytest.fixture
def agent(tmp_path: Path, pki: Pki, publisher: AgentKey) -> Iterator[Agent]:
    config = cohort_config(tmp_path, pki, publisher)
    # A third catalogued dataset without a policy rule.
    pq.write_table(cohort_table(50), tmp_path / "data" / "hide.parquet")
    with config.open("a") as toml:
        toml.write(f'\n[[datasets]]\nid = "{NO_POLICY}"\npath = "{tmp_path / "data" / "hide.parquet"}"\n')
    process = start_in_process(config)
    address = f"127.0.0.1:{process.port}"
    with AgentClient(address, pki.credentials(), server_name="localhost", timeout=30) as client:
        digest = client.upload_package(good_package(publisher)).digest
    # Seen through the CN-only coordinator, granted "cohort" only.
    started = Agent(tmp_path, process, address, digest, secure_channel(pki, address, "cn-only"))
    yield started
    started.channel.close()
    process.stop()


def told(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details() or ""


def calls(agent: Agent, dataset_id: str) -> dict[str, Callable[[], object]]:
    stub = agent.stub
    return {
        "GetDataset": lambda: stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id), timeout=30),
        "GetBudget": lambda: stub.GetBudget(pb.GetBudgetRequest(dataset_id=dataset_id), timeout=30),
        "RunTask": lambda: run_task(stub, spec(agent, dataset=dataset_id), PARAMETERS, timeout=30),
    }


@pytest.mark.parametrize("method", ["GetDataset", "GetBudget", "RunTask"])
def test_a_dataset_not_visible_is_told_exactly_like_one_that_does_not_exist(agent: Agent, method: str) -> None:
    answers = {}
    for dataset_id in (NOT_GRANTED, NO_POLICY, NONEXISTENT):
        code, details = told(calls(agent, dataset_id)[method])
        assert code == grpc.StatusCode.NOT_FOUND, (dataset_id, details)
        answers[dataset_id] = details.replace(repr(dataset_id), "<id>").encode()
    assert answers[NOT_GRANTED] == answers[NO_POLICY] == answers[NONEXISTENT] == b"dataset <id> not found"
    # The hospital's log keeps the true reason for each.
    refused = [e for e in agent.audit("rpc.decision") if e["method"] == method and not e["allowed"]]
    assert {e["dataset"]: e["rule"] for e in refused} == RULES
    assert all(e["outcome"] == "not_found" for e in refused)
    assert "may not use dataset" in next(e["reason"] for e in refused if e["dataset"] == NOT_GRANTED)


def test_the_list_shows_only_the_visible_datasets(agent: Agent) -> None:
    listed = agent.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=30)
    assert [d.id for d in listed.datasets] == ["cohort"]


def test_a_granted_dataset_is_still_served(agent: Agent) -> None:
    assert agent.stub.GetDataset(pb.GetDatasetRequest(dataset_id="cohort"), timeout=30).id == "cohort"
    assert agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30).epsilon_limit == 50.0


def test_a_dataset_not_visible_is_not_read_before_the_refusal(agent: Agent, tmp_path: Path) -> None:
    """How long reading a dataset takes would tell it from an absent one: a hidden dataset's file
    is not opened before the refusal. Seen in its access time, set to the epoch beforehand."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    os.utime(probe, (0, time.time()))
    probe.read_bytes()
    if probe.stat().st_atime == 0:
        pytest.skip("this filesystem does not record access times (noatime)")
    hidden = tmp_path / "data" / "hide.parquet"
    os.utime(hidden, (0, time.time()))
    code, details = told(calls(agent, NO_POLICY)["RunTask"])
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, f"dataset {NO_POLICY!r} not found")
    assert hidden.stat().st_atime == 0
