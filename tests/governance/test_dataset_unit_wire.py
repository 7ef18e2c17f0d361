"""ListDatasets, GetDataset and GetBudget report the privacy unit (issue 20, wire).

The unit column's name and values never travel: it is never among the columns,
and only whether a unit is declared and the bucketed unit count are sent.
Real agent, real mTLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from tests.conftest import Pki, start_in_process
from tests.tasks import test_run_task_rpc as rpc
from tests.tasks.test_run_task_rpc import Agent, cohort_config, cohort_table, secure_channel

publisher = rpc.publisher


@pytest.fixture
def agent(tmp_path: Path, pki: Pki, publisher: AgentKey) -> Iterator[Agent]:
    config = cohort_config(tmp_path, pki, publisher)
    # "tiny" becomes 40 visits of 12 patients, with the patient as its privacy unit.
    visits = cohort_table(40).set_column(4, "patient_id", pa.array([f"p{i % 12}" for i in range(40)]))
    pq.write_table(visits, tmp_path / "data" / "tiny.parquet")
    text = config.read_text()
    tiny_path = f'path = "{tmp_path / "data" / "tiny.parquet"}"\n'
    assert tiny_path in text
    config.write_text(text.replace(tiny_path, tiny_path + 'privacy_unit = "patient_id"\n'))
    process = start_in_process(config)
    address = f"127.0.0.1:{process.port}"
    started = Agent(tmp_path, process, address, "", secure_channel(pki, address))
    yield started
    started.channel.close()
    process.stop()


def _bucket(bucket: pb.RowCountBucket) -> tuple[int, int]:
    return (bucket.lower, bucket.upper)


def test_datasets_report_units_and_never_the_unit_column(agent: Agent) -> None:
    listed = {d.id: d for d in agent.stub.ListDatasets(pb.ListDatasetsRequest(), timeout=30).datasets}
    tiny = listed["tiny"]
    assert tiny.privacy_unit_declared
    assert _bucket(tiny.row_count) == (20, 50) and _bucket(tiny.unit_count) == (10, 20)
    assert "patient_id" not in [c.name for c in tiny.columns]
    assert "patient_id" not in str(tiny)
    cohort = listed["cohort"]
    assert not cohort.privacy_unit_declared
    assert _bucket(cohort.unit_count) == _bucket(cohort.row_count)
    assert "patient_id" not in [c.name for c in cohort.columns]

    got = agent.stub.GetDataset(pb.GetDatasetRequest(dataset_id="tiny"), timeout=30)
    assert got == tiny


def test_budget_says_whether_epsilon_is_per_patient(agent: Agent) -> None:
    tiny = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="tiny"), timeout=30)
    assert tiny.privacy_unit_declared and _bucket(tiny.unit_count) == (10, 20)
    cohort = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
    assert not cohort.privacy_unit_declared
    assert _bucket(cohort.unit_count) == _bucket(
        agent.stub.GetDataset(pb.GetDatasetRequest(dataset_id="cohort"), timeout=30).row_count
    )
