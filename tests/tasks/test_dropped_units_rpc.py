"""release_dropped_units end to end: a real agent over mTLS, datasets with missing values.

Patients with 1 to 6 rows each (privacy unit declared, at most 4 rows read per patient) and
a dataset without a unit column; some rows hold a null, NaN or infinity in a column the
package reads. The coordinator asks dp_evaluate for the dropped units' count through the
typed client and reads it back; the ε charged is checked against dp-accounting composing
the Gaussians itself, and the refusals charge nothing.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

# dp-accounting ships no type information.
from dp_accounting import ComposedDpEvent, GaussianDpEvent  # type: ignore[import-untyped]
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from agent.packages.manifest import DROPPED_UNITS, NOISY_COUNT
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, dropped_units
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config
from tests.packages.package_builders import good_package, new_key
from tests.tasks.test_run_task_rpc import cohort_table

DELTA = 1e-5
# The agent's ledger composes with dp-accounting's PLD at this discretisation (agent/privacy/accounting.py).
PLD_DISCRETIZATION = 1e-3
PARAMETERS = [("w", np.zeros(4, np.float32)), ("b", np.zeros((), np.float32))]
# On the accounting grid, and the policy's default lower bound: small next to the counts (about 20).
SIGMA = 0.5


def with_holes(table: pa.Table, seed: int) -> pa.Table:
    """``table`` with about 6 % of the cells of each used column missing: null, NaN or an infinity."""
    rng = np.random.default_rng(seed)
    columns = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        holes = rng.random(len(column)) < 0.06
        if name in ("age", "bmi"):
            # NaN and ±inf in some rows, a null in others: each is a missing value.
            values = column.to_numpy(zero_copy_only=False).copy()
            values[holes] = rng.choice([np.nan, np.inf, -np.inf], int(holes.sum()))
            column = pa.array(values, mask=holes & (rng.random(len(column)) < 0.3))
        elif name in ("sex", "outcome"):
            column = pc.if_else(pa.array(holes), pa.scalar(None, column.type), column)
        columns[name] = column
    return pa.table(columns)


def dropped_rows(table: pa.Table) -> np.ndarray:
    """Which rows hold a missing value in a column the package reads (computed apart from the agent)."""
    missing = np.zeros(table.num_rows, bool)
    for name in ("age", "bmi", "outcome"):
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        missing |= ~np.isfinite(values)
    missing |= np.asarray(table.column("sex").is_null().to_numpy(zero_copy_only=False))
    return missing


def visits(seed: int) -> pa.Table:
    """Patient i has 1 + i % 6 rows, shuffled; ~6 % of cells missing."""
    ids = [f"patient-{i:04d}" for i in range(150) for _ in range(1 + i % 6)]
    order = np.random.default_rng(seed).permutation(len(ids))
    table = with_holes(cohort_table(len(ids), seed=seed).drop_columns(["patient_id"]), seed)
    return table.append_column("patient_id", pa.array([ids[i] for i in order]))


def policy_text(publisher: AgentKey) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    datasets = "".join(
        f"""
[[datasets]]
id = "{name}"
epsilon_budget = 100.0
delta = {DELTA}
min_cohort_size = 20
forbidden_columns = ["patient_id"]
{extra}
"""
        for name, extra in (("visits", "require_privacy_unit = true\nmax_rows_per_unit = 4"), ("rows", ""))
    )
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["visits", "rows"]
task_kinds = ["dp_gradient", "dp_evaluate"]
{datasets}
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
        self.tables = {"visits": visits(seed=3), "rows": with_holes(cohort_table(500, seed=4), seed=4)}
        pq.write_table(self.tables["visits"], data / "visits.parquet")
        pq.write_table(self.tables["rows"], data / "rows.parquet")
        datasets = "".join(
            f'\n[[datasets]]\nid = "{name}"\npath = "{data / name}.parquet"\n'
            f'columns = ["age", "sex", "bmi", "outcome"]\n{unit}'
            for name, unit in (("visits", 'privacy_unit = "patient_id"\n'), ("rows", ""))
        )
        config = write_config(directory, pki, policy=policy_text(publisher), extra=datasets)
        self.directory = directory
        self.process: InProcessAgent = start_in_process(config)
        self.client = AgentClient(f"127.0.0.1:{self.process.port}", pki.credentials(), server_name="localhost",
                                  timeout=60)
        self.package_digest = self.client.upload_package(good_package(publisher)).digest

    def spec(self, kind: int, dataset: str, **hyper: Any) -> pb.TaskSpec:
        return pb.TaskSpec(
            kind=kind,
            package_digest=self.package_digest,
            dataset_id=dataset,
            hyperparameters=pb.DPHyperparameters(**hyper),
            run_id="dropped-run",
            round=1,
            purpose="research",
        )

    def charged(self, dataset: str) -> pb.Budget:
        return self.client.get_budget(dataset)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.directory / "state" / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["kind"] == kind]


@pytest.fixture
def site(tmp_path: Path, pki: Pki) -> Iterator[Site]:
    # A fresh agent per test: each test's first task is its budget group's first charge.
    started = Site(tmp_path, pki, new_key())
    yield started
    started.client.close()
    started.process.stop()


def independent_epsilon(gaussians: int) -> float:
    """ε of ``gaussians`` Gaussian releases of noise multiplier SIGMA on the whole cohort, composed by
    dp-accounting's own PLD accountant (add or remove one unit)."""
    accountant = pld_privacy_accountant.PLDAccountant(
        NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=PLD_DISCRETIZATION
    )
    accountant.compose(ComposedDpEvent([GaussianDpEvent(SIGMA)] * gaussians))
    return float(accountant.get_epsilon(DELTA))


