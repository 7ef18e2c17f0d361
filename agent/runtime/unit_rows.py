"""Rows grouped by privacy unit, at most ``max_rows_per_unit`` of each, prepared once per task.

A dataset with a declared privacy unit (a patient column) is read once before the task
computes (:meth:`UnitRowSource.prepare`): the usable rows (no null in a column the package
reads), each with its unit's value and a random key drawn from the agent's own secure
randomness. Each unit keeps the ``max_rows_per_unit`` rows with the smallest keys: a
uniformly random choice that the coordinator cannot steer or predict, the same for every
step of the task. The kept rows are preprocessed and stored grouped by unit; every pass
(:meth:`UnitRowSource.batches`) yields them as :class:`~agent.runtime.rows.RowBatch` es of
whole units (``unit_starts`` set), so a step samples units, not rows, and the wrappers bound
each unit's contribution (:mod:`agent.runtime.contribution`).

Memory. The files need not be sorted by unit. When the usable rows fit in
``memory_bytes`` they are grouped in memory. Otherwise each row is appended to one of
``P`` partition files in ``scratch`` (Arrow IPC, the used columns only), chosen by a keyed
hash of its unit so that every row of a unit lands in the same partition and a partition
holds about ``memory_bytes / 2``; then each partition in turn is read, sorted by unit,
capped and preprocessed into arrays saved beside it, and the raw partition file deleted. A
partition is read batch by batch and capped as it grows, so one patient with millions of
rows needs only ``max_rows_per_unit`` of them in memory. A pass maps one partition's
arrays at a time. Memory does not grow with the dataset (at most 512 partitions are
written at once: beyond 256 times the grouping memory a partition is larger, and still
capped as it is read); measured by ``bench/unit_grouping_memory.py``, grouping holds about
four times ``memory_bytes`` above what the worker held before, as the sorts and the
preprocessed arrays copy what they work on. The disk holds the used columns of the usable
rows, and for a task that releases the dropped units their markers (below), inside the
agent's state directory, removed when the task ends.

Dropped units. For a task that asks (``count_dropped``), the same reading counts the units
that lost at least one row to a missing value in a used column
(:meth:`UnitRowSource.dropped_units`, which a task may release with noise): each batch's
dropped rows leave one *marker* row per unit, which travels with the usable rows (in memory
or through the same partitions, so the count needs no memory of its own beyond them) and
sorts before them; capping keeps one marker per unit and never counts markers against
``max_rows_per_unit``; grouping counts the markers and removes them. A unit with some rows
dropped and a unit with all of them dropped count once each. A dropped row whose unit value
is null belongs to no unit and is not counted (a usable row with a null unit refuses the
task).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from pyarrow import ipc

from agent.datasets.inspection import unit_type_supported
from agent.datasets.spec import RESERVED_COLUMN_PREFIX
from agent.governance.model import MAX_ROWS_PER_UNIT_RANGE
from agent.packages.manifest import Manifest
from agent.runtime.contribution import whole_unit_spans
from agent.runtime.errors import PrivacyUnitError
from agent.runtime.preprocessing import check_schema, features, labels, split_usable
from agent.runtime.rows import DEFAULT_BATCH_SIZE, RowBatch, scan_options

# The column holding each row's random key (never the unit column: DatasetSpec reserves the prefix).
_ORDER = RESERVED_COLUMN_PREFIX + "order"
# True on a dropped-unit marker row (see the module doc); its key is _MARKER_KEY, below every
# row's random key in [0, 1), so a unit's marker sorts first.
_DROPPED = RESERVED_COLUMN_PREFIX + "dropped"
_MARKER_KEY = -1.0
# Raw partitions written at once: each holds an open file (the service allows 16384).
_MAX_PARTITIONS = 512


@dataclass(frozen=True, eq=False)
class _Group:
    """One partition's kept rows, preprocessed and grouped: ``x``, ``y``, ``unit_starts``."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    unit_starts: npt.NDArray[np.int64]

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


