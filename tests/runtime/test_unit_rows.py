"""Rows grouped by privacy unit (agent.runtime.unit_rows) and tasks on such datasets (agent.tasks.computation).

The data are real Parquet files written here, in several files and not sorted by patient,
read through the same ``open_dataset`` the worker uses; references are computed with
pandas, independently of the agent's grouping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agent.datasets.inspection import open_dataset
from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.runtime.errors import PrivacyUnitError
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from agent.runtime.unit_rows import UnitRowSource
from agent.tasks.computation import MIN_COHORT_RULE, TaskJob, compute_task
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.worker import TaskInputError, WorkerMemory
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import build_logistic_regression
from tests.runtime.helpers import manifest_for, random_parameters

FEATURES = 4


def _frame(rng: np.random.Generator, patients: int, most_rows: int) -> pd.DataFrame:
    sizes = rng.integers(1, most_rows + 1, patients)
    ids = np.repeat(np.arange(patients), sizes)
    frame = pd.DataFrame({f"f{i}": rng.normal(size=ids.size) for i in range(FEATURES)})
    frame["label"] = rng.integers(0, 2, ids.size).astype(np.float64)
    frame["patient_id"] = [f"p{i:05d}" for i in ids]
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # not sorted by patient


def _write(frame: pd.DataFrame, directory: Path, files: int = 3) -> DatasetSpec:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    for index in range(files):
        part = frame.iloc[bounds[index] : bounds[index + 1]]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), directory / f"part-{index}.parquet")
    columns = tuple(name for name in frame.columns if name != "patient_id")
    return DatasetSpec(
        id="cohort", path=directory, format=DatasetFormat.PARQUET, columns=columns, privacy_unit="patient_id"
    )


def _one_file(tmp_path: Path, rows: dict[str, object], unit: str, values: pa.Array, dataset_id: str) -> DatasetSpec:
    """One Parquet file of ``rows`` plus the unit column ``unit``; every other column exposed."""
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table(rows).append_column(unit, values), tmp_path / "data" / "a.parquet")
    return DatasetSpec(
        id=dataset_id, path=tmp_path / "data", format=DatasetFormat.PARQUET, columns=tuple(rows), privacy_unit=unit
    )


@pytest.fixture(scope="module")
def model_and_manifest():  # type: ignore[no-untyped-def]
    model = build_logistic_regression(FEATURES, l2=0.01)
    graphs = zoo_graphs(model)
    return model, graphs, manifest_for(model, graphs)


def _source(spec: DatasetSpec, manifest, **options) -> UnitRowSource:  # type: ignore[no-untyped-def]
    settings = {"max_rows_per_unit": 64, "memory_bytes": 256 * 2**20} | options
    return UnitRowSource(open_dataset(spec, with_unit=True), manifest, "patient_id", **settings)


def _grouped_rows(source: UnitRowSource) -> list[list[tuple[float, ...]]]:
    """Each unit's rows (feature tuples, sorted), units sorted: comparable across groupings."""
    units = []
    for batch in source.batches():
        assert batch.unit_starts is not None
        ends = np.append(batch.unit_starts[1:], batch.size)
        for start, end in zip(batch.unit_starts, ends, strict=True):
            units.append(sorted(tuple(float(v) for v in row) for row in batch.x[start:end]))
    return sorted(units)


def _expected_units(frame: pd.DataFrame) -> list[list[tuple[float, ...]]]:
    features = [f"f{i}" for i in range(FEATURES)]
    return sorted(
        sorted(tuple(float(np.float32(v)) for v in row) for row in group[features].to_numpy())
        for _, group in frame.groupby("patient_id")
    )


def test_rows_are_grouped_by_patient_across_unsorted_files(tmp_path, model_and_manifest) -> None:
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(0), patients=300, most_rows=6)
    with _source(_write(frame, tmp_path / "data"), manifest, batch_size=100) as source:
        assert source.prepare() == frame["patient_id"].nunique()
        assert sum(len(unit) for unit in _grouped_rows(source)) == len(frame)
        assert _grouped_rows(source) == _expected_units(frame)
        # Batches hold whole units and at most batch_size rows unless one unit is larger.
        assert all(batch.size <= 100 for batch in source.batches())


