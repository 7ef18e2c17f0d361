"""Patients, not rows, end to end: a real agent over mTLS, a dataset with 1 to 6 rows per patient.

The ε that GetBudget reports is checked against dp-accounting itself, composed
here from the task settings alone (the agent's accounting grid written out as
literals, not computed by the agent's code): the ledger charges the unit-level
q, σ and step count. The cohort minimum is counted in patients over the wire.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# dp-accounting ships no type information.
from dp_accounting import (  # type: ignore[import-untyped]
    GaussianDpEvent,
    PoissonSampledDpEvent,
    SelfComposedDpEvent,
)
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.identity.agent_key import AgentKey
from edge_sponsor.coordinator.client import AgentClient, Units
from edge_sponsor.coordinator.tasks import TaskRun, run_task
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import cohort_table, secure_channel

PATIENTS = 120  # patient i has 1 + i % 6 rows: 420 rows in all
FEW_PATIENTS = 12  # 5 rows each: 60 rows, above the minimum of 20, but 12 patients, below it
DELTA = 1e-5
# The agent's ledger composes with dp-accounting's PLD at this discretisation (agent/privacy/accounting.py).
PLD_DISCRETIZATION = 1e-3
PARAMETERS = [("w", np.zeros(4, np.float32)), ("b", np.zeros((), np.float32))]


def repeated_patients(patients: int, rows_of: Any, seed: int) -> pa.Table:
    """cohort_table's columns, with ``rows_of(i)`` rows for patient i, in a shuffled order (not sorted by unit)."""
    ids = [f"patient-{i:04d}" for i in range(patients) for _ in range(rows_of(i))]
    order = np.random.default_rng(seed).permutation(len(ids))
    table = cohort_table(len(ids), seed=seed).drop_columns(["patient_id"])
    return table.append_column("patient_id", pa.array([ids[i] for i in order]))


def policy_text(publisher: AgentKey) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["visits", "few-patients"]
task_kinds = ["dp_gradient", "dp_local_training", "dp_evaluate"]

[[datasets]]
id = "visits"
epsilon_budget = 50.0
delta = {DELTA}
min_cohort_size = 20
require_privacy_unit = true
max_rows_per_unit = 4
forbidden_columns = ["patient_id"]

[[datasets]]
id = "few-patients"
epsilon_budget = 50.0
delta = {DELTA}
min_cohort_size = 20
require_privacy_unit = true

[[publishers]]
name = "Acme Pharma"
public_key = "{key}"

[packages]
require_approval = false

[limits]
max_concurrent_tasks = 2
task_seconds = 60
"""


class Site:
    def __init__(self, directory: Path, pki: Pki, publisher: AgentKey) -> None:
        data = directory / "data"
        data.mkdir(parents=True)
        pq.write_table(repeated_patients(PATIENTS, lambda i: 1 + i % 6, seed=1), data / "visits.parquet")
        pq.write_table(repeated_patients(FEW_PATIENTS, lambda i: 5, seed=2), data / "few.parquet")
        datasets = "".join(
            f'\n[[datasets]]\nid = "{name}"\npath = "{data / file}"\ncolumns = ["age", "sex", "bmi", "outcome"]\n'
            f'privacy_unit = "patient_id"\n'
            for name, file in (("visits", "visits.parquet"), ("few-patients", "few.parquet"))
        )
        config = write_config(directory, pki, policy=policy_text(publisher), extra=datasets)
        self.directory = directory
        self.process: InProcessAgent = start_in_process(config)
        self.address = f"127.0.0.1:{self.process.port}"
        self.channel = secure_channel(pki, self.address)
        with AgentClient(self.address, pki.credentials(), server_name="localhost", timeout=30) as client:
            self.package_digest = client.upload_package(good_package(publisher)).digest

    @property
    def stub(self) -> pb_grpc.AgentStub:
        return pb_grpc.AgentStub(self.channel)

    def spec(self, kind: int, dataset: str = "visits", **hyper: Any) -> pb.TaskSpec:
        return pb.TaskSpec(
            kind=kind,
            package_digest=self.package_digest,
            dataset_id=dataset,
            hyperparameters=pb.DPHyperparameters(**hyper),
            run_id="unit-run",
            round=1,
            purpose="research",
        )

    def run(self, message: pb.TaskSpec) -> TaskRun:
        return run_task(self.stub, message, PARAMETERS, timeout=60)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.directory / "state" / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["kind"] == kind]


@pytest.fixture
def site(tmp_path: Path, pki: Pki) -> Iterator[Site]:
    started = Site(tmp_path, pki, new_key())
    yield started
    started.channel.close()
    started.process.stop()


def independent_epsilon(tasks: list[tuple[float, float, int]]) -> float:
    """ε of (q, σ, steps) tasks composed by dp-accounting's own PLD accountant, add/remove one unit."""
    accountant = pld_privacy_accountant.PLDAccountant(
        NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_DISCRETIZATION
    )
    for q, sigma, steps in tasks:
        accountant.compose(SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps))
    return float(accountant.get_epsilon(DELTA))


