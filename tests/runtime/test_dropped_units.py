"""Counting the privacy units that lost a row to a missing value, where the task reads its rows.

Grouped (agent.runtime.unit_rows: in memory and spilled to partitions) and ungrouped
(agent.runtime.rows.ArrowRowSource); references are computed with pandas from the frame
written, independently of the agent's reading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from agent.datasets.errors import DatasetSpecError
from agent.datasets.inspection import open_dataset
from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.packages.manifest import DROPPED_UNITS, NOISY_COUNT, Manifest
from agent.runtime.errors import HyperparameterError
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import ArrowRowSource, DroppedUnitsError, MinimumRows, RowBatch, dropped_units
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import EvaluationSettings, Randomness, dp_evaluate
from agent.runtime.unit_rows import UnitRowSource
from agent.tasks.computation import TaskJob, compute_task
from agent.tasks.kinds.dp_evaluate import DpEvaluate
from agent.tasks.worker import WorkerMemory
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import ZooModel, build_logistic_regression
from tests.runtime.helpers import manifest_for, random_parameters

FEATURES = 3
FEATURE_COLUMNS = [f"f{i}" for i in range(FEATURES)]


@pytest.fixture(scope="module")
def model_and_manifest() -> tuple[ZooModel, dict[str, bytes], Manifest]:
    model = build_logistic_regression(FEATURES, l2=0.01)
    graphs = zoo_graphs(model)
    return model, graphs, manifest_for(model, graphs)


def _frame(rng: np.random.Generator, patients: int, most_rows: int, missing: float) -> pd.DataFrame:
    """Rows of ``patients`` patients (1..most_rows each), shuffled, a ``missing`` share of the
    cells of used columns missing as null, NaN or an infinity."""
    sizes = rng.integers(1, most_rows + 1, patients)
    ids = np.repeat(np.arange(patients), sizes)
    frame = pd.DataFrame({name: rng.normal(size=ids.size) for name in FEATURE_COLUMNS})
    frame["label"] = rng.integers(0, 2, ids.size).astype(np.float64)
    for name in [*FEATURE_COLUMNS, "label"]:
        holes = rng.random(ids.size) < missing
        frame.loc[holes, name] = rng.choice([np.nan, np.inf, -np.inf], int(holes.sum()))
    frame["patient_id"] = [f"p{i:05d}" for i in ids]
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _dropped(frame: pd.DataFrame) -> pd.Series:
    """Which rows a task drops: a missing value (null, NaN, ±inf) in a used column."""
    values = frame[[*FEATURE_COLUMNS, "label"]].to_numpy(np.float64)
    return pd.Series(~np.isfinite(values).all(axis=1), index=frame.index)


def _table(frame: pd.DataFrame, *, nulls: bool) -> pa.Table:
    """The frame as Arrow; with ``nulls``, NaN written as a null (the other missing spelling)."""
    columns: dict[str, Any] = {}
    for name in frame.columns:
        values = frame[name].to_numpy()
        if name != "patient_id" and nulls:
            columns[name] = pa.array(values, mask=np.isnan(values))
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def _write(frame: pd.DataFrame, directory: Path, *, unit: bool = True, files: int = 3) -> DatasetSpec:
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(frame), files + 1).astype(int)
    for index in range(files):
        part = frame.iloc[bounds[index] : bounds[index + 1]]
        pq.write_table(_table(part, nulls=index % 2 == 0), directory / f"part-{index}.parquet")
    return DatasetSpec(
        id="cohort",
        path=directory,
        format=DatasetFormat.PARQUET,
        columns=(*FEATURE_COLUMNS, "label"),
        privacy_unit="patient_id" if unit else None,
    )


def _grouped(spec: DatasetSpec, manifest: Manifest, **options: Any) -> UnitRowSource:
    settings: dict[str, Any] = {"max_rows_per_unit": 64, "memory_bytes": 256 * 2**20, "count_dropped": True} | options
    return UnitRowSource(open_dataset(spec, with_unit=True), manifest, "patient_id", **settings)


def test_a_unit_with_some_rows_dropped_and_one_with_all_dropped_count_once_each(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    _, _, manifest = model_and_manifest
    nan, inf = np.nan, np.inf
    frame = pd.DataFrame(
        {
            # a: 1 of 3 rows dropped; b: both rows dropped (NaN, then a null label); c: none;
            # d: three rows dropped, each for another column, one usable.
            "patient_id": ["a", "a", "a", "b", "b", "c", "c", "d", "d", "d", "d"],
            "f0": [0.1, nan, 0.3, nan, 0.5, 0.6, 0.7, inf, 0.9, 1.0, 1.1],
            "f1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, -inf, 1.0, 1.1],
            "f2": [0.1] * 11,
            "label": [0.0, 1.0, 0.0, 1.0, nan, 0.0, 1.0, 0.0, 1.0, nan, 1.0],
        }
    )
    spec = _write(frame, tmp_path / "data", files=2)
    with _grouped(spec, manifest, batch_size=3) as source:
        assert source.dropped_units() is None  # nothing read yet
        assert source.prepare() == 3  # a, c, d have a usable row; b has none
        assert source.dropped_units() == 3  # a, b, d: once each, whatever their number of dropped rows
        assert sum(batch.size for batch in source.batches()) == 5  # a: 2, c: 2, d: 1
        assert dropped_units(MinimumRows(source, 1)) == 3


@pytest.mark.parametrize("memory", [256 * 2**20, 48 * 1024], ids=["in-memory", "spilled"])
def test_the_grouped_count_is_the_patients_with_a_dropped_row(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest], memory: int
) -> None:
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(11), patients=1500, most_rows=6, missing=0.04)
    dropped = _dropped(frame)
    expected_dropped = frame.loc[dropped, "patient_id"].nunique()
    expected_units = frame.loc[~dropped, "patient_id"].nunique()
    assert 0 < expected_dropped < frame["patient_id"].nunique()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spec = _write(frame, tmp_path / "data", files=4)
    with _grouped(spec, manifest, memory_bytes=memory, scratch=scratch, batch_size=400) as source:
        assert source.prepare() == expected_units
        assert source.dropped_units() == expected_dropped
        # The markers never reach the rows fed to a graph: exactly the usable rows are there.
        assert sum(batch.size for batch in source.batches()) == int((~dropped).sum())
        if memory < 2**20:
            assert len(list(next(scratch.iterdir()).glob("group-*.x.npy"))) > 1  # it did spill


def test_the_cap_on_rows_per_unit_neither_hides_nor_counts_a_dropped_row(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    _, _, manifest = model_and_manifest
    rng = np.random.default_rng(5)
    frame = _frame(rng, patients=200, most_rows=8, missing=0.03)
    dropped = _dropped(frame)
    spec = _write(frame, tmp_path / "data")
    with _grouped(spec, manifest, max_rows_per_unit=1, rng=np.random.default_rng(1)) as source:
        source.prepare()
        assert source.dropped_units() == frame.loc[dropped, "patient_id"].nunique()
        # Each unit keeps one usable row: the marker does not take its place.
        assert all((batch.unit_sizes() == 1).all() for batch in source.batches())
        assert sum(batch.size for batch in source.batches()) == frame.loc[~dropped, "patient_id"].nunique()


def test_a_dropped_row_without_a_unit_is_not_counted_nor_refused(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    _, _, manifest = model_and_manifest
    directory = tmp_path / "data"
    directory.mkdir()
    rows = {name: [0.1, np.nan, 0.3, np.nan] for name in FEATURE_COLUMNS} | {"label": [0.0, 1.0, 0.0, 1.0]}
    pq.write_table(pa.table(rows).append_column("patient_id", pa.array(["a", None, "b", "b"])), directory / "a.parquet")
    spec = DatasetSpec(
        id="u", path=directory, format=DatasetFormat.PARQUET, columns=tuple(rows), privacy_unit="patient_id"
    )
    with _grouped(spec, manifest) as source:
        assert source.prepare() == 2
        assert source.dropped_units() == 1  # b; the row of no patient belongs to no unit


def test_the_ungrouped_count_is_the_rows_the_last_pass_dropped(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(3), patients=900, most_rows=1, missing=0.05)
    spec = _write(frame.drop(columns="patient_id"), tmp_path / "data", unit=False)
    source = ArrowRowSource.open(spec, manifest, batch_size=128)
    assert source.dropped_units() is None
    with pytest.raises(DroppedUnitsError, match="no complete pass"):
        dropped_units(source)
    assert source.count_usable() == int((~_dropped(frame)).sum())
    assert source.dropped_units() is None  # counting the usable rows is not the task's reading
    checked = MinimumRows(source, 10)
    assert sum(batch.size for batch in checked.batches()) == int((~_dropped(frame)).sum())
    assert dropped_units(checked) == dropped_units(source) == int(_dropped(frame).sum())


class _InMemory:
    def batches(self) -> Any:
        yield RowBatch(np.zeros((2, FEATURES), np.float32), np.zeros(2, np.float32))


def test_a_source_that_does_not_count_is_refused_with_a_typed_error() -> None:
    with pytest.raises(DroppedUnitsError, match="does not count"):
        dropped_units(_InMemory())
    with pytest.raises(DroppedUnitsError, match="no complete pass"):
        dropped_units(MinimumRows(_InMemory(), 1))


def test_dp_evaluate_releases_the_count_only_over_the_whole_cohort(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    model, graphs, manifest = model_and_manifest
    rng = np.random.default_rng(8)
    frame = _frame(rng, patients=400, most_rows=1, missing=0.05)
    spec = _write(frame.drop(columns="patient_id"), tmp_path / "data", unit=False)
    wrapper = CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION)
    parameters = random_parameters(model, rng)
    settings = EvaluationSettings(1e-9, 1.0, None, 1e-9)
    released = dp_evaluate(
        wrapper,
        ArrowRowSource.open(spec, manifest),
        parameters,
        settings,
        randomness=Randomness(noise=np.random.default_rng(0)),
    )
    assert released.dropped_units == pytest.approx(int(_dropped(frame).sum()), abs=1e-3)
    assert released.noisy_count is None
    without = dp_evaluate(wrapper, ArrowRowSource.open(spec, manifest), parameters, EvaluationSettings(1e-9))
    assert without.dropped_units is None
    with pytest.raises(HyperparameterError, match="sampling_rate: must be 1"):
        EvaluationSettings(1.0, 0.5, None, 1.0)


def test_a_task_on_grouped_rows_releases_the_patients_with_a_dropped_row(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest]
) -> None:
    model, graphs, manifest = model_and_manifest
    rng = np.random.default_rng(9)
    frame = _frame(rng, patients=300, most_rows=5, missing=0.05)
    dropped = _dropped(frame)
    spec = _write(frame, tmp_path / "data")
    # σ 0.1, so that the count's noise SD is 0.1 (a job built here, not a request: a request
    # with both counts needs σ >= 0.1·√3, the floor on what the task releases as a whole).
    profile = DpEvaluate(noise_multiplier=0.1, sampling_rate=1.0, release_noisy_count=True, release_dropped_units=True)
    job = TaskJob(
        profile=profile,
        manifest=manifest,
        graph=graphs["eval"],
        dataset=spec,
        parameters=random_parameters(model, rng),
        min_cohort_size=1,
    )
    released = compute_task(job, lambda fraction, stage: None, WorkerMemory())
    assert set(released.scalars) == {m.name for m in manifest.metrics} | {NOISY_COUNT, DROPPED_UNITS}
    assert released.scalars[DROPPED_UNITS] == pytest.approx(frame.loc[dropped, "patient_id"].nunique(), abs=1.0)
    assert released.scalars[NOISY_COUNT] == pytest.approx(frame.loc[~dropped, "patient_id"].nunique(), abs=1.0)


@pytest.mark.parametrize("memory", [256 * 2**20, 4 * 1024], ids=["in-memory", "spilled"])
@pytest.mark.parametrize("count", [True, False], ids=["counting", "not-counting"])
def test_a_null_unit_stored_in_a_dictionary_is_no_unit_and_the_cap_holds(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest], memory: int, count: bool
) -> None:
    """A dictionary-encoded unit column may store its null as a dictionary value (pyarrow's
    null_encoding="encode"), which the array's null_count does not see: a dropped row with it
    belongs to no patient, and every patient keeps at most max_rows_per_unit rows."""
    _, _, manifest = model_and_manifest
    patients = 300
    ids: list[str | None] = [f"p{i:04d}" for i in np.repeat(np.arange(patients), 4)]
    f0 = np.ones(len(ids))
    f0[::4] = np.nan  # every patient loses its first row
    ids += [None] * 3  # three rows without a patient, all dropped
    f0 = np.concatenate([f0, [np.nan] * 3])
    unit = pa.array(ids).dictionary_encode(null_encoding="encode")
    assert unit.null_count == 0 and unit.dictionary.null_count == 1
    ones = np.ones(len(ids))
    table = pa.table({"f0": f0, "f1": ones, "f2": ones, "label": np.zeros(len(ids)), "patient_id": unit})
    data = tmp_path / "data"
    data.mkdir()
    # Arrow IPC keeps such a dictionary (Parquet cannot write it).
    feather.write_feather(table, data / "part.arrow", compression="uncompressed", chunksize=97)
    spec = DatasetSpec(
        id="cohort",
        path=data,
        format=DatasetFormat.ARROW_IPC,
        columns=(*FEATURE_COLUMNS, "label"),
        privacy_unit="patient_id",
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    options: dict[str, Any] = {"max_rows_per_unit": 2, "memory_bytes": memory, "count_dropped": count}
    with _grouped(spec, manifest, scratch=scratch, batch_size=97, **options) as source:
        assert source.prepare() == patients
        assert source.dropped_units() == (patients if count else None)
        sizes = [size for batch in source.batches() for size in batch.unit_sizes()]
    assert len(sizes) == patients and max(sizes) == 2


def test_a_unit_column_named_like_the_agents_own_is_refused_at_registration(tmp_path: Path) -> None:
    for name in ("agent::dropped", "agent::order"):
        with pytest.raises(DatasetSpecError, match=f"privacy_unit '{name}': column names starting with 'agent::'"):
            DatasetSpec(id="cohort", path=tmp_path, format=DatasetFormat.PARQUET, privacy_unit=name)


@pytest.mark.parametrize("memory", [256 * 2**20, 48 * 1024], ids=["in-memory", "spilled"])
def test_removing_one_patient_moves_the_count_by_at_most_one(
    tmp_path: Path, model_and_manifest: tuple[ZooModel, dict[str, bytes], Manifest], memory: int
) -> None:
    """The released count's sensitivity is 1: removing every row of one patient (whatever they
    hold: several dropped rows, all rows dropped, none) moves the count the agent reads by at
    most 1, in memory and through the spill partitions."""
    _, _, manifest = model_and_manifest
    frame = _frame(np.random.default_rng(21), patients=400, most_rows=6, missing=0.08)
    dropped = _dropped(frame)
    lost = frame.loc[dropped].groupby("patient_id").size()
    kept = frame.loc[~dropped].groupby("patient_id").size()
    removed = [
        str(lost.idxmax()),  # the most dropped rows
        str(next(p for p in lost.index if p not in kept.index)),  # every row dropped
        str(next(p for p in kept.index if p not in lost.index)),  # none dropped
    ]

    def count(data: pd.DataFrame, name: str) -> int:
        scratch = tmp_path / f"scratch-{name}"
        scratch.mkdir()
        spec = _write(data.reset_index(drop=True), tmp_path / f"data-{name}")
        with _grouped(spec, manifest, memory_bytes=memory, scratch=scratch, batch_size=300) as source:
            source.prepare()
            released = source.dropped_units()
        assert released is not None
        return released

    everyone = count(frame, "all")
    assert everyone == frame.loc[dropped, "patient_id"].nunique()
    for patient in removed:
        without = count(frame[frame["patient_id"] != patient], patient)
        assert abs(everyone - without) <= 1
        assert everyone - without == int(patient in lost.index)
