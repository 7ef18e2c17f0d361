"""The minimum cohort counts the rows a task can use, where the rows are read (issue 19, items 1 and 2).

End to end against a real agent (mTLS, worker processes, SQLite ledger, audit log):
a package that reads a mostly-null column, and a dataset replaced after admission
while the coordinator holds the parameter upload, are both refused at read time with
the documented refusal, and nothing is charged.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import parse_manifest
from agent.runtime.errors import CohortTooSmallError
from agent.runtime.rows import ArrowRowSource, MinimumRows, RowBatch
from agent.tasks.computation import MIN_COHORT_RULE, compute_task
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.tensors import chunk_views
from agent.tasks.worker import TaskInputError, WorkerMemory
from edge_sponsor.coordinator.tasks import ParameterSet
from tests.packages.package_builders import manifest_and_graphs
from tests.tasks import test_run_task_rpc as rpc
from tests.tasks.test_computation import job
from tests.tasks.test_run_task_rpc import PARAMETERS, ROWS, Agent, cohort_table, run, spec

MINIMUM = 20  # the "cohort" dataset's min_cohort_size in test_run_task_rpc's policy

# The real agent of test_run_task_rpc: "cohort" (400 rows, min_cohort_size 20) and the package.
publisher = rpc.publisher
agent = rpc.agent


def with_bmi_measured(rows: int, measured: int) -> pa.Table:
    """``rows`` patients, of whom only the first ``measured`` have the (package-read) bmi column."""
    table = cohort_table(rows)
    bmi = pa.array([v if i < measured else None for i, v in enumerate(table["bmi"].to_pylist())], pa.float32())
    return table.set_column(table.schema.get_field_index("bmi"), "bmi", bmi)


def replace_dataset(agent: Agent, table: pa.Table) -> None:
    """Replaces the "cohort" file at once (written aside, then renamed over it), as an ETL job would."""
    path = agent.directory / "data" / "cohort.parquet"
    pq.write_table(table, path.with_suffix(".new"))
    os.replace(path.with_suffix(".new"), path)


def refusal(agent: Agent) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        run(agent, spec(agent))
    return refused.value


def assert_nothing_charged(agent: Agent) -> None:
    budget = agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)
    assert (budget.tasks_charged, budget.epsilon_spent, budget.epsilon_reserved) == (0, 0.0, 0.0)
    failed = agent.audit("task.failed")[-1]
    assert (failed["failure"], failed["rule"]) == ("task_error", MIN_COHORT_RULE)
    assert (failed["charged"], failed["epsilon_charged"]) == (False, 0.0)


def test_a_package_reading_a_mostly_null_column_is_refused_and_not_charged(agent: Agent) -> None:
    # 400 rows pass the admission check; only 3 have the lab value the package reads.
    replace_dataset(agent, with_bmi_measured(ROWS, 3))
    refused = refusal(agent)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"than the minimum cohort size of {MINIMUM}" in (refused.details() or "")
    admitted = [e for e in agent.audit("rpc.decision") if e["method"] == "RunTask"][-1]
    assert admitted["rule"] == "task.allowed"  # the total row count passed; the usable rows did not
    assert_nothing_charged(agent)


def test_no_usable_row_and_one_short_of_the_minimum_are_told_alike(agent: Agent) -> None:
    told = []
    for measured in (0, MINIMUM - 1):
        replace_dataset(agent, with_bmi_measured(ROWS, measured))
        refused = refusal(agent)
        told.append((refused.code(), refused.details()))
    assert told[0] == told[1]
    assert str(MINIMUM - 1) not in (told[0][1] or "").replace(f"{MINIMUM}", "")
    replace_dataset(agent, with_bmi_measured(ROWS, MINIMUM))
    assert set(run(agent, spec(agent)).tensors) == {"w", "b"}  # at the minimum the task runs


def test_a_dataset_that_shrinks_after_admission_is_refused_where_the_rows_are_read(agent: Agent) -> None:
    # The coordinator holds its parameter upload after admission: a window it controls.
    outgoing = ParameterSet.of(PARAMETERS)
    message = spec(agent)
    message.parameters.extend(tensor.header for tensor in outgoing.tensors)
    admitted = threading.Event()

    def requests() -> Iterator[pb.RunTaskRequest]:
        yield pb.RunTaskRequest(spec=message)
        assert admitted.wait(timeout=30)
        for index, tensor in enumerate(outgoing.tensors):
            for offset, data in chunk_views(tensor.wire):
                chunk = pb.TensorChunk(tensor_index=index, offset=offset, data=bytes(data))
                yield pb.RunTaskRequest(parameter_chunk=chunk)

    events = []
    with pytest.raises(grpc.RpcError) as refused:
        for event in agent.stub.RunTask(requests(), timeout=60):
            events.append(event.WhichOneof("event"))
            if events[-1] == "accepted":
                replace_dataset(agent, cohort_table(MINIMUM - 1))  # admitted on 400 rows, now 19
                admitted.set()
    assert events == ["accepted"]  # never "computing": no row was fed to the package
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"than the minimum cohort size of {MINIMUM}" in (refused.value.details() or "")
    assert_nothing_charged(agent)


# ---------------------------------------------------------------- in the worker, without a daemon


def test_the_worker_counts_usable_rows_before_it_computes(tmp_path: Path) -> None:
    pq.write_table(with_bmi_measured(400, MINIMUM - 1), tmp_path / "sparse.parquet")
    stages: list[str] = []
    sparse = job(tmp_path / "sparse.parquet", DpGradient(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5),
                 {"w": np.zeros(4, np.float32), "b": np.zeros((), np.float32)})
    with pytest.raises(TaskInputError) as refused:
        compute_task(sparse, lambda fraction, stage: stages.append(stage), WorkerMemory())
    assert refused.value.rule == MIN_COHORT_RULE
    assert stages == []  # refused before "computing": the runner refunds it


def test_the_count_is_the_rows_a_pass_yields(tmp_path: Path) -> None:
    table = with_bmi_measured(300, 120)
    # Nulls in a dictionary-encoded column and in the label count too.
    sex = pa.array([None if i % 7 == 0 else s for i, s in enumerate(table["sex"].to_pylist())]).dictionary_encode()
    outcome = pa.array([None if i % 11 == 0 else v for i, v in enumerate(table["outcome"].to_pylist())], pa.float32())
    table = table.set_column(table.schema.get_field_index("sex"), "sex", sex)
    table = table.set_column(table.schema.get_field_index("outcome"), "outcome", outcome)
    pq.write_table(table, tmp_path / "nulls.parquet", row_group_size=64)
    manifest = parse_manifest(manifest_and_graphs()[0])
    rows = ArrowRowSource(ds.dataset(tmp_path / "nulls.parquet"), manifest, batch_size=50)
    assert rows.count_usable() == sum(batch.size for batch in rows.batches()) > 0


def test_a_float_written_as_nan_or_infinity_is_missing_like_a_null(tmp_path: Path) -> None:
    """pandas, Spark and R often write an unmeasured float as NaN: such a row is not usable, as a null is not."""
    table = cohort_table(300)
    bmi = [v if i < 50 else (float("nan") if i % 2 else float("inf")) for i, v in enumerate(table["bmi"].to_pylist())]
    table = table.set_column(table.schema.get_field_index("bmi"), "bmi", pa.array(bmi, pa.float32()))
    pq.write_table(table, tmp_path / "nan.parquet", row_group_size=64)
    manifest = parse_manifest(manifest_and_graphs()[0])
    rows = ArrowRowSource(ds.dataset(tmp_path / "nan.parquet"), manifest, batch_size=50)
    assert rows.count_usable() == sum(batch.size for batch in rows.batches()) == 50


class _Shrinking:
    """Rows whose second pass finds fewer rows than the first (files replaced mid-task)."""

    def __init__(self, sizes: list[int]) -> None:
        self._sizes = sizes

    def batches(self) -> Iterator[RowBatch]:
        size = self._sizes.pop(0)
        yield RowBatch(np.zeros((size, 4), np.float32), np.zeros(size, np.float32))


def test_every_later_pass_is_held_to_the_minimum_too() -> None:
    rows = MinimumRows(_Shrinking([MINIMUM, MINIMUM - 1]), MINIMUM)
    assert sum(batch.size for batch in rows.batches()) == MINIMUM
    passed = []
    with pytest.raises(CohortTooSmallError):
        for batch in rows.batches():
            passed.append(batch.size)
    assert passed == [MINIMUM - 1]  # raised after the last batch, before the caller's sum is used