class UnitRowSource:
    """A dataset's usable rows grouped by its privacy-unit column (see the module doc).

    ``dataset`` must include the unit column (``open_dataset(spec, with_unit=True)``).
    ``rng`` only for tests: by default the keys come from the OS's secure randomness.
    """

    def __init__(
        self,
        dataset: ds.Dataset,
        manifest: Manifest,
        unit_column: str,
        *,
        max_rows_per_unit: int,
        memory_bytes: int,
        scratch: Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        rng: np.random.Generator | None = None,
        count_dropped: bool = False,
    ) -> None:
        low, high = MAX_ROWS_PER_UNIT_RANGE
        if isinstance(max_rows_per_unit, bool) or not low <= max_rows_per_unit <= high:
            raise ValueError(f"max_rows_per_unit must lie in [{low}, {high}], got {max_rows_per_unit!r}")
        if batch_size < 1 or memory_bytes < 1:
            raise ValueError("batch_size and memory_bytes must be >= 1")
        check_schema(dataset.schema, manifest)
        if dataset.schema.get_field_index(unit_column) < 0:
            raise PrivacyUnitError(f"the privacy-unit column {unit_column!r} is missing")
        unit_type = dataset.schema.field(unit_column).type
        if not unit_type_supported(unit_type):
            raise PrivacyUnitError(
                f"the privacy-unit column {unit_column!r} has type {unit_type}; "
                "a unit must be an integer, a string or binary"
            )
        self._dataset = dataset
        self._manifest = manifest
        self._unit = unit_column
        self._cap = max_rows_per_unit
        self._memory = memory_bytes
        self._scratch_parent = scratch
        self._batch_size = batch_size
        self._rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        self._groups: list[_Group | Path] | None = None
        self._directory: Path | None = None
        self.units = 0
        """Units with at least one usable row (after :meth:`prepare`)."""
        # Markers are built only for a task that releases the count: otherwise the reading's
        # work would depend on how many units lost rows, which nothing else pads.
        self._count_dropped = count_dropped
        self._dropped = 0

    def prepare(self) -> int:
        """Reads the dataset once and groups it; returns the number of units. Call once, before :meth:`batches`."""
        if self._groups is not None:
            return self.units
        held: list[pa.Table] = []
        held_bytes = 0
        tables = self._usable_tables()
        for table in tables:
            held.append(table)
            held_bytes += table.nbytes
            if held_bytes > self._memory // 2:
                # Too large to group in memory: spill by unit, with partitions of about memory / 2.
                rows = sum(part.num_rows for part in held)
                estimate = self._dataset.count_rows() * held_bytes / max(1, rows)
                partitions = min(_MAX_PARTITIONS, max(2, math.ceil(2 * estimate / self._memory)))
                self._groups = self._partition(partitions, itertools.chain(held, tables))
                return self.units
        group = self._group(pa.concat_tables(held)) if held else None
        self._groups = [group] if group is not None else []
        return self.units

    def dropped_units(self) -> int | None:
        """Units with at least one row dropped for a missing value in a used column, in the one
        reading of the dataset every pass uses (see the module doc); None before :meth:`prepare`
        or when the source was not asked to count them (``count_dropped``)."""
        return self._dropped if self._groups is not None and self._count_dropped else None

    def batches(self) -> Iterator[RowBatch]:
        """Whole units, at most ``batch_size`` rows per batch (a larger unit is a batch of its own)."""
        if self._groups is None:
            raise RuntimeError("prepare() first")
        for stored in self._groups:
            group = stored if isinstance(stored, _Group) else _load(stored)
            starts = group.unit_starts
            for first, last, begin, end in whole_unit_spans(starts, group.rows, self._batch_size):
                yield RowBatch(
                    np.ascontiguousarray(group.x[begin:end]),
                    np.ascontiguousarray(group.y[begin:end]),
                    (starts[first:last] - begin).astype(np.int64),
                )
            del group

    def close(self) -> None:
        """Removes the partition files (the task's caller also removes its scratch directory)."""
        self._groups = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> UnitRowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _usable_tables(self) -> Iterator[pa.Table]:
        """Usable rows with their unit and random key, one record batch at a time, and the
        batch's dropped-unit markers (one row per unit that lost a row here)."""
        columns = [*self._manifest.columns, self._unit]
        for batch in self._dataset.to_batches(
            columns=columns,
            batch_size=self._batch_size,
            batch_readahead=0,
            fragment_readahead=0,
            fragment_scan_options=scan_options(self._dataset),
            use_threads=False,
        ):
            usable, dropped = split_usable(batch, self._manifest.required_columns)
            if dropped.num_rows and self._count_dropped:
                markers = self._markers(dropped)
                if markers is not None:
                    yield markers
            if usable.num_rows == 0:
                continue
            # Decoded first: a dictionary column's null_count misses a null stored in its dictionary.
            unit = _plain(usable.column(self._unit))
            if unit.null_count:
                raise PrivacyUnitError(f"the privacy-unit column {self._unit!r} holds nulls")
            yield self._keyed(usable, unit, self._rng.random(usable.num_rows), dropped=False)

    def _markers(self, dropped: pa.RecordBatch) -> pa.Table | None:
        """One marker row per unit among ``dropped`` (the batch's first row of each), or None if
        none of them has a unit value."""
        unit = _plain(dropped.column(self._unit))  # decoded first, as in _usable_tables
        if unit.null_count:
            has_unit = pc.is_valid(unit)
            dropped, unit = dropped.filter(has_unit), unit.filter(has_unit)
        if len(unit) == 0:
            return None
        encoded: Any = pc.dictionary_encode(_plain(unit))
        _, firsts = np.unique(np.asarray(encoded.indices, dtype=np.int64), return_index=True)
        firsts = firsts.astype(np.int64)
        return self._keyed(dropped.take(firsts), unit.take(firsts), np.full(firsts.size, _MARKER_KEY), dropped=True)

    def _keyed(self, rows: pa.RecordBatch, unit: Any, keys: npt.NDArray[np.float64], *, dropped: bool) -> pa.Table:
        """``rows`` as a table with the unit column's plain values, the keys and the marker flag."""
        position = rows.schema.get_field_index(self._unit)
        table = pa.Table.from_batches([rows]).set_column(position, self._unit, _plain(unit))
        flags = pa.array(np.full(table.num_rows, dropped, np.bool_))
        return table.append_column(_ORDER, pa.array(keys)).append_column(_DROPPED, flags)

    def _group(self, table: pa.Table) -> _Group | None:
        """Keeps each unit's ``max_rows_per_unit`` rows of smallest key, grouped, and preprocesses
        them; counts and removes the markers. None when no usable row is left (markers only)."""
        capped = self._cap_rows(table).combine_chunks()
        marker = np.asarray(capped.column(_DROPPED).to_numpy(zero_copy_only=False), dtype=np.bool_)
        # One marker per unit is left after capping, and no unit is in two groups (partitions).
        self._dropped += int(marker.sum())
        kept = capped.filter(pa.array(~marker)).combine_chunks()
        starts = _unit_starts(kept.column(self._unit))
        self.units += int(starts.size)
        batches = kept.to_batches()
        if kept.num_rows == 0 or not batches:
            return None
        return _Group(features(batches[0], self._manifest), labels(batches[0], self._manifest), starts)

    def _partition(self, partitions: int, tables: Iterator[pa.Table]) -> list[_Group | Path]:
        """Spills rows to ``partitions`` files by a keyed hash of their unit, then groups each file."""
        self._directory = Path(tempfile.mkdtemp(prefix="units-", dir=self._scratch_parent))
        key = secrets.token_bytes(16)  # a hash the dataset cannot be crafted against
        writers: dict[int, ipc.RecordBatchFileWriter] = {}
        paths = [self._directory / f"raw-{index}.arrow" for index in range(partitions)]
        try:
            for table in tables:
                assignment = _partition_of(table.column(self._unit), key, partitions)
                # One sort by partition, then a slice per partition present (not a filter per partition).
                order = np.argsort(assignment, kind="stable")
                ordered = table.take(order)
                present, firsts, counts = np.unique(assignment[order], return_index=True, return_counts=True)
                for index, first, count in zip(present.tolist(), firsts.tolist(), counts.tolist(), strict=True):
                    part = ordered.slice(first, count)
                    writer = writers.get(index)
                    if writer is None:
                        writer = writers[index] = ipc.new_file(str(paths[index]), part.schema)
                    writer.write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        groups: list[_Group | Path] = []
        for index in sorted(writers):
            group = self._group(self._capped_partition(paths[index]))
            paths[index].unlink()
            if group is not None:
                groups.append(_save(group, self._directory / f"group-{index}"))
        return groups

    def _capped_partition(self, path: Path) -> pa.Table:
        """A partition's rows, at most ``max_rows_per_unit`` of each unit (the smallest keys),
        read batch by batch: one unit with a great many rows never needs all of them in memory."""
        held: list[pa.Table] = []
        held_bytes = 0
        # Capped again only once what is held has doubled since (or reached memory / 4):
        # capping sorts everything held, and for small units removes little.
        threshold = self._memory // 4
        with pa.memory_map(str(path)) as source:
            reader = ipc.open_file(source)
            for index in range(reader.num_record_batches):
                batch = pa.Table.from_batches([reader.get_batch(index)])
                held.append(batch)
                held_bytes += batch.nbytes
                if held_bytes > threshold:
                    kept = self._cap_rows(pa.concat_tables(held))
                    held, held_bytes = [kept], kept.nbytes
                    threshold = max(self._memory // 4, 2 * held_bytes)
            return self._cap_rows(pa.concat_tables(held)) if held else reader.schema.empty_table()

    def _cap_rows(self, table: pa.Table) -> pa.Table:
        """The rows of ``table`` with one of their unit's ``max_rows_per_unit`` smallest keys,
        sorted by unit and key, each unit's markers reduced to one (first) that is not counted
        against the cap."""
        ordered = table.sort_by([(self._unit, "ascending"), (_ORDER, "ascending")])
        if ordered.num_rows == 0:
            return ordered
        starts = _unit_starts(ordered.column(self._unit))
        sizes = np.diff(np.append(starts, ordered.num_rows))
        rank = np.arange(ordered.num_rows) - np.repeat(starts, sizes)
        marker = np.asarray(ordered.column(_DROPPED).to_numpy(zero_copy_only=False), dtype=np.bool_)
        # Markers sort first in their unit (_MARKER_KEY): a usable row's rank among usable rows
        # is its rank less its unit's markers.
        markers = np.add.reduceat(marker.astype(np.int64), starts)
        keep = np.where(marker, rank == 0, rank - np.repeat(markers, sizes) < self._cap)
        return ordered.filter(pa.array(keep))


def _plain(unit: Any) -> Any:
    """A unit column as its plain values (a dictionary-encoded one decoded: sorting and hashing
    need the values)."""
    return unit.cast(unit.type.value_type) if pa.types.is_dictionary(unit.type) else unit


def _unit_starts(unit: pa.ChunkedArray[Any] | pa.Array[Any]) -> npt.NDArray[np.int64]:
    """Where each unit's rows begin in a column sorted by unit."""
    values = unit.combine_chunks() if isinstance(unit, pa.ChunkedArray) else unit
    if len(values) == 0:
        return np.zeros(0, np.int64)
    changes = np.asarray(pc.not_equal(values[1:], values[:-1]), dtype=np.bool_)
    return np.concatenate(([0], np.flatnonzero(changes) + 1)).astype(np.int64)


def _partition_of(unit: pa.ChunkedArray[Any], key: bytes, partitions: int) -> npt.NDArray[np.int64]:
    """Each row's partition: a keyed BLAKE2b hash of its unit value, modulo ``partitions``."""
    encoded: Any = pc.dictionary_encode(unit).combine_chunks()
    values = encoded.dictionary.to_pylist()
    digests = np.array(
        [
            int.from_bytes(hashlib.blake2b(repr(value).encode(), key=key, digest_size=8).digest(), "little")
            % partitions
            for value in values
        ],
        np.int64,
    )
    return digests[np.asarray(encoded.indices, dtype=np.int64)]


def _save(group: _Group, stem: Path) -> Path:
    np.save(stem.with_suffix(".x.npy"), group.x)
    np.save(stem.with_suffix(".y.npy"), group.y)
    np.save(stem.with_suffix(".starts.npy"), group.unit_starts)
    return stem


def _load(stem: Path) -> _Group:
    return _Group(
        np.load(stem.with_suffix(".x.npy"), mmap_mode="r"),
        np.load(stem.with_suffix(".y.npy"), mmap_mode="r"),
        np.load(stem.with_suffix(".starts.npy")),
    )