def test_budget_is_per_patient_and_matches_dp_accounting(site: Site) -> None:
    dataset = site.stub.GetDataset(pb.GetDatasetRequest(dataset_id="visits"), timeout=30)
    # 120 patients in 420 rows: the unit bucket counts patients, the row bucket rows; the unit column is never sent.
    assert dataset.privacy_unit_declared
    assert (dataset.unit_count.lower, dataset.unit_count.upper) == (100, 200)
    assert (dataset.row_count.lower, dataset.row_count.upper) == (200, 500)
    assert "patient_id" not in {column.name for column in dataset.columns}
    assert Units.of_dataset(dataset).epsilon_per == "patient"

    gradient = site.run(
        site.spec(
            pb.TASK_KIND_DP_GRADIENT, clip_norm=1.0, noise_multiplier=1.1234, sampling_rate=0.2345,
            release_noisy_count=True,
        )
    )
    site.run(site.spec(pb.TASK_KIND_DP_GRADIENT, clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.5))
    site.run(
        site.spec(
            pb.TASK_KIND_DP_LOCAL_TRAINING, clip_norm=1.0, noise_multiplier=1.5, sampling_rate=0.1,
            local_steps=3, learning_rate=0.1,
        )
    )
    # The count released is of sampled patients (about 0.2345 * 120 = 28), not of rows (about 0.2345 * 300
    # rows read at 4 per patient at most = 70); 50 is more than 4 standard deviations from either.
    assert gradient.scalars["noisy_count"] < 50

    budget = site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="visits"), timeout=30)
    # The accounting grid (3 significant digits; q rounded up, σ down): 0.2345 -> 0.235, 1.1234 -> 1.12.
    # A gradient with a noisy count is one Gaussian on the same sample: σ / √2 for equal multipliers.
    expected = independent_epsilon([(0.235, 1.12 / np.sqrt(2.0), 1), (0.5, 2.0, 1), (0.1, 1.5, 3)])
    assert budget.accountant == "pld" and budget.tasks_charged == 3
    # Same library, same discretisation: equal to rounding (off the grid, ε would differ by 0.5 %).
    assert budget.epsilon_spent == pytest.approx(expected, rel=1e-6)
    assert budget.privacy_unit_declared
    assert (budget.unit_count.lower, budget.unit_count.upper) == (100, 200)
    assert Units.of_budget(budget).describe() == "ε per patient (privacy unit declared; patients in [100, 200))"

    # Each task entry in the hospital's log says what its ε protects.
    for entry in site.audit("task.started") + site.audit("task.finished"):
        assert entry["privacy_unit"] == "patient_id"
        assert entry["max_rows_per_unit"] == 4 and entry["unit_count"] == [100, 200]


def test_the_cohort_minimum_counts_patients_and_charges_nothing(site: Site) -> None:
    message = site.spec(pb.TASK_KIND_DP_GRADIENT, clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5)
    message.dataset_id = "few-patients"
    with pytest.raises(grpc.RpcError) as refused:
        site.run(message)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "fewer units" in str(refused.value.details()) and "minimum cohort size of 20" in str(refused.value.details())
    budget = site.stub.GetBudget(pb.GetBudgetRequest(dataset_id="few-patients"), timeout=30)
    assert (budget.epsilon_spent, budget.epsilon_reserved, budget.tasks_charged) == (0.0, 0.0, 0)
    # 60 rows but 12 patients: the bucket the coordinator sees is of patients.
    assert (budget.unit_count.lower, budget.unit_count.upper) == (10, 20)
    decisions = [e for e in site.audit("rpc.decision") if e.get("dataset") == "few-patients" and not e["allowed"]]
    assert [e["rule"] for e in decisions] == ["dataset.min_cohort"]
    assert not site.audit("task.started")