def test_a_dataset_larger_than_the_grouping_memory_is_spilled_by_unit_and_groups_the_same(
    tmp_path, model_and_manifest
) -> None:
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(1), patients=2000, most_rows=5)
    spec = _write(frame, tmp_path / "data", files=4)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with _source(spec, manifest, memory_bytes=64 * 1024, scratch=scratch, batch_size=512) as source:
        assert source.prepare() == 2000
        spilled = list(scratch.iterdir())
        assert len(spilled) == 1 and len(list(spilled[0].glob("group-*.x.npy"))) > 2
        assert _grouped_rows(source) == _expected_units(frame)
    assert list(scratch.iterdir()) == []  # closing removes the partitions


def test_max_rows_per_unit_keeps_a_random_subset_of_each_patient_chosen_by_the_agent(
    tmp_path, model_and_manifest
) -> None:
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(2), patients=50, most_rows=12)
    spec = _write(frame, tmp_path / "data")
    expected = {len(unit) for unit in _expected_units(frame)}
    assert max(expected) > 3
    choices = []
    for seed in (1, 2):
        with _source(spec, manifest, max_rows_per_unit=3, rng=np.random.default_rng(seed)) as source:
            source.prepare()
            grouped = _grouped_rows(source)
            assert max(len(unit) for unit in grouped) == 3
            assert sum(len(unit) for unit in grouped) == int(np.minimum(frame.groupby("patient_id").size(), 3).sum())
            choices.append(grouped)
            # Every pass reads the same rows: the choice is made once per task.
            assert _grouped_rows(source) == grouped
    assert choices[0] != choices[1]


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (pa.array(["a", None, "b", "c"]), "holds nulls"),
        (pa.array([[1], [2], [3], [4]]), "has type list"),
        (pa.array([1.5, 2.5, 3.5, 4.5]), "has type double"),
    ],
)
def test_a_unit_column_that_cannot_group_rows_is_refused(tmp_path, model_and_manifest, values, problem) -> None:
    _, _, manifest = model_and_manifest
    rows = {**{f"f{i}": [0.1, 0.2, 0.3, 0.4] for i in range(FEATURES)}, "label": [0.0, 1.0, 0.0, 1.0]}
    spec = _one_file(tmp_path, rows, "patient_id", values, "bad")
    with pytest.raises(PrivacyUnitError, match=problem):
        _source(spec, manifest).prepare()


def _job(spec: DatasetSpec, graphs, manifest, parameters, **options) -> TaskJob:  # type: ignore[no-untyped-def]
    profile = DpGradient(noise_multiplier=0.0, sampling_rate=1.0, clip_norm=0.5)
    return TaskJob(
        profile=profile,
        manifest=manifest,
        graph=graphs["grad"],
        dataset=spec,
        parameters=parameters,
        min_cohort_size=options.pop("min_cohort_size", 1),
        **options,
    )


def test_a_task_bounds_each_patient_not_each_row(tmp_path, model_and_manifest) -> None:
    model, graphs, manifest = model_and_manifest
    rng = np.random.default_rng(3)
    frame = _frame(rng, patients=120, most_rows=8)
    spec = _write(frame, tmp_path / "data")
    parameters = random_parameters(model, rng)
    released = compute_task(_job(spec, graphs, manifest, parameters), lambda f, s: None, WorkerMemory())
    total = np.concatenate([released.tensors[p.name].reshape(-1) for p in manifest.parameters]).astype(np.float64)

    # Reference: every row's unclipped gradient (one row at a time, no clipping at C = 1e300),
    # summed per patient with pandas, each sum clipped at C, added up.
    scan = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT, mode=RuntimeMode.SCAN)
    features = frame[[f"f{i}" for i in range(FEATURES)]].to_numpy(np.float32)
    labels = frame["label"].to_numpy(np.float32)
    rows = [RowBatch(features[i : i + 1], labels[i : i + 1]) for i in range(len(frame))]
    per_row = np.stack([scan.clipped_sum(parameters, row, 1e300) for row in rows])
    sums = pd.DataFrame(per_row).groupby(frame["patient_id"].to_numpy()).sum().to_numpy()
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    expected = (sums * np.minimum(1.0, 0.5 / norms)).sum(axis=0)
    np.testing.assert_allclose(total, expected, rtol=1e-5, atol=1e-6)
    per_row_clipped = (per_row * np.minimum(1.0, 0.5 / np.linalg.norm(per_row, axis=1, keepdims=True))).sum(axis=0)
    assert not np.allclose(total, per_row_clipped, rtol=1e-3)  # the rows of one patient were not clipped one by one


