"""Schema, availability and size of datasets, read from file metadata.

Nothing here loads a dataset into memory: the schema comes from file footers
(or the first CSV block) and row counts from ``Dataset.count_rows()``, which
uses Parquet/IPC metadata and streams CSV in blocks.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from agent.datasets.errors import DatasetUnavailableError
from agent.datasets.files import DataFile, scan_data_files
from agent.datasets.spec import DatasetFormat, DatasetSpec


@dataclass(frozen=True)
class ColumnInfo:
    """One exposed column, as described to coordinators."""

    name: str
    arrow_type: str
    nullable: bool


@dataclass(frozen=True)
class DatasetInspection:
    """What the agent currently knows about a dataset's files.

    ``reason`` explains an unavailable dataset to an operator and is empty
    otherwise; ``columns`` and ``row_count`` are only filled in when available.
    ``row_count`` is exact: release it off-site only through row_count_bucket.
    ``unit_count`` is the number of distinct values of the privacy-unit column
    (None when no unit is declared); exact too, released only bucketed.
    ``columns`` never includes the unit column.
    """

    spec: DatasetSpec
    available: bool
    reason: str = ""
    columns: tuple[ColumnInfo, ...] = ()
    row_count: int | None = None
    unit_count: int | None = None

    @property
    def units(self) -> int | None:
        """How many units (patients) the dataset holds: the distinct unit values when a
        unit is declared, else the rows (each row its own unit). None when unavailable."""
        return self.unit_count if self.spec.privacy_unit is not None else self.row_count

    def __post_init__(self) -> None:
        if self.available and self.reason:
            raise ValueError("an available dataset cannot have an unavailability reason")
        if not self.available and not self.reason:
            raise ValueError("an unavailable dataset needs a reason")

    @classmethod
    def unavailable(cls, spec: DatasetSpec, reason: str) -> DatasetInspection:
        return cls(spec=spec, available=False, reason=reason)


def open_dataset(spec: DatasetSpec, *, with_unit: bool = False) -> ds.Dataset:
    """Open ``spec`` as a pyarrow dataset restricted to its exposed columns.

    The returned dataset's schema is the allow-list projection of the file
    schema, so a reader built on it cannot reach a column the operator did not
    expose. Directories are read with hive partitioning (``key=value`` path
    segments become columns); hidden and ``_``-prefixed entries are ignored.

    The privacy-unit column is never part of the projection, except with
    ``with_unit=True``: then it is added as the last column, for the agent's
    own grouping of rows by unit (the worker's row source). Nothing built on
    such a dataset may hand the column to a package.

    Raises DatasetUnavailableError when the files are missing, unreadable or
    not of the declared format, or when an allow-listed or the unit column is missing.
    """
    return _open_files(spec, _scan(spec), with_unit=with_unit)


def inspect_dataset(spec: DatasetSpec) -> DatasetInspection:
    """Describe ``spec``; file problems give ``available=False``, never an exception."""
    try:
        return _inspect_files(spec, _scan(spec))
    except DatasetUnavailableError as exc:
        return DatasetInspection.unavailable(spec, exc.reason)


class InspectionCache:
    """Remembers inspections until a dataset's files or spec change.

    CSV row counts need a full scan, far too slow to repeat on every
    ListDatasets call, whereas listing and stat-ing the files is cheap; so the
    key is the spec plus path, size, mtime, ctime and inode of every data file.

    Unavailable results are re-checked after ``retry_unavailable_after``
    seconds even if nothing changed on disk, because some causes (a flaky
    network mount, too many open files) go away by themselves.

    Thread-safe: gRPC handlers call it from a thread pool. Each dataset id has
    its own lock so that a slow CSV scan blocks only callers of that dataset,
    and concurrent callers do not scan the same file twice.
    """

    def __init__(
        self,
        *,
        retry_unavailable_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._retry_unavailable_after = retry_unavailable_after
        self._clock = clock
        self._lock = threading.Lock()
        self._id_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, _CacheEntry] = {}

    def inspect(self, spec: DatasetSpec) -> DatasetInspection:
        """Inspection of ``spec``, reused while its files are unchanged."""
        try:
            files = _scan(spec)
        except DatasetUnavailableError as exc:
            # Not cached: finding out again costs no more than the listing that
            # just failed, and the path may come back at any moment.
            self.invalidate(spec.id)
            return DatasetInspection.unavailable(spec, exc.reason)
        # The fingerprint is taken before inspecting: if a file changes while
        # it is being read, the next call sees a new fingerprint and redoes it.
        key = (spec, files)
        with self._id_lock(spec.id):
            with self._lock:
                entry = self._entries.get(spec.id)
            now = self._clock()
            if entry is not None and entry.key == key and self._fresh(entry, now):
                return entry.inspection
            try:
                inspection = _inspect_files(spec, files)
            except DatasetUnavailableError as exc:
                inspection = DatasetInspection.unavailable(spec, exc.reason)
            with self._lock:
                self._entries[spec.id] = _CacheEntry(key, inspection, now)
            return inspection

    def invalidate(self, dataset_id: str | None = None) -> None:
        """Forget one dataset's inspection, or all of them."""
        with self._lock:
            if dataset_id is None:
                self._entries.clear()
            else:
                self._entries.pop(dataset_id, None)

    def retain(self, dataset_ids: Iterable[str]) -> None:
        """Forget every dataset not in ``dataset_ids`` (e.g. removed from the registry)."""
        keep = set(dataset_ids)
        with self._lock:
            for dataset_id in [i for i in self._entries if i not in keep]:
                del self._entries[dataset_id]
            for dataset_id in [i for i in self._id_locks if i not in keep]:
                del self._id_locks[dataset_id]

    def _id_lock(self, dataset_id: str) -> threading.Lock:
        with self._lock:
            return self._id_locks.setdefault(dataset_id, threading.Lock())

    def _fresh(self, entry: _CacheEntry, now: float) -> bool:
        if entry.inspection.available:
            return True
        return now - entry.computed_at < self._retry_unavailable_after


@dataclass(frozen=True)
class _CacheEntry:
    key: tuple[DatasetSpec, tuple[DataFile, ...]]
    inspection: DatasetInspection
    computed_at: float


def row_count_bucket(n: int) -> tuple[int, int]:
    """Coarse bucket ``[lower, upper)`` containing the row count ``n``.

    Below 10 everything is (0, 10); above, bounds follow the 1-2-5 series
    10, 20, 50, 100, 200, 500, ... so a remote caller learns the order of
    magnitude but cannot observe single-row changes. Integer arithmetic only:
    floating-point logarithms misplace values right at a boundary.
    """
    if n < 0:
        raise ValueError(f"row count must be non-negative, got {n}")
    if n < 10:
        return (0, 10)
    decade = 10
    while decade * 10 <= n:
        decade *= 10
    # decade <= n < 10 * decade
    if n < 2 * decade:
        return (decade, 2 * decade)
    if n < 5 * decade:
        return (2 * decade, 5 * decade)
    return (5 * decade, 10 * decade)


# ---------------------------------------------------------------------- internals

_FORMATS: dict[DatasetFormat, Callable[[], ds.FileFormat]] = {
    DatasetFormat.PARQUET: ds.ParquetFileFormat,
    DatasetFormat.ARROW_IPC: ds.IpcFileFormat,
    DatasetFormat.CSV: ds.CsvFileFormat,
}

# pyarrow's CSV errors quote the offending row or cell ("Expected 2 columns,
# got 3: <row>", "invalid value '<cell>'"). Reasons can travel to the
# coordinator, and a cell of a hospital dataset may be patient data, so the
# quoted text is cut; the row and column numbers that remain are enough for the
# operator to find the line.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(Expected \d+ columns?, got \d+):.*", re.DOTALL), r"\1 (row text withheld)"),
    (re.compile(r"(invalid value) '.*'", re.DOTALL), r"\1 (withheld)"),
)