@pytest.mark.parametrize("dataset", ["visits", "rows"])
def test_an_evaluation_releases_the_units_dropped_for_a_missing_value(site: Site, dataset: str) -> None:
    table = site.tables[dataset]
    dropped = dropped_rows(table)
    if dataset == "visits":
        units = np.array(table.column("patient_id").to_pylist())
        true_count = len(set(units[dropped]))  # patients with a dropped row, once each
        assert true_count < int(dropped.sum())  # some patient lost several rows: a row count would differ
    else:
        true_count = int(dropped.sum())  # one row, one unit
    assert true_count > 10
    message = site.spec(
        pb.TASK_KIND_DP_EVALUATE, dataset, noise_multiplier=SIGMA, sampling_rate=1.0, release_dropped_units=True
    )
    run = site.client.run_task(message, PARAMETERS)
    released = dropped_units(run)
    assert released is not None and run.scalars[DROPPED_UNITS] == released
    # Noise SD SIGMA = 0.5: 6 SDs.
    assert released == pytest.approx(true_count, abs=3.0)
    assert NOISY_COUNT not in run.scalars
    # Charged as two Gaussians (the metric sums, the count) on the whole cohort, composed by dp-accounting.
    assert run.epsilon_charged == pytest.approx(independent_epsilon(2), rel=1e-6)
    assert run.epsilon_charged > independent_epsilon(1) * 1.2
    assert site.charged(dataset).epsilon_spent == pytest.approx(run.epsilon_charged, rel=1e-6)
    # The hospital's log records the setting and names the count among what left.
    (started,) = [e for e in site.audit("task.started") if e["task_id"] == run.task_id]
    (finished,) = [e for e in site.audit("task.finished") if e["task_id"] == run.task_id]
    assert started["hyperparameters"]["release_dropped_units"] is True
    assert DROPPED_UNITS in finished["released"]


def test_without_asking_nothing_is_released_and_the_charge_is_one_gaussian(site: Site) -> None:
    run = site.client.run_task(
        site.spec(pb.TASK_KIND_DP_EVALUATE, "rows", noise_multiplier=SIGMA, sampling_rate=1.0), PARAMETERS
    )
    assert dropped_units(run) is None and DROPPED_UNITS not in run.scalars
    assert run.epsilon_charged == pytest.approx(independent_epsilon(1), rel=1e-6)
    (started,) = [e for e in site.audit("task.started") if e["task_id"] == run.task_id]
    assert started["hyperparameters"]["release_dropped_units"] is False


@pytest.mark.parametrize(
    ("kind", "hyper", "text"),
    [
        (pb.TASK_KIND_DP_EVALUATE, {"sampling_rate": 0.5}, "a sampled task does not read the whole cohort"),
        (pb.TASK_KIND_DP_GRADIENT, {"sampling_rate": 1.0, "clip_norm": 1.0}, "dp_gradient does not release"),
    ],
)
def test_a_task_that_cannot_release_the_count_is_refused_before_any_charge(
    site: Site, kind: int, hyper: dict[str, Any], text: str
) -> None:
    charged = site.charged("rows").tasks_charged
    message = site.spec(kind, "rows", noise_multiplier=SIGMA, release_dropped_units=True, **hyper)
    with pytest.raises(AgentRpcError) as refused:
        site.client.run_task(message, PARAMETERS)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert text in refused.value.details
    assert site.charged("rows").tasks_charged == charged
