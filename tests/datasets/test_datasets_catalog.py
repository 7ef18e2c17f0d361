"""DatasetCatalog: merging config and registry datasets."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from agent.datasets import (
    DatasetCatalog,
    DatasetFormat,
    DatasetRegistry,
    DatasetRegistryError,
    DatasetSource,
    DatasetSpec,
    DuplicateDatasetError,
    InspectionCache,
    UnknownDatasetError,
)


def parquet_spec(tmp_path: Path, dataset_id: str, rows: int, **kwargs: object) -> DatasetSpec:
    path = tmp_path / f"{dataset_id}-{kwargs.get('source', DatasetSource.CONFIG)}.parquet"
    pq.write_table(pa.table({"x": list(range(rows))}), path)
    return DatasetSpec(id=dataset_id, path=path, format=DatasetFormat.PARQUET, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> DatasetRegistry:
    return DatasetRegistry(tmp_path / "datasets.sqlite")


def test_duplicate_config_ids_are_refused(tmp_path: Path, registry: DatasetRegistry) -> None:
    a = parquet_spec(tmp_path, "icu", 1)
    with pytest.raises(DuplicateDatasetError, match="'icu' is declared more than once"):
        DatasetCatalog([a, a], registry)


def test_specs_merge_config_and_registry_sorted(tmp_path: Path, registry: DatasetRegistry) -> None:
    config = [parquet_spec(tmp_path, "oncology", 3), parquet_spec(tmp_path, "cardio", 2)]
    registry.add(parquet_spec(tmp_path, "icu", 5))
    catalog = DatasetCatalog(config, registry)
    specs = catalog.specs()
    assert [s.id for s in specs] == ["cardio", "icu", "oncology"]
    assert [s.source for s in specs] == [
        DatasetSource.CONFIG,
        DatasetSource.REGISTRY,
        DatasetSource.CONFIG,
    ]


def test_registry_changes_are_seen_without_rebuilding(tmp_path: Path, registry: DatasetRegistry) -> None:
    catalog = DatasetCatalog([parquet_spec(tmp_path, "cardio", 2)], registry)
    assert [s.id for s in catalog.specs()] == ["cardio"]
    with pytest.raises(UnknownDatasetError):
        catalog.get("icu")

    # Another registry object on the same file stands for the CLI process.
    DatasetRegistry(registry.path).add(parquet_spec(tmp_path, "icu", 5))
    assert [s.id for s in catalog.specs()] == ["cardio", "icu"]
    assert catalog.get("icu").source is DatasetSource.REGISTRY
    assert catalog.inspect("icu").row_count == 5

    DatasetRegistry(registry.path).remove("icu")
    assert [s.id for s in catalog.specs()] == ["cardio"]
    with pytest.raises(UnknownDatasetError, match="unknown dataset 'icu'"):
        catalog.inspect("icu")


def test_config_wins_on_clash_and_warns_once(tmp_path: Path, registry: DatasetRegistry) -> None:
    config_icu = parquet_spec(tmp_path, "icu", 3)
    registry.add(parquet_spec(tmp_path, "icu", 7, source=DatasetSource.REGISTRY))
    catalog = DatasetCatalog([config_icu], registry)

    with capture_logs() as logs:
        specs = catalog.specs()
        catalog.specs()  # a second listing must not repeat the warning
    assert specs == [config_icu]
    assert catalog.get("icu") == config_icu
    assert catalog.inspect("icu").row_count == 3
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["dataset_id"] == "icu"
    assert warnings[0]["config_path"] == str(config_icu.path)


def test_config_datasets_survive_a_corrupt_registry(tmp_path: Path) -> None:
    db = tmp_path / "datasets.sqlite"
    db.write_bytes(b"garbage" * 200)
    catalog = DatasetCatalog([parquet_spec(tmp_path, "cardio", 2)], DatasetRegistry(db))
    assert catalog.inspect("cardio").row_count == 2
    # The daemon keeps serving what the config declares and logs the broken file.
    with capture_logs() as logs:
        assert [spec.id for spec in catalog.specs()] == ["cardio"]
    assert logs[0]["event"] == "dataset_registry.unreadable" and str(db) in logs[0]["error"]
    with pytest.raises(DatasetRegistryError, match=str(db)):
        DatasetRegistry(db).list()  # the operator's `dataset list` still says so
    with pytest.raises(UnknownDatasetError):
        catalog.get("icu")


def test_a_damaged_registry_entry_is_skipped_and_logged(tmp_path: Path, registry: DatasetRegistry) -> None:
    import sqlite3

    registry.add(parquet_spec(tmp_path, "icu", 3, source=DatasetSource.REGISTRY))
    registry.add(parquet_spec(tmp_path, "labs", 4, source=DatasetSource.REGISTRY))
    with sqlite3.connect(tmp_path / "datasets.sqlite") as conn:
        conn.execute("UPDATE datasets SET format = 'excel' WHERE id = 'icu'")
    catalog = DatasetCatalog([], registry)
    with capture_logs() as logs:
        assert [spec.id for spec in catalog.specs()] == ["labs"]
        with pytest.raises(UnknownDatasetError):
            catalog.get("icu")
    assert {entry["event"] for entry in logs} == {"dataset_registry.invalid_entry"}
    with pytest.raises(DatasetRegistryError, match="invalid entry 'icu'"):
        registry.list()


def test_inspect_all_with_and_without_cache(tmp_path: Path, registry: DatasetRegistry) -> None:
    cardio = parquet_spec(tmp_path, "cardio", 2)
    missing = DatasetSpec(id="gone", path=tmp_path / "gone.parquet", format=DatasetFormat.PARQUET)
    registry.add(parquet_spec(tmp_path, "icu", 5))

    uncached = DatasetCatalog([cardio, missing], registry)
    results = uncached.inspect_all()
    assert [(r.spec.id, r.available, r.row_count) for r in results] == [
        ("cardio", True, 2),
        ("gone", False, None),
        ("icu", True, 5),
    ]
    assert results[1].reason == f"path {missing.path} does not exist"

    cache = InspectionCache()
    cached = DatasetCatalog([cardio, missing], registry, cache)
    first = cached.inspect_all()
    assert first == results
    second = cached.inspect_all()
    assert second[0] is first[0]
    assert second[2] is first[2]
    assert cached.inspect("icu") is first[2]


def test_unknown_dataset_error(tmp_path: Path, registry: DatasetRegistry) -> None:
    catalog = DatasetCatalog([], registry)
    with pytest.raises(UnknownDatasetError) as info:
        catalog.get("nope")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "unknown dataset 'nope'"
    assert catalog.specs() == []
    assert catalog.inspect_all() == []


def test_inspect_all_drops_cache_entries_of_removed_datasets(
    tmp_path: Path, registry: DatasetRegistry
) -> None:
    icu = parquet_spec(tmp_path, "icu", 5)
    registry.add(icu)
    catalog = DatasetCatalog([], registry, InspectionCache())
    (before,) = catalog.inspect_all()
    registry.remove("icu")
    assert catalog.inspect_all() == []
    # Re-registered with identical files: a fresh inspection proves the old
    # entry was dropped rather than kept around for ever.
    registry.add(icu)
    (after,) = catalog.inspect_all()
    assert after == before
    assert after is not before


def test_the_daemon_warns_once_of_config_datasets_exposing_every_column(
    tmp_path: Path, registry: DatasetRegistry
) -> None:
    everything = parquet_spec(tmp_path, "icu", 3)
    listed = parquet_spec(tmp_path, "labs", 3, columns=("x",))
    with capture_logs() as logs:
        catalog = DatasetCatalog([everything, listed], registry, report_exposure=True)
        catalog.specs()
        catalog.inspect_all()
    warnings = [entry for entry in logs if entry["event"] == "dataset.all_columns_exposed"]
    assert [w["dataset_id"] for w in warnings] == ["icu"]
    with capture_logs() as logs:
        DatasetCatalog([everything], registry)  # the CLI's catalog: no report
    assert logs == []