def test_the_cohort_minimum_counts_patients_and_refuses_before_computing(tmp_path, model_and_manifest) -> None:
    model, graphs, manifest = model_and_manifest
    rng = np.random.default_rng(4)
    frame = _frame(rng, patients=30, most_rows=5)
    assert len(frame) > 31
    spec = _write(frame, tmp_path / "data")
    stages: list[str] = []
    job = _job(spec, graphs, manifest, random_parameters(model, rng), min_cohort_size=31)
    with pytest.raises(TaskInputError, match="fewer patients") as refused:
        compute_task(job, lambda fraction, stage: stages.append(stage), WorkerMemory())
    assert refused.value.rule == MIN_COHORT_RULE
    assert stages == []  # refused before "computing": refunded, nothing read by a graph


def test_one_patient_with_most_rows_is_capped_while_its_partition_is_read(tmp_path, model_and_manifest) -> None:
    """Spilled by unit with a tiny grouping memory: the dominant patient's partition is capped
    batch by batch, and the result is the same as grouping in memory."""
    _, _, manifest = model_and_manifest
    rng = np.random.default_rng(7)
    frame = _frame(rng, patients=300, most_rows=3)
    crowd = pd.DataFrame({f"f{i}": rng.normal(size=20_000) for i in range(FEATURES)})
    crowd["label"] = 1.0
    crowd["patient_id"] = "p-everywhere"
    frame = pd.concat([frame, crowd]).sample(frac=1.0, random_state=2).reset_index(drop=True)
    spec = _write(frame, tmp_path / "data", files=5)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    options = {"memory_bytes": 96 * 1024, "scratch": scratch, "max_rows_per_unit": 4, "batch_size": 1000}
    with _source(spec, manifest, **options) as source:
        assert source.prepare() == 301
        grouped = _grouped_rows(source)
        assert max(len(unit) for unit in grouped) == 4
        assert sum(len(unit) for unit in grouped) == int(np.minimum(frame.groupby("patient_id").size(), 4).sum())


def test_fixed_size_binary_units_group_rows(tmp_path, model_and_manifest) -> None:
    _, _, manifest = model_and_manifest
    ids = [bytes([i % 7]) * 16 for i in range(40)]
    rows = {**{f"f{i}": np.arange(40, dtype=np.float64) for i in range(FEATURES)}, "label": [0.0] * 40}
    spec = _one_file(tmp_path, rows, "patient_uuid", pa.array(ids, pa.binary(16)), "uuids")
    source = UnitRowSource(
        open_dataset(spec, with_unit=True), manifest, "patient_uuid", max_rows_per_unit=64, memory_bytes=2**26
    )
    assert source.prepare() == 7


def test_a_refusal_about_the_unit_column_does_not_name_it(tmp_path, model_and_manifest) -> None:
    model, graphs, manifest = model_and_manifest
    rows = {**{f"f{i}": [0.1, 0.2, 0.3] for i in range(FEATURES)}, "label": [0.0, 1.0, 0.0]}
    spec = _one_file(tmp_path, rows, "secret_mrn", pa.array(["a", None, "b"]), "nulls")
    job = _job(spec, graphs, manifest, random_parameters(model, np.random.default_rng(0)))
    with pytest.raises(TaskInputError) as refused:
        compute_task(job, lambda fraction, stage: None, WorkerMemory())
    assert "privacy-unit column" in str(refused.value)
    assert "secret_mrn" not in str(refused.value)


def test_which_wrapper_bounds_units_depends_on_the_public_cap_only(model_and_manifest) -> None:
    _, graphs, manifest = model_and_manifest
    wrapper = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT)
    wrapper.set_max_rows_per_unit(64)
    assert wrapper.unit_mode is RuntimeMode.BATCHED
    wrapper.set_max_rows_per_unit(257)  # a unit could exceed a compiled run: every unit goes to Scan
    assert wrapper.unit_mode is RuntimeMode.SCAN
