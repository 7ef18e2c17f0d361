"""The data path: projection, null dropping, preprocessing, typed column errors, streaming."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.packages.manifest import Manifest, parse_manifest
from agent.runtime.errors import ColumnMissingError, ColumnTypeError
from agent.runtime.rows import ArrowRowSource

GRAPHS = {"grad": {"file": "grad.onnx", "sha256": "0" * 64}}
HYPER = {
    name: {"min": 0.1, "max": 1.0} for name in ("clip_norm", "noise_multiplier", "sampling_rate", "learning_rate")
} | {"local_steps": {"min": 1, "max": 10}}


REPO = Path(__file__).resolve().parents[2]


def manifest_with(features: list[dict[str, Any]], label: dict[str, Any]) -> Manifest:
    return parse_manifest(
        {
            "format_version": 1,
            "name": "acme/rows",
            "version": "1.0.0",
            "publisher": "acme",
            "description": "",
            "task_kinds": ["dp_gradient"],
            "parameters": [{"name": "w", "dtype": "float32", "shape": [2]}],
            "inputs": {"features": features, "label": label},
            "metrics": [],
            "graphs": GRAPHS,
            "hyperparameters": HYPER,
        }
    )


def feature(column: str, dtype: str, kind: str = "none", **extra: Any) -> dict[str, Any]:
    return {"column": column, "dtype": dtype, "preprocessing": {"kind": kind, **extra}}


BINARY = {"kind": "binary", "column": "outcome", "dtype": "float32", "shape": []}
MIXED = manifest_with(
    [
        feature("age", "float64", "standardise", mean=50.0, std=10.0),
        feature("sex", "string", "one_hot", categories=["F", "M"]),
        feature("smoker", "bool"),
        feature("stage", "int64", "one_hot", categories=[1, 2, 3]),
        feature("bmi", "float32"),
        feature("flag", "bool", "one_hot", categories=[True]),
    ],
    BINARY,
)
SCHEMA = pa.schema(
    [
        ("age", pa.float64()),
        ("sex", pa.string()),
        ("smoker", pa.bool_()),
        ("stage", pa.int64()),
        ("bmi", pa.float32()),
        ("flag", pa.bool_()),
        ("outcome", pa.int8()),
        ("secret", pa.string()),
    ]
)


def reference_row(row: dict[str, Any]) -> list[float]:
    return [
        (row["age"] - 50.0) / 10.0,
        float(row["sex"] == "F"),
        float(row["sex"] == "M"),
        float(row["smoker"]),
        *(float(row["stage"] == k) for k in (1, 2, 3)),
        float(np.float32(row["bmi"])),
        float(row["flag"] is True),
    ]


def collect(source: ArrowRowSource) -> tuple[np.ndarray, np.ndarray]:
    batches = list(source.batches())
    if not batches:
        return np.zeros((0, MIXED.num_features), np.float32), np.zeros(0, np.float32)
    return np.concatenate([b.x for b in batches]), np.concatenate([b.y for b in batches])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "age": maybe(st.floats(-1e3, 1e3)),
            "sex": maybe(st.sampled_from(["F", "M", "X", ""])),
            "smoker": maybe(st.booleans()),
            "stage": maybe(st.integers(-2, 5)),
            "bmi": maybe(st.floats(10, 60, width=32)),
            "flag": maybe(st.booleans()),
            "outcome": maybe(st.integers(0, 1)),
            "secret": maybe(st.text(max_size=3)),
        }
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, batch_size=st.integers(1, 16))
def test_preprocessing_matches_a_per_row_reference(rows: list[dict[str, Any]], batch_size: int) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    x, y = collect(ArrowRowSource(ds.dataset(table), MIXED, batch_size=batch_size))
    used = [r for r in rows if all(r[c] is not None for c in MIXED.columns)]  # "secret" may be null
    assert x.shape == (len(used), 9) and x.dtype == np.float32
    expected = np.array([reference_row(r) for r in used], np.float32).reshape(-1, 9)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, np.array([r["outcome"] for r in used], np.float32))


IMPUTED = manifest_with(
    [
        {
            **feature("age", "float64", "standardise", mean=50.0, std=10.0),
            "missing": {"value": 60.0, "indicator": True},
        },
        feature("sex", "string", "one_hot", categories=["F", "M"]),
        feature("smoker", "bool"),
        {**feature("stage", "int64"), "missing": {"value": 2, "indicator": False}},
        {**feature("bmi", "float32"), "missing": {"value": 27.5, "indicator": True}},
        feature("flag", "bool", "one_hot", categories=[True]),
    ],
    BINARY,
)


def imputed_reference_row(row: dict[str, Any]) -> list[float]:
    def value(name: str, imputed: float) -> float:
        present = row[name] is not None and math.isfinite(row[name])
        return float(row[name]) if present else imputed

    return [
        (value("age", 60.0) - 50.0) / 10.0,
        float(value("age", math.nan) != value("age", math.nan)),  # 1.0 where age was missing
        float(row["sex"] == "F"),
        float(row["sex"] == "M"),
        float(row["smoker"]),
        value("stage", 2.0),
        float(np.float32(value("bmi", 27.5))),
        float(value("bmi", math.nan) != value("bmi", math.nan)),
        float(row["flag"] is True),
    ]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {
                "age": maybe(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 44.5, 71.0])),
                "sex": maybe(st.sampled_from(["F", "M", "X"])),
                "smoker": maybe(st.booleans()),
                "stage": maybe(st.integers(0, 4)),
                "bmi": maybe(st.sampled_from([math.nan, 19.5, 31.25])),
                "flag": maybe(st.booleans()),
                "outcome": maybe(st.integers(0, 1)),
                "secret": st.none(),
            }
        ),
        max_size=30,
    ),
    batch_size=st.integers(1, 16),
)
def test_declared_missing_values_are_imputed_with_an_indicator_and_only_undeclared_ones_drop_the_row(
    rows: list[dict[str, Any]], batch_size: int
) -> None:
    assert IMPUTED.required_columns == ("sex", "smoker", "flag", "outcome")
    assert IMPUTED.num_features == 9
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    batches = list(ArrowRowSource(ds.dataset(table), IMPUTED, batch_size=batch_size).batches())
    x = np.concatenate([b.x for b in batches]) if batches else np.zeros((0, 9), np.float32)
    used = [r for r in rows if all(r[c] is not None for c in IMPUTED.required_columns)]
    expected = np.array([imputed_reference_row(r) for r in used], np.float32).reshape(-1, 9)
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("column", "missing", "field"),
    [
        (feature("age", "float64"), {"value": "sixty", "indicator": False}, "inputs.features[0].missing.value"),
        (feature("age", "float64"), {"value": 1.0, "indicator": 1}, "inputs.features[0].missing.indicator"),
        (feature("age", "float64"), {"value": 1.0}, "inputs.features[0].missing.indicator"),
        (feature("age", "float64"), {"value": 1.0, "indicator": False, "how": "mean"}, "missing.how"),
        (feature("sex", "string", "one_hot", categories=["F"]), {"value": 0, "indicator": False}, "[0].missing"),
        (feature("smoker", "bool"), {"value": 0, "indicator": False}, "inputs.features[0].missing"),
    ],
)
def test_a_missing_declaration_that_cannot_be_fed_names_its_field(
    column: dict[str, Any], missing: dict[str, Any], field: str
) -> None:
    from agent.packages import PackageRejected

    with pytest.raises(PackageRejected, match=re.escape(field)):
        manifest_with([{**column, "missing": missing}], BINARY)


def test_only_the_manifest_columns_are_read(tmp_path: Path) -> None:
    table = pa.Table.from_pylist(
        [{"age": 60.0, "sex": "F", "smoker": True, "stage": 2, "bmi": 22.5, "flag": False, "outcome": 1}],
        schema=SCHEMA,
    )
    pq.write_table(table, tmp_path / "d.parquet")
    seen: list[list[str]] = []
    dataset = ds.dataset(tmp_path / "d.parquet")
    original = dataset.to_batches

    def spy(**kwargs: Any) -> Any:
        seen.append(kwargs["columns"])
        return original(**kwargs)

    source = ArrowRowSource(dataset, MIXED)
    object.__setattr__(source, "_dataset", type("Spy", (), {"to_batches": staticmethod(spy)})())
    x, _ = collect(source)
    assert seen == [list(MIXED.columns)] and "secret" not in seen[0]
    np.testing.assert_allclose(x[0], [1.0, 1, 0, 1, 0, 1, 0, 22.5, 0])


def test_missing_column_and_allow_list_name_the_column(tmp_path: Path) -> None:
    table = pa.Table.from_pylist([], schema=SCHEMA.remove(SCHEMA.get_field_index("bmi")))
    with pytest.raises(ColumnMissingError) as caught:
        ArrowRowSource(ds.dataset(table), MIXED)
    assert caught.value.column == "bmi" and "'bmi'" in str(caught.value)

    pq.write_table(pa.Table.from_pylist([], schema=SCHEMA), tmp_path / "d.parquet")
    exposed = tuple(n for n in SCHEMA.names if n != "stage")
    spec = DatasetSpec("cohort", tmp_path / "d.parquet", DatasetFormat.PARQUET, columns=exposed)
    with pytest.raises(ColumnMissingError, match="'stage'"):
        ArrowRowSource.open(spec, MIXED)


@pytest.mark.parametrize(
    ("column", "arrow_type"),
    [
        ("age", pa.string()),  # standardise needs numbers
        ("sex", pa.int64()),  # string categories need strings
        ("smoker", pa.float64()),  # a bool declaration needs bools
        ("stage", pa.float64()),  # integer categories need integers
        ("outcome", pa.string()),  # a binary label needs numbers or bools
    ],
)
def test_wrong_types_name_the_column(column: str, arrow_type: pa.DataType) -> None:
    schema = SCHEMA.set(SCHEMA.get_field_index(column), pa.field(column, arrow_type))
    with pytest.raises(ColumnTypeError) as caught:
        ArrowRowSource(ds.dataset(pa.Table.from_pylist([], schema=schema)), MIXED)
    assert caught.value.column == column


def test_class_index_and_survival_labels() -> None:
    classes = manifest_with(
        [feature("a", "float64")],
        {"kind": "class_index", "column": "k", "dtype": "int64", "shape": [], "num_classes": 3},
    )
    table = pa.table({"a": [1.0, 2.0, None], "k": pa.array([2, 0, 1], pa.int32())})
    batch = next(ArrowRowSource(ds.dataset(table), classes).batches())
    assert batch.y.dtype == np.int64 and batch.y.tolist() == [2, 0]

    survival = manifest_with(
        [feature("a", "float64")],
        {"kind": "survival", "time_column": "t", "event_column": "e", "dtype": "float32", "shape": [2]},
    )
    table = pa.table({"a": [1.0, 2.0, 3.0], "t": [3.5, None, 1.0], "e": [True, False, False]})
    batch = next(ArrowRowSource(ds.dataset(table), survival).batches())
    assert batch.y.dtype == np.float32
    np.testing.assert_array_equal(batch.y, [[3.5, 1.0], [1.0, 0.0]])
    with pytest.raises(ColumnTypeError, match="'k'"):
        ArrowRowSource(ds.dataset(pa.table({"a": [1.0], "k": [1.5]})), classes)


def test_csv_integers_feed_float_declarations_and_dictionary_strings_decode(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pacsv.write_csv(pa.table({"a": [1, 2, 3], "s": ["M", "F", "Q"], "outcome": [1, 0, 1]}), path)
    manifest = manifest_with(
        [
            feature("a", "float64", "standardise", mean=2.0, std=0.5),
            feature("s", "string", "one_hot", categories=["F", "M"]),
        ],
        BINARY,
    )
    spec = DatasetSpec("csv", path, DatasetFormat.CSV)
    batch = next(ArrowRowSource.open(spec, manifest).batches())
    np.testing.assert_allclose(batch.x, [[-2, 0, 1], [0, 1, 0], [2, 0, 0]])

    encoded = pa.table({"a": [1.0, 2.0], "s": pa.array(["F", "M"]).dictionary_encode(), "outcome": [0.0, 1.0]})
    batch = next(ArrowRowSource(ds.dataset(encoded), manifest).batches())
    np.testing.assert_allclose(batch.x, [[-2, 1, 0], [0, 0, 1]])


def measure_streaming(tmp_path: Path) -> None:
    """400k rows x 9 float64 columns (~29 MB decoded) in 40 row groups, read 4096 rows at a time."""
    columns = [f"f{i}" for i in range(8)]
    manifest = manifest_with([feature(c, "float64") for c in columns], BINARY)
    rng = np.random.default_rng(0)
    writer = None
    for _ in range(40):
        chunk = pa.table({**{c: rng.normal(size=10_000) for c in columns}, "outcome": rng.integers(0, 2, 10_000)})
        writer = writer or pq.ParquetWriter(tmp_path / "big.parquet", chunk.schema, compression="none")
        writer.write_table(chunk)
    assert writer is not None
    writer.close()
    decoded_bytes = 400_000 * 9 * 8
    # Arrow decodes a Parquet row group (10k rows, 0.72 MB here) at a time: a few of them
    # plus the batch is the bound; a quarter of the file is well above that (loaded
    # machines measured up to 6.2 MB, a fifth of the file) and far below the file.
    bound = decoded_bytes / 4

    baseline = pa.total_allocated_bytes()
    batches = ArrowRowSource(ds.dataset(tmp_path / "big.parquet"), manifest, batch_size=4096).batches()
    first = next(batches)
    assert first.size == 4096
    assert pa.total_allocated_bytes() - baseline < bound  # nothing read ahead of need
    peak, rows = 0, first.size
    for batch in batches:
        rows += batch.size
        peak = max(peak, pa.total_allocated_bytes() - baseline)
    assert rows == 400_000
    assert peak < bound, f"peak Arrow allocation {peak} bytes"
    assert math.isfinite(float(first.x.sum()))


def test_streaming_is_lazy_and_memory_is_bounded_by_the_batch(tmp_path: Path) -> None:
    # Arrow's allocation counter is process-wide: measured in a fresh process so that
    # other tests' threads (agents still draining) cannot move it.
    code = (
        "from pathlib import Path; from tests.runtime.test_rows import measure_streaming; "
        f"measure_streaming(Path({str(tmp_path)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
