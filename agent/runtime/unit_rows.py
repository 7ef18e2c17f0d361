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
pass maps one partition's arrays at a time. Peak memory is one partition plus one record
batch, whatever the dataset's size; the disk holds the used columns of the usable rows
(inside the agent's state directory, removed when the task ends).
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

from agent.packages.manifest import Manifest
from agent.runtime.errors import PrivacyUnitError
from agent.runtime.preprocessing import check_schema, drop_rows_with_nulls, features, labels
from agent.runtime.rows import DEFAULT_BATCH_SIZE, RowBatch

# The column holding each row's random key (never a dataset column: agent:: names are reserved).
_ORDER = "agent::order"
# A unit column's values must be one of these to be grouped by (equality must be exact).
_UNIT_TYPES = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string, pa.types.is_binary,
               pa.types.is_large_binary)
MAX_ROWS_PER_UNIT = 10_000
"""The largest ``max_rows_per_unit`` the agent accepts (the policy's range)."""


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
    ) -> None:
        if isinstance(max_rows_per_unit, bool) or not 1 <= max_rows_per_unit <= MAX_ROWS_PER_UNIT:
            raise ValueError(f"max_rows_per_unit must lie in [1, {MAX_ROWS_PER_UNIT}], got {max_rows_per_unit!r}")
        if batch_size < 1 or memory_bytes < 1:
            raise ValueError("batch_size and memory_bytes must be >= 1")
        check_schema(dataset.schema, manifest)
        if dataset.schema.get_field_index(unit_column) < 0:
            raise PrivacyUnitError(f"the privacy-unit column {unit_column!r} is missing")
        unit_type = dataset.schema.field(unit_column).type
        if pa.types.is_dictionary(unit_type):
            unit_type = unit_type.value_type
        if not any(accepts(unit_type) for accepts in _UNIT_TYPES):
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
        self.rows = 0
        """Rows kept: at most ``max_rows_per_unit`` of each unit (after :meth:`prepare`)."""
        self.largest_unit = 0
        """Rows of the unit with the most kept rows (after :meth:`prepare`)."""
        self.sum_of_squared_sizes = 0
        """Σ over units of (kept rows)², which bounds how far a sample's row count spreads."""

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
                partitions = max(2, math.ceil(2 * estimate / self._memory))
                self._groups = self._partition(partitions, itertools.chain(held, tables))
                return self.units
        self._groups = [self._group(pa.concat_tables(held))] if held else []
        return self.units

    def batches(self) -> Iterator[RowBatch]:
        """Whole units, at most ``batch_size`` rows per batch (a larger unit is a batch of its own)."""
        if self._groups is None:
            raise RuntimeError("prepare() first")
        for stored in self._groups:
            group = stored if isinstance(stored, _Group) else _load(stored)
            starts = group.unit_starts
            ends = np.append(starts[1:], group.rows)
            first = 0
            while first < starts.size:
                begin = int(starts[first])
                # The last unit that still ends within batch_size rows of this batch's start (at least one).
                last = max(first + 1, int(np.searchsorted(ends, begin + self._batch_size, side="right")))
                end = int(ends[last - 1])
                yield RowBatch(
                    np.ascontiguousarray(group.x[begin:end]),
                    np.ascontiguousarray(group.y[begin:end]),
                    (starts[first:last] - begin).astype(np.int64),
                )
                first = last
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
        """Usable rows with their unit and random key, one record batch at a time."""
        columns = [*self._manifest.columns, self._unit]
        for batch in self._dataset.to_batches(
            columns=columns, batch_size=self._batch_size, batch_readahead=0, fragment_readahead=0, use_threads=False
        ):
            usable = drop_rows_with_nulls(batch, self._manifest.columns)
            if usable.num_rows == 0:
                continue
            unit = usable.column(self._unit)
            if unit.null_count:
                raise PrivacyUnitError(f"the privacy-unit column {self._unit!r} holds nulls")
            if pa.types.is_dictionary(unit.type):
                unit = unit.cast(unit.type.value_type)
            position = usable.schema.get_field_index(self._unit)
            table = pa.Table.from_batches([usable]).set_column(position, self._unit, unit)
            yield table.append_column(_ORDER, pa.array(self._rng.random(table.num_rows)))

    def _group(self, table: pa.Table) -> _Group:
        """Sorts by (unit, key), keeps each unit's first ``max_rows_per_unit`` rows, preprocesses."""
        ordered = table.sort_by([(self._unit, "ascending"), (_ORDER, "ascending")])
        unit = ordered.column(self._unit).combine_chunks()
        rows = ordered.num_rows
        changes = np.asarray(pc.not_equal(unit[1:], unit[:-1]), dtype=np.bool_) if rows > 1 else np.zeros(0, np.bool_)
        starts = np.concatenate(([0], np.flatnonzero(changes) + 1)).astype(np.int64)
        sizes = np.diff(np.append(starts, rows))
        rank = np.arange(rows) - np.repeat(starts, sizes)
        kept = rank < self._cap
        kept_sizes = np.minimum(sizes, self._cap)
        capped = ordered.filter(pa.array(kept))
        self.units += int(starts.size)
        self.rows += int(kept_sizes.sum())
        self.largest_unit = max(self.largest_unit, int(kept_sizes.max(initial=0)))
        self.sum_of_squared_sizes += int(np.sum(kept_sizes.astype(np.int64) ** 2))
        batch = capped.combine_chunks().to_batches()[0] if capped.num_rows else None
        if batch is None:
            raise PrivacyUnitError("no usable rows")  # unreachable: every unit keeps one row
        return _Group(
            features(batch, self._manifest),
            labels(batch, self._manifest),
            np.concatenate(([0], np.cumsum(kept_sizes)[:-1])).astype(np.int64),
        )

    def _partition(self, partitions: int, tables: Iterator[pa.Table]) -> list[_Group | Path]:
        """Spills rows to ``partitions`` files by a keyed hash of their unit, then groups each file."""
        self._directory = Path(tempfile.mkdtemp(prefix="units-", dir=self._scratch_parent))
        key = secrets.token_bytes(16)  # a hash the dataset cannot be crafted against
        writers: dict[int, ipc.RecordBatchFileWriter] = {}
        paths = [self._directory / f"raw-{index}.arrow" for index in range(partitions)]
        try:
            for table in tables:
                assignment = _partition_of(table.column(self._unit), key, partitions)
                for index in np.unique(assignment):
                    part = table.filter(pa.array(assignment == index))
                    writer = writers.get(int(index))
                    if writer is None:
                        writer = writers[int(index)] = ipc.new_file(str(paths[int(index)]), part.schema)
                    writer.write_table(part)
        finally:
            for writer in writers.values():
                writer.close()
        groups: list[_Group | Path] = []
        for index in sorted(writers):
            with pa.memory_map(str(paths[index])) as source:
                table = ipc.open_file(source).read_all()
            group = self._group(table)
            del table
            paths[index].unlink()
            groups.append(_save(group, self._directory / f"group-{index}"))
        return groups


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
