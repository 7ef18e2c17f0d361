"""DatasetFormat, ids, DatasetSpec validation, format guessing, file discovery, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from agent.datasets import (
    DatasetError,
    DatasetFormat,
    DatasetRegistryError,
    DatasetSource,
    DatasetSpec,
    DatasetSpecError,
    DatasetUnavailableError,
    DuplicateDatasetError,
    UnknownDatasetError,
    guess_format,
    list_data_files,
    looks_like_identifier,
    validate_dataset_id,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parquet", DatasetFormat.PARQUET),
        ("PARQUET", DatasetFormat.PARQUET),
        ("arrow_ipc", DatasetFormat.ARROW_IPC),
        ("Arrow_IPC", DatasetFormat.ARROW_IPC),
        ("ipc", DatasetFormat.ARROW_IPC),
        ("arrow", DatasetFormat.ARROW_IPC),
        ("Feather", DatasetFormat.ARROW_IPC),
        ("csv", DatasetFormat.CSV),
        (" CSV ", DatasetFormat.CSV),
    ],
)
def test_format_parse_accepts_aliases_case_insensitively(text: str, expected: DatasetFormat) -> None:
    assert DatasetFormat.parse(text) is expected


def test_format_parse_error_names_value_and_accepted_ones() -> None:
    with pytest.raises(DatasetSpecError) as info:
        DatasetFormat.parse("xlsx")
    message = str(info.value)
    assert "'xlsx'" in message
    for accepted in ("parquet", "arrow_ipc", "ipc", "arrow", "feather", "csv"):
        assert accepted in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("good", ["a", "0", "icu-2024", "cohort_a.v2", "x" * 64, "a-._"])
def test_valid_dataset_ids(good: str) -> None:
    assert validate_dataset_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "A", "Icu", "-a", ".a", "_a", "a/b", "a b", "x" * 65, "abc\n", "é", "a:b"]
)
def test_invalid_dataset_ids(bad: str) -> None:
    with pytest.raises(DatasetSpecError, match="invalid dataset id"):
        validate_dataset_id(bad)


def test_spec_defaults_and_validation(tmp_path: Path) -> None:
    spec = DatasetSpec(id="icu", path=tmp_path / "icu.parquet", format=DatasetFormat.PARQUET)
    assert spec.source is DatasetSource.CONFIG
    assert spec.columns is None
    assert spec.description == ""

    with pytest.raises(DatasetSpecError, match="invalid dataset id"):
        DatasetSpec(id="ICU", path=tmp_path, format=DatasetFormat.CSV)
    with pytest.raises(DatasetSpecError, match="must be absolute"):
        DatasetSpec(id="icu", path=Path("rel/icu.csv"), format=DatasetFormat.CSV)
    with pytest.raises(DatasetSpecError, match="empty"):
        DatasetSpec(id="icu", path=tmp_path, format=DatasetFormat.CSV, columns=())
    with pytest.raises(DatasetSpecError, match="more than once: age"):
        DatasetSpec(id="icu", path=tmp_path, format=DatasetFormat.CSV, columns=("age", "x", "age"))
    with pytest.raises(DatasetSpecError, match="non-empty"):
        DatasetSpec(id="icu", path=tmp_path, format=DatasetFormat.CSV, columns=("age", ""))


def test_spec_column_list_is_coerced_to_a_hashable_tuple(tmp_path: Path) -> None:
    spec = DatasetSpec(
        id="icu",
        path=tmp_path,
        format=DatasetFormat.CSV,
        columns=["age", "sex"],  # type: ignore[arg-type]  # as a loose caller might pass
    )
    assert spec.columns == ("age", "sex")
    assert hash(spec) == hash(
        DatasetSpec(id="icu", path=tmp_path, format=DatasetFormat.CSV, columns=("age", "sex"))
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.parquet", DatasetFormat.PARQUET),
        ("a.PQ", DatasetFormat.PARQUET),
        ("a.arrow", DatasetFormat.ARROW_IPC),
        ("a.feather", DatasetFormat.ARROW_IPC),
        ("a.ipc", DatasetFormat.ARROW_IPC),
        ("a.csv", DatasetFormat.CSV),
        ("a.csv.gz", DatasetFormat.CSV),
    ],
)
def test_guess_format_from_file_suffix(tmp_path: Path, name: str, expected: DatasetFormat) -> None:
    # The file need not exist: the CLI may guess before checking.
    assert guess_format(tmp_path / name) is expected


@pytest.mark.parametrize("name", ["a.txt", "a", "a.json", "a.gz"])
def test_guess_format_unknown_suffix(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetSpecError, match="cannot tell the format"):
        guess_format(tmp_path / name)


def test_guess_format_of_hive_directory_ignores_markers(tmp_path: Path) -> None:
    root = tmp_path / "icu"
    table = pa.table({"x": [1, 2, 3], "site": ["a", "b", "a"]})
    ds.write_dataset(table, root, format="parquet", partitioning=["site"], partitioning_flavor="hive")
    # Markers and hidden files of other formats must not make it "mixed".
    (root / "_SUCCESS").write_bytes(b"")
    (root / "_metadata.csv").write_text("x\n1\n")
    (root / ".stale.csv").write_text("x\n1\n")
    (root / "_temporary").mkdir()
    (root / "_temporary" / "part-9.csv").write_text("x\n1\n")
    (root / "README.txt").write_text("cohort from 2020")
    assert guess_format(root) is DatasetFormat.PARQUET


def test_guess_format_directory_named_like_a_format_looks_inside(tmp_path: Path) -> None:
    root = tmp_path / "export.parquet"
    root.mkdir()
    (root / "part-0.csv").write_text("x\n1\n")
    assert guess_format(root) is DatasetFormat.CSV


def test_guess_format_directory_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetSpecError, match="no file with a known suffix"):
        guess_format(empty)

    mixed = tmp_path / "mixed"
    (mixed / "sub").mkdir(parents=True)
    (mixed / "a.csv").write_text("x\n1\n")
    (mixed / "sub" / "b.feather").write_bytes(b"")
    with pytest.raises(DatasetSpecError, match="mixes several formats: arrow_ipc, csv"):
        guess_format(mixed)


def test_list_data_files_skips_ignored_entries_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "a=1").mkdir()
    (tmp_path / "a=1" / "part-0.parquet").write_bytes(b"x")
    (tmp_path / "b.parquet").write_bytes(b"x")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "c.parquet").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.parquet")
    # A symlink cycle must not make discovery loop forever.
    (tmp_path / "a=1" / "loop").symlink_to(tmp_path, target_is_directory=True)

    assert list_data_files(tmp_path) == (
        tmp_path / "a=1" / "part-0.parquet",
        tmp_path / "b.parquet",
    )
    assert list_data_files(tmp_path / "b.parquet") == (tmp_path / "b.parquet",)
    with pytest.raises(FileNotFoundError):
        list_data_files(tmp_path / "nope")


def test_error_hierarchy_and_messages() -> None:
    unknown = UnknownDatasetError("icu")
    assert isinstance(unknown, KeyError)
    assert isinstance(unknown, DatasetError)
    assert str(unknown) == "unknown dataset 'icu'"  # not repr-quoted like KeyError
    assert unknown.dataset_id == "icu"
    assert issubclass(DatasetSpecError, ValueError)
    assert issubclass(DuplicateDatasetError, DatasetError)
    assert issubclass(DatasetRegistryError, DatasetError)
    assert issubclass(DatasetUnavailableError, DatasetError)


def test_errors_survive_pickling_across_processes() -> None:
    for error in (
        UnknownDatasetError("icu", "custom message"),
        DuplicateDatasetError("icu", "custom message"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert copy.dataset_id == "icu"
        assert str(copy) == "custom message"


def test_the_privacy_unit_can_never_be_an_exposed_column(tmp_path: Path) -> None:
    with pytest.raises(DatasetSpecError, match="'patient_id' is the privacy unit and can never be exposed"):
        DatasetSpec(
            id="visits", path=tmp_path / "v.parquet", format=DatasetFormat.PARQUET,
            columns=("age", "patient_id"), privacy_unit="patient_id",
        )
    with pytest.raises(DatasetSpecError, match="privacy_unit must be a non-empty column name"):
        DatasetSpec(id="visits", path=tmp_path / "v.parquet", format=DatasetFormat.PARQUET, privacy_unit="")


@pytest.mark.parametrize(
    ("name", "flagged"),
    [
        ("patient_id", True), ("PatientID", True), ("mrn", True), ("date_of_birth", True), ("dob", True),
        ("zip_code", True), ("EmailAddress", True), ("nhs_number", True), ("home_phone", True),
        ("age", False), ("side", False), ("stage", False), ("adobe_score", False), ("time_to_event", False),
    ],
)
def test_identifier_like_names(name: str, flagged: bool) -> None:
    assert looks_like_identifier(name) is flagged
