"""open_dataset and inspect_dataset over real Parquet, IPC and CSV files."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from agent.datasets import (
    ColumnInfo,
    DatasetFormat,
    DatasetInspection,
    DatasetSpec,
    DatasetUnavailableError,
    InspectionCache,
    inspect_dataset,
    open_dataset,
)

SCHEMA = pa.schema(
    [
        # Required, to check that nullability is reported from the file.
        pa.field("patient_age", pa.int64(), nullable=False),
        pa.field("weight", pa.float64()),
        pa.field("admitted", pa.timestamp("us")),
        pa.field("ward", pa.string()),
    ]
)


def make_table(rows: int) -> pa.Table:
    return pa.table(
        {
            "patient_age": list(range(rows)),
            "weight": [70.5 + i for i in range(rows)],
            "admitted": [1_700_000_000_000_000 + i for i in range(rows)],
            "ward": ["icu" if i % 2 else "er" for i in range(rows)],
        },
        schema=SCHEMA,
    )


def spec_for(path: Path, fmt: DatasetFormat, columns: tuple[str, ...] | None = None) -> DatasetSpec:
    return DatasetSpec(id="icu", path=path, format=fmt, columns=columns)


ALL_COLUMNS = (
    ColumnInfo("patient_age", "int64", False),
    ColumnInfo("weight", "double", True),
    ColumnInfo("admitted", "timestamp[us]", True),
    ColumnInfo("ward", "string", True),
)


def test_single_parquet_file(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(25), path)
    result = inspect_dataset(spec_for(path, DatasetFormat.PARQUET))
    assert result == DatasetInspection(
        spec=spec_for(path, DatasetFormat.PARQUET),
        available=True,
        reason="",
        columns=ALL_COLUMNS,
        row_count=25,
    )


def test_hive_partitioned_parquet_directory(tmp_path: Path) -> None:
    root = tmp_path / "icu"
    table = make_table(40).append_column("year", pa.array([2020 + i % 3 for i in range(40)]))
    ds.write_dataset(
        table, root, format="parquet", partitioning=["year"], partitioning_flavor="hive"
    )
    (root / "_SUCCESS").write_bytes(b"")  # Spark-style marker must be ignored
    assert len(list(root.glob("year=*/*.parquet"))) == 3

    result = inspect_dataset(spec_for(root, DatasetFormat.PARQUET))
    assert result.available, result.reason
    assert result.row_count == 40
    # The partition key becomes a column, after the file columns.
    assert [c.name for c in result.columns] == [*SCHEMA.names, "year"]
    assert result.columns[-1].arrow_type == "int32"

    loaded = open_dataset(spec_for(root, DatasetFormat.PARQUET)).to_table()
    assert sorted(loaded.column("year").to_pylist()) == sorted(2020 + i % 3 for i in range(40))


def test_feather_ipc_file(tmp_path: Path) -> None:
    path = tmp_path / "icu.feather"
    feather.write_feather(make_table(12), path)
    result = inspect_dataset(spec_for(path, DatasetFormat.ARROW_IPC))
    assert result.available, result.reason
    assert result.columns == ALL_COLUMNS
    assert result.row_count == 12


def test_csv_file_and_compressed_csv(tmp_path: Path) -> None:
    text = "age,weight,ward\n" + "".join(f"{i},{60 + i}.5,icu\n" for i in range(123))
    plain = tmp_path / "icu.csv"
    plain.write_text(text)
    packed = tmp_path / "icu.csv.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(text)

    for path in (plain, packed):
        result = inspect_dataset(spec_for(path, DatasetFormat.CSV))
        assert result.available, result.reason
        assert result.row_count == 123
        assert result.columns == (
            ColumnInfo("age", "int64", True),
            ColumnInfo("weight", "double", True),
            ColumnInfo("ward", "string", True),
        )


def test_exposed_columns_follow_file_order_and_are_enforced_on_read(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(5), path)
    # Allow-list order differs from the file order on purpose.
    spec = spec_for(path, DatasetFormat.PARQUET, columns=("ward", "patient_age"))

    result = inspect_dataset(spec)
    assert result.columns == (ColumnInfo("patient_age", "int64", False), ColumnInfo("ward", "string", True))
    assert result.row_count == 5

    dataset = open_dataset(spec)
    assert dataset.schema.names == ["patient_age", "ward"]
    assert dataset.to_table().column_names == ["patient_age", "ward"]
    with pytest.raises(pa.ArrowInvalid):
        dataset.to_table(columns=["weight"])


def test_missing_allow_listed_column_makes_dataset_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(5), path)
    result = inspect_dataset(spec_for(path, DatasetFormat.PARQUET, columns=("ward", "bmi")))
    assert not result.available
    assert "'bmi'" in result.reason
    assert "'ward'" not in result.reason
    assert result.columns == ()
    assert result.row_count is None


def test_vanished_file_is_unavailable_not_an_exception(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(5), path)
    spec = spec_for(path, DatasetFormat.PARQUET)
    assert inspect_dataset(spec).available
    path.unlink()

    result = inspect_dataset(spec)
    assert not result.available
    assert result.reason == f"path {path} does not exist"
    with pytest.raises(DatasetUnavailableError, match="does not exist"):
        open_dataset(spec)


def test_corrupt_parquet_footer(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    path.write_bytes(os.urandom(64) + b"definitely not parquet")
    result = inspect_dataset(spec_for(path, DatasetFormat.PARQUET))
    assert not result.available
    assert result.reason.startswith(f"cannot read {path}: ")
    assert "magic bytes" in result.reason


def test_one_corrupt_file_among_many_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "icu"
    root.mkdir()
    pq.write_table(make_table(5), root / "a.parquet")
    # Sorted after a.parquet, so schema inference (first file) does not see it;
    # only the row count, which reads every footer, does.
    (root / "b.parquet").write_bytes(b"garbage" * 10)
    result = inspect_dataset(spec_for(root, DatasetFormat.PARQUET))
    assert not result.available
    assert "b.parquet" in result.reason


def test_wrong_declared_format(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(5), path)
    result = inspect_dataset(spec_for(path, DatasetFormat.ARROW_IPC))
    assert not result.available
    assert "Not an Arrow file" in result.reason


def test_empty_directory(tmp_path: Path) -> None:
    root = tmp_path / "icu"
    root.mkdir()
    (root / "_SUCCESS").write_bytes(b"")
    result = inspect_dataset(spec_for(root, DatasetFormat.PARQUET))
    assert not result.available
    assert f"directory {root} contains no data files" in result.reason


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    path.write_text("")
    result = inspect_dataset(spec_for(path, DatasetFormat.CSV))
    assert not result.available
    assert "Empty CSV file" in result.reason


def test_malformed_csv_reason_does_not_quote_row_values(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    path.write_text("name,age\nalice,30\nJOHN SMITH,41,extra-secret\n")
    result = inspect_dataset(spec_for(path, DatasetFormat.CSV))
    assert not result.available
    assert "Row #3" in result.reason
    assert "Expected 2 columns, got 3" in result.reason
    assert "JOHN SMITH" not in result.reason
    assert "extra-secret" not in result.reason


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    os.mkfifo(path)
    result = inspect_dataset(spec_for(path, DatasetFormat.CSV))
    assert not result.available
    assert "not a regular file or directory" in result.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    pq.write_table(make_table(5), path)
    path.chmod(0)
    locked_dir = tmp_path / "locked"
    locked_dir.mkdir()
    pq.write_table(make_table(5), locked_dir / "a.parquet")
    locked_dir.chmod(0)
    try:
        file_result = inspect_dataset(spec_for(path, DatasetFormat.PARQUET))
        assert not file_result.available
        assert file_result.reason == f"permission denied: cannot read {path}"

        dir_result = inspect_dataset(spec_for(locked_dir, DatasetFormat.PARQUET))
        assert not dir_result.available
        assert dir_result.reason == f"permission denied: cannot read {locked_dir}"
    finally:
        path.chmod(0o600)
        locked_dir.chmod(0o700)


def test_inspection_invariants(tmp_path: Path) -> None:
    spec = spec_for(tmp_path / "x.csv", DatasetFormat.CSV)
    with pytest.raises(ValueError, match="needs a reason"):
        DatasetInspection(spec=spec, available=False)
    with pytest.raises(ValueError, match="cannot have"):
        DatasetInspection(spec=spec, available=True, reason="oops")


# ------------------------------------------------------------ the privacy unit


def _visits(tmp_path: Path) -> Path:
    directory = tmp_path / "visits"
    directory.mkdir()
    pq.write_table(pa.table({"patient_id": [1, 1, 2], "age": [60, 61, 70]}), directory / "a.parquet")
    pq.write_table(pa.table({"patient_id": [2, 3], "age": [71, 50]}), directory / "b.parquet")
    return directory


def test_the_unit_column_is_counted_and_never_listed_or_opened(tmp_path: Path) -> None:
    spec = DatasetSpec(id="visits", path=_visits(tmp_path), format=DatasetFormat.PARQUET, privacy_unit="patient_id")
    inspection = inspect_dataset(spec)
    assert inspection.available, inspection.reason
    assert (inspection.row_count, inspection.unit_count, inspection.units) == (5, 3, 3)
    assert [c.name for c in inspection.columns] == ["age"]
    assert open_dataset(spec).schema.names == ["age"]
    # Only the agent's own row source asks for it, as the last column.
    assert open_dataset(spec, with_unit=True).schema.names == ["age", "patient_id"]
    explicit = DatasetSpec(
        id="visits", path=spec.path, format=DatasetFormat.PARQUET, columns=("age",), privacy_unit="patient_id"
    )
    assert open_dataset(explicit).schema.names == ["age"]


def test_units_are_rows_when_no_unit_is_declared(tmp_path: Path) -> None:
    inspection = inspect_dataset(DatasetSpec(id="visits", path=_visits(tmp_path), format=DatasetFormat.PARQUET))
    assert inspection.unit_count is None and inspection.units == inspection.row_count == 5
    assert [c.name for c in inspection.columns] == ["patient_id", "age"]


def test_dictionary_and_string_units_are_counted_across_batches(tmp_path: Path) -> None:
    ids = pa.array([f"p{i % 7}" for i in range(1000)]).dictionary_encode()
    pq.write_table(pa.table({"pid": ids, "x": list(range(1000))}), tmp_path / "d.parquet", row_group_size=64)
    spec = DatasetSpec(id="d", path=tmp_path / "d.parquet", format=DatasetFormat.PARQUET, privacy_unit="pid")
    assert inspect_dataset(spec).unit_count == 7


def test_unit_counting_merges_many_batches_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.datasets.inspection as inspection_module

    # A tiny merge slack forces the running set to be merged many times over.
    monkeypatch.setattr(inspection_module, "_MERGE_SLACK", 3)
    pq.write_table(
        pa.table({"pid": [i % 50 for i in range(2000)], "x": list(range(2000))}),
        tmp_path / "m.parquet", row_group_size=37,
    )
    spec = DatasetSpec(id="m", path=tmp_path / "m.parquet", format=DatasetFormat.PARQUET, privacy_unit="pid")
    assert inspect_dataset(spec).unit_count == 50


def test_the_inspection_cache_key_includes_the_unit(tmp_path: Path) -> None:
    path = _visits(tmp_path)
    cache = InspectionCache()
    plain = cache.inspect(DatasetSpec(id="visits", path=path, format=DatasetFormat.PARQUET, columns=("age",)))
    unit = cache.inspect(
        DatasetSpec(id="visits", path=path, format=DatasetFormat.PARQUET, columns=("age",), privacy_unit="patient_id")
    )
    assert plain.unit_count is None and unit.unit_count == 3


def test_a_csv_unit_with_a_missing_value_is_refused(tmp_path: Path) -> None:
    (tmp_path / "v.csv").write_text("patient_id,age\n1,60\n,61\n")
    spec = DatasetSpec(id="v", path=tmp_path / "v.csv", format=DatasetFormat.CSV, privacy_unit="patient_id")
    inspection = inspect_dataset(spec)
    assert not inspection.available
    assert "'patient_id'" in inspection.reason and "v.csv" in inspection.reason and "null" in inspection.reason
