"""InspectionCache: reuse while files are unchanged, notice every change."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from agent.datasets import DatasetFormat, DatasetSpec, InspectionCache


def write_csv(path: Path, rows: int) -> None:
    path.write_text("age,ward\n" + "".join(f"{i},icu\n" for i in range(rows)))


def csv_spec(path: Path, columns: tuple[str, ...] | None = None) -> DatasetSpec:
    return DatasetSpec(id="icu", path=path, format=DatasetFormat.CSV, columns=columns)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unchanged_files_reuse_the_cached_inspection(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 50)
    cache = InspectionCache()
    first = cache.inspect(csv_spec(path))
    assert first.row_count == 50
    # Same object: nothing was re-read.
    assert cache.inspect(csv_spec(path)) is first


def test_rewritten_file_with_more_rows_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 50)
    cache = InspectionCache()
    assert cache.inspect(csv_spec(path)).row_count == 50
    write_csv(path, 75)
    assert cache.inspect(csv_spec(path)).row_count == 75


def test_same_size_rewrite_with_restored_mtime_is_still_noticed(tmp_path: Path) -> None:
    # Same size, same mtime (restored explicitly): only ctime/inode can tell.
    path = tmp_path / "icu.csv"
    write_csv(path, 10)
    before = path.stat()
    cache = InspectionCache()
    first = cache.inspect(csv_spec(path))
    replacement = tmp_path / "new.csv"
    replacement.write_text(path.read_text().replace("icu", "er "))
    os.replace(replacement, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    assert cache.inspect(csv_spec(path)) is not first


def test_permission_change_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 10)
    cache = InspectionCache()
    first = cache.inspect(csv_spec(path))
    # chmod leaves mtime and size alone; it must still invalidate (as a
    # non-root user the dataset becomes unreadable).
    path.chmod(0o400)
    assert cache.inspect(csv_spec(path)) is not first


def test_vanished_and_reappearing_file(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 20)
    cache = InspectionCache()
    assert cache.inspect(csv_spec(path)).available
    path.unlink()
    gone = cache.inspect(csv_spec(path))
    assert not gone.available
    assert "does not exist" in gone.reason
    write_csv(path, 30)
    back = cache.inspect(csv_spec(path))
    assert back.available
    assert back.row_count == 30


def test_new_partition_file_is_noticed(tmp_path: Path) -> None:
    root = tmp_path / "icu"
    (root / "year=2020").mkdir(parents=True)
    table = pa.table({"x": [1, 2, 3]})
    pq.write_table(table, root / "year=2020" / "part-0.parquet")
    spec = DatasetSpec(id="icu", path=root, format=DatasetFormat.PARQUET)
    cache = InspectionCache()
    assert cache.inspect(spec).row_count == 3
    (root / "year=2021").mkdir()
    pq.write_table(table, root / "year=2021" / "part-0.parquet")
    assert cache.inspect(spec).row_count == 6


def test_spec_change_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 5)
    cache = InspectionCache()
    assert [c.name for c in cache.inspect(csv_spec(path)).columns] == ["age", "ward"]
    narrowed = cache.inspect(csv_spec(path, columns=("ward",)))
    assert [c.name for c in narrowed.columns] == ["ward"]


def test_unavailable_results_are_retried_after_a_while(tmp_path: Path) -> None:
    path = tmp_path / "icu.parquet"
    path.write_bytes(b"garbage" * 10)
    spec = DatasetSpec(id="icu", path=path, format=DatasetFormat.PARQUET)
    clock = FakeClock()
    cache = InspectionCache(retry_unavailable_after=30.0, clock=clock)
    first = cache.inspect(spec)
    assert not first.available
    clock.now += 29.0
    assert cache.inspect(spec) is first
    clock.now += 2.0
    second = cache.inspect(spec)
    assert second is not first
    assert second == first


def test_available_results_do_not_expire(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 5)
    clock = FakeClock()
    cache = InspectionCache(retry_unavailable_after=1.0, clock=clock)
    first = cache.inspect(csv_spec(path))
    clock.now += 10_000.0
    assert cache.inspect(csv_spec(path)) is first


def test_invalidate_and_retain(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 5)
    other = DatasetSpec(id="other", path=path, format=DatasetFormat.CSV)
    cache = InspectionCache()
    first = cache.inspect(csv_spec(path))
    first_other = cache.inspect(other)
    cache.invalidate("icu")
    assert cache.inspect(csv_spec(path)) is not first
    assert cache.inspect(other) is first_other
    kept = cache.inspect(csv_spec(path))
    cache.retain(["icu"])
    assert cache.inspect(csv_spec(path)) is kept
    assert cache.inspect(other) is not first_other
    cache.invalidate()
    assert cache.inspect(csv_spec(path)) is not kept


def test_concurrent_callers_share_one_inspection(tmp_path: Path) -> None:
    path = tmp_path / "icu.csv"
    write_csv(path, 20_000)
    cache = InspectionCache()
    barrier = threading.Barrier(8)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait()
            inspection = cache.inspect(csv_spec(path))
            with lock:
                results.append(inspection)
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == 8
    # The per-dataset lock means the CSV was scanned once and shared.
    assert len({id(r) for r in results}) == 1
