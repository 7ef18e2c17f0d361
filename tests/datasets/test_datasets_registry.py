"""DatasetRegistry over a real SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.datasets import (
    DatasetFormat,
    DatasetRegistry,
    DatasetRegistryError,
    DatasetSource,
    DatasetSpec,
    DuplicateDatasetError,
    UnknownDatasetError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def spec(dataset_id: str, tmp_path: Path, **kwargs: object) -> DatasetSpec:
    return DatasetSpec(
        id=dataset_id,
        path=tmp_path / f"{dataset_id}.parquet",
        format=DatasetFormat.PARQUET,
        **kwargs,  # type: ignore[arg-type]
    )


def test_missing_file_reads_as_empty_without_creating_it(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    registry = DatasetRegistry(db)
    assert registry.list() == []
    assert registry.get("icu") is None
    with pytest.raises(UnknownDatasetError, match="'icu' is not registered"):
        registry.remove("icu")
    assert not db.exists()


def test_add_get_list_remove(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    registry = DatasetRegistry(db)
    registry.add(spec("zeta", tmp_path))
    registry.add(
        DatasetSpec(
            id="alpha",
            path=tmp_path / "alpha.csv",
            format=DatasetFormat.CSV,
            description="ICU stays, 2020-2024",
            columns=("age", "los_days"),
        )
    )
    registry.add(spec("mid", tmp_path, description="x"))

    listed = registry.list()
    assert [s.id for s in listed] == ["alpha", "mid", "zeta"]
    assert all(s.source is DatasetSource.REGISTRY for s in listed)
    assert listed[0] == DatasetSpec(
        id="alpha",
        path=tmp_path / "alpha.csv",
        format=DatasetFormat.CSV,
        description="ICU stays, 2020-2024",
        columns=("age", "los_days"),
        source=DatasetSource.REGISTRY,
    )
    assert listed[2].columns is None

    assert registry.get("mid") == listed[1]
    assert registry.get("nope") is None

    registry.remove("mid")
    assert [s.id for s in registry.list()] == ["alpha", "zeta"]
    with pytest.raises(UnknownDatasetError) as info:
        registry.remove("mid")
    assert info.value.dataset_id == "mid"


def test_duplicate_id_is_refused_and_keeps_the_first(tmp_path: Path) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.sqlite")
    registry.add(spec("icu", tmp_path, description="first"))
    with pytest.raises(DuplicateDatasetError, match="'icu' is already registered") as info:
        registry.add(spec("icu", tmp_path, description="second"))
    assert info.value.dataset_id == "icu"
    found = registry.get("icu")
    assert found is not None
    assert found.description == "first"


def test_file_is_wal_with_expected_table(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    DatasetRegistry(db).add(spec("icu", tmp_path))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(datasets)")]
        assert columns == ["id", "path", "format", "description", "columns", "added_at", "privacy_unit"]
        (added_at,) = conn.execute("SELECT added_at FROM datasets").fetchone()
        assert added_at.endswith("+00:00")
    finally:
        conn.close()


def test_corrupt_file_raises_registry_error_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    db.write_bytes(b"this is not a database at all" * 100)
    registry = DatasetRegistry(db)
    with pytest.raises(DatasetRegistryError, match=str(db)):
        registry.list()
    with pytest.raises(DatasetRegistryError, match=str(db)):
        registry.get("icu")
    with pytest.raises(DatasetRegistryError, match=str(db)):
        registry.add(spec("icu", tmp_path))
    with pytest.raises(DatasetRegistryError, match=str(db)):
        registry.remove("icu")


def test_empty_existing_file_lists_as_empty(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    db.write_bytes(b"")
    registry = DatasetRegistry(db)
    assert registry.list() == []
    registry.add(spec("icu", tmp_path))
    assert [s.id for s in registry.list()] == ["icu"]


def test_missing_parent_directory_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "state" / "datasets.sqlite"
    with pytest.raises(DatasetRegistryError, match="does not exist"):
        DatasetRegistry(db).add(spec("icu", tmp_path))
    assert not db.parent.exists()


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    DatasetRegistry(db).add(spec("icu", tmp_path))
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(DatasetRegistryError, match="schema version 99"):
        DatasetRegistry(db).list()


def test_hand_edited_invalid_row_is_reported(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    DatasetRegistry(db).add(spec("icu", tmp_path))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE datasets SET format = 'xlsx'")
    conn.commit()
    conn.close()
    with pytest.raises(DatasetRegistryError, match="invalid entry 'icu'"):
        DatasetRegistry(db).list()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.datasets import DatasetFormat, DatasetRegistry, DatasetSpec

    registry = DatasetRegistry(Path(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[2])):
        registry.add(DatasetSpec(id=f"ds-{i:03d}", path=Path(f"/data/{i}.parquet"),
                                 format=DatasetFormat.PARQUET))
    """
)


def test_reader_sees_consistent_snapshots_while_another_process_writes(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    registry = DatasetRegistry(db)
    count = 40
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(count)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "ready"
    writer.stdin.write("go\n")
    writer.stdin.flush()

    seen: list[int] = []
    while writer.poll() is None:
        ids = [s.id for s in registry.list()]
        # Every snapshot is a prefix of the insertion order: no torn reads.
        assert ids == [f"ds-{i:03d}" for i in range(len(ids))]
        seen.append(len(ids))
    _, stderr = writer.communicate(timeout=30)
    assert writer.returncode == 0, stderr
    assert seen == sorted(seen)
    # At least one read landed mid-way, so the test did exercise overlap.
    assert len(set(seen)) >= 2
    assert len(registry.list()) == count


def test_privacy_unit_round_trips(tmp_path: Path) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.sqlite")
    registry.add(spec("visits", tmp_path, columns=("age",), privacy_unit="patient_id"))
    registry.add(spec("labs", tmp_path, columns=("hb",)))
    got = {s.id: s for s in registry.list()}
    assert got["visits"].privacy_unit == "patient_id"
    assert got["labs"].privacy_unit is None


_V1_TABLE = """
CREATE TABLE datasets (
    id TEXT PRIMARY KEY NOT NULL, path TEXT NOT NULL, format TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '', columns TEXT, added_at TEXT NOT NULL
)
"""


def test_a_version_1_registry_reads_without_unit_and_is_migrated_by_the_next_write(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    conn = sqlite3.connect(db)
    conn.execute(_V1_TABLE)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO datasets VALUES ('old', ?, 'parquet', '', '[\"age\"]', '2025-01-01T00:00:00+00:00')",
        (str(tmp_path / "old.parquet"),),
    )
    conn.commit()
    conn.close()
    registry = DatasetRegistry(db)
    # Read-only: the file is not touched by reading.
    assert [(s.id, s.privacy_unit, s.columns) for s in registry.list()] == [("old", None, ("age",))]
    assert registry.get("old") is not None
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    conn.close()

    registry.add(spec("new", tmp_path, columns=("age",), privacy_unit="patient_id"))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        conn.close()
    got = {s.id: s.privacy_unit for s in registry.list()}
    assert got == {"old": None, "new": "patient_id"}
