"""Datasets the package did not expect: random Arrow types, nulls, NaN and infinities,
in Parquet, Arrow IPC and CSV. The data path yields rows or a typed column error
naming the column; nothing else escapes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.runtime.errors import ColumnError, NoUsableRowsError
from agent.runtime.rows import ArrowRowSource
from tests.runtime.test_rows import MIXED

COLUMNS = ("age", "sex", "smoker", "stage", "bmi", "flag", "outcome")

special_floats = st.floats(allow_nan=True, allow_infinity=True)
COLUMN_KINDS: dict[str, tuple[pa.DataType, st.SearchStrategy[Any]]] = {
    "int8": (pa.int8(), st.integers(-128, 127)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
    "float32": (pa.float32(), st.floats(width=32, allow_nan=True, allow_infinity=True)),
    "float64": (pa.float64(), special_floats),
    "string": (pa.string(), st.text(max_size=5)),
    "bool": (pa.bool_(), st.booleans()),
    "null": (pa.null(), st.none()),
    "list": (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), max_size=3)),
    "timestamp": (
        pa.timestamp("us"),
        st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)),
    ),
    "binary": (pa.binary(), st.binary(max_size=4)),
}


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    rows = draw(st.integers(0, 12))
    arrays = {}
    for name in COLUMNS:
        if draw(st.integers(0, 9)) == 0:
            continue  # a missing column
        arrow_type, values = COLUMN_KINDS[draw(st.sampled_from(sorted(COLUMN_KINDS)))]
        column = [draw(st.one_of(st.none(), values)) for _ in range(rows)]
        arrays[name] = pa.array(column, type=arrow_type)
    if not arrays:
        arrays["unrelated"] = pa.array(range(rows), type=pa.int64())
    return pa.table(arrays)


def write(table: pa.Table, directory: Path, fmt: DatasetFormat) -> Path | None:
    if fmt is DatasetFormat.PARQUET:
        path = directory / "data.parquet"
        pq.write_table(table, path)
    elif fmt is DatasetFormat.ARROW_IPC:
        path = directory / "data.arrow"
        feather.write_feather(table, path)
    else:
        path = directory / "data.csv"
        try:
            pacsv.write_csv(table, path)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None  # CSV cannot hold lists or binary: such a file cannot exist
    return path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), fmt=st.sampled_from(list(DatasetFormat)))
def test_unexpected_data_gives_rows_or_a_column_error(
    tmp_path_factory: pytest.TempPathFactory, table: pa.Table, fmt: DatasetFormat
) -> None:
    directory = tmp_path_factory.mktemp("data")
    path = write(table, directory, fmt)
    if path is None:
        return
    spec = DatasetSpec(id="fuzzed", path=path, format=fmt)
    try:
        source = ArrowRowSource.open(spec, MIXED, batch_size=4)
        batches = list(source.batches())
    except (ColumnError, NoUsableRowsError) as exc:
        assert str(exc)
        return
    for batch in batches:
        assert batch.x.shape[1] == MIXED.num_features
        assert batch.x.shape[0] == batch.y.shape[0]