def _redact(message: str) -> str:
    for pattern, replacement in _REDACTIONS:
        message = pattern.sub(replacement, message)
    return " ".join(message.split())


def _arrow_reason(spec: DatasetSpec, exc: Exception) -> str:
    if isinstance(exc, PermissionError) and spec.path.is_file():
        # pyarrow's wording repeats the path three times; for a single file
        # the short form says all there is to say.
        return f"permission denied: cannot read {spec.path}"
    return f"cannot read {spec.path}: {_redact(str(exc))}"


def _scan(spec: DatasetSpec) -> tuple[DataFile, ...]:
    try:
        files = scan_data_files(spec.path)
    except FileNotFoundError as exc:
        missing = exc.filename if exc.filename is not None else spec.path
        raise DatasetUnavailableError(f"path {missing} does not exist") from exc
    except PermissionError as exc:
        denied = exc.filename if exc.filename is not None else spec.path
        raise DatasetUnavailableError(f"permission denied: cannot read {denied}") from exc
    except OSError as exc:
        culprit = exc.filename if exc.filename is not None else spec.path
        detail = exc.strerror if exc.strerror else str(exc)
        raise DatasetUnavailableError(f"cannot read {culprit}: {detail}") from exc
    if not files:
        raise DatasetUnavailableError(
            f"directory {spec.path} contains no data files "
            "(hidden and '_'-prefixed files are ignored)"
        )
    return files


def _open_all(spec: DatasetSpec, files: tuple[DataFile, ...]) -> ds.Dataset:
    """Every column of the files, unit column included: for the agent's own checks only."""
    # scan_data_files returns the path itself only when it is a plain file;
    # deciding from the scan avoids a second stat that could disagree with it.
    directory = len(files) != 1 or files[0].path != spec.path
    try:
        return ds.dataset(
            [str(f.path) for f in files],
            format=_FORMATS[spec.format](),
            partitioning=ds.HivePartitioning.discover() if directory else None,
            partition_base_dir=str(spec.path) if directory else None,
        )
    except (pa.ArrowException, OSError) as exc:
        raise DatasetUnavailableError(_arrow_reason(spec, exc)) from exc


def _open_files(spec: DatasetSpec, files: tuple[DataFile, ...], *, with_unit: bool = False) -> ds.Dataset:
    return _project(spec, _open_all(spec, files), with_unit=with_unit)


def _project(spec: DatasetSpec, dataset: ds.Dataset, *, with_unit: bool = False) -> ds.Dataset:
    schema = dataset.schema
    unit = spec.privacy_unit
    if unit is not None and schema.get_field_index(unit) < 0:
        raise DatasetUnavailableError(f"privacy unit column {unit!r} not found in {spec.path}")
    if spec.columns is None:
        if unit is None:
            return dataset
        allowed = {name for name in schema.names if name != unit}
    else:
        missing = [name for name in spec.columns if schema.get_field_index(name) < 0]
        if missing:
            raise DatasetUnavailableError(
                f"exposed column(s) {', '.join(repr(m) for m in missing)} not found in {spec.path}"
            )
        allowed = set(spec.columns)
    # File schema order, not allow-list order: coordinators see the columns as
    # the data holder laid them out.
    fields = [field for field in schema if field.name in allowed]
    if with_unit and unit is not None:
        fields.append(schema.field(unit))
    exposed = pa.schema(fields)
    # pyarrow-stubs declare replace_schema as returning None; at run time it
    # returns the new dataset (the original is left unchanged).
    projected: ds.Dataset = dataset.replace_schema(exposed)  # type: ignore[func-returns-value,assignment]
    return projected


def _inspect_files(spec: DatasetSpec, files: tuple[DataFile, ...]) -> DatasetInspection:
    everything = _open_all(spec, files)
    # The unit is checked file by file first, so that a problem with it names the file at fault
    # (the projection sees only the schema pyarrow took from the first file).
    unit_count = None if spec.privacy_unit is None else _count_units(spec, spec.privacy_unit, everything)
    dataset = _project(spec, everything)
    try:
        # Reads every Parquet/IPC footer (so one corrupt file among many is
        # caught here) and checks the structure of every CSV row.
        row_count = dataset.count_rows()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetUnavailableError(_arrow_reason(spec, exc)) from exc
    columns = tuple(
        ColumnInfo(name=field.name, arrow_type=str(field.type), nullable=field.nullable)
        for field in dataset.schema
    )
    return DatasetInspection(
        spec=spec, available=True, reason="", columns=columns, row_count=row_count, unit_count=unit_count
    )


def unit_type_supported(arrow_type: pa.DataType) -> bool:
    """Whether a column of this type can identify units: exact, hashable values only.

    Floats are refused because 1.0 and 1.0000000001 (or NaN and NaN) make
    equality a poor identity; lists, structs and maps are not single values.
    """
    if pa.types.is_dictionary(arrow_type):
        return unit_type_supported(arrow_type.value_type)
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_fixed_size_binary(arrow_type)
    )


# Uniques of recent batches are merged into the running set of distinct units once
# they hold this many values more than the set itself (amortises the merge).
_MERGE_SLACK = 1 << 20


def _count_units(spec: DatasetSpec, unit: str, dataset: ds.Dataset) -> int:
    """Distinct values of the unit column, checking its type in every file and that it has no null.

    Reads the unit column only, one batch at a time. Memory is bounded by the
    distinct unit values themselves (at most twice over, plus _MERGE_SLACK
    values of not yet merged batch uniques, plus one batch of the one column),
    never by the rows: a dataset of 10^8 rows over 10^6 patients holds about
    10^6 values here.
    """
    first: tuple[str, pa.DataType] | None = None
    distinct: pa.Array[Any] | None = None
    pending: list[pa.Array[Any]] = []
    pending_size = 0
    try:
        for fragment in dataset.get_fragments():
            where = fragment.path
            physical = fragment.physical_schema
            index = physical.get_field_index(unit)
            if index < 0:
                raise DatasetUnavailableError(f"privacy unit column {unit!r} not found in {where}")
            arrow_type = physical.field(index).type
            if not unit_type_supported(arrow_type):
                raise DatasetUnavailableError(
                    f"privacy unit column {unit!r} in {where} has type {arrow_type}, which cannot identify "
                    "units; use an integer, string or binary column (floats, lists, structs and maps are refused)"
                )
            if first is None:
                first = (where, arrow_type)
            elif arrow_type != first[1]:
                raise DatasetUnavailableError(
                    f"privacy unit column {unit!r} has type {arrow_type} in {where} but {first[1]} in {first[0]}; "
                    "the unit column must have one type in every file"
                )
            for batch in fragment.to_batches(columns=[unit]):
                values = batch.column(0)
                if values.null_count:
                    raise DatasetUnavailableError(
                        f"privacy unit column {unit!r} has empty (null) values in {where}; every row must "
                        "name its unit"
                    )
                if pa.types.is_dictionary(values.type):
                    # Dictionaries differ between batches; their values do not.
                    values = values.dictionary_decode()
                uniques = pc.unique(values)
                pending.append(uniques)
                pending_size += len(uniques)
                if pending_size > (0 if distinct is None else len(distinct)) + _MERGE_SLACK:
                    distinct = _merge(distinct, pending)
                    pending, pending_size = [], 0
    except (pa.ArrowException, OSError) as exc:
        raise DatasetUnavailableError(_arrow_reason(spec, exc)) from exc
    distinct = _merge(distinct, pending)
    return 0 if distinct is None else len(distinct)


def _merge(distinct: pa.Array[Any] | None, pending: list[pa.Array[Any]]) -> pa.Array[Any] | None:
    chunks = ([] if distinct is None else [distinct]) + pending
    if not chunks:
        return None
    merged: pa.Array[Any] = pc.unique(pa.concat_arrays(chunks))
    return merged
