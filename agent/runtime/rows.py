"""Rows for the wrappers: streamed from Arrow datasets, or from arrays already in memory.

A :class:`RowSource` yields :class:`RowBatch` es (``x`` float32 ``[n, F]``, ``y`` in the
label dtype) and starts a fresh pass over the data on every :meth:`RowSource.batches`
call; each DP-SGD step makes one pass and Poisson-samples it.

:class:`ArrowRowSource` reads with ``pyarrow.dataset``, projected to exactly the
manifest's columns, at most ``batch_size`` rows per batch, one batch at a time and
without read-ahead: memory is bounded by the batch (and by the files' Parquet row
groups, which Arrow decodes whole), never by the dataset. Rows holding a null in any
used column are dropped before preprocessing (``docs/package-format.md``: such rows
are not fed to a graph); the rows that remain are the dataset's *usable* rows, which
:meth:`ArrowRowSource.count_usable` counts and :class:`MinimumRows` holds to the policy's
minimum cohort size. A source that can also say how many privacy units lost a row that
way (:class:`CountsDroppedUnits`; here each row is its own unit) lets a task release that
number (:func:`dropped_units`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.dataset as ds

from agent.datasets.inspection import open_dataset
from agent.datasets.spec import DatasetSpec
from agent.packages.manifest import Manifest
from agent.runtime.contribution import check_unit_starts, unit_sizes
from agent.runtime.errors import CohortTooSmallError, RuntimeTaskError
from agent.runtime.preprocessing import check_schema, count_usable, to_arrays

DEFAULT_BATCH_SIZE = 16_384


@dataclass(frozen=True, eq=False)
class RowBatch:
    """Usable rows, preprocessed: ``x`` float32 ``[n, F]``, ``y`` ``[n, *label shape]``.

    ``unit_starts``: for a dataset with a privacy unit, the offsets (int64, increasing,
    the first 0) where each unit's rows begin; a unit's rows are contiguous and a batch
    holds whole units. ``None``: every row is its own unit.
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    unit_starts: npt.NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.x.dtype != np.float32 or self.y.shape[:1] != self.x.shape[:1]:
            raise ValueError("a row batch needs x float32 [n, F] and y with the same first dimension")
        if self.unit_starts is not None:
            check_unit_starts(self.unit_starts, self.size)

    @property
    def size(self) -> int:
        return int(self.x.shape[0])

    @property
    def units(self) -> int:
        """Privacy units in the batch (rows, when no unit is declared)."""
        return self.size if self.unit_starts is None else int(self.unit_starts.size)

    def unit_sizes(self) -> npt.NDArray[np.int64]:
        """Rows per unit."""
        if self.unit_starts is None:
            return np.ones(self.size, np.int64)
        return unit_sizes(self.unit_starts, self.size)

    def select(self, mask: npt.NDArray[np.bool_]) -> RowBatch:
        """The units where ``mask`` (one value per unit) is true, with all their rows: a
        Poisson sample of this batch."""
        if self.unit_starts is None:
            return RowBatch(np.ascontiguousarray(self.x[mask]), np.ascontiguousarray(self.y[mask]))
        sizes = self.unit_sizes()
        rows = np.repeat(mask, sizes)
        kept = sizes[mask]
        starts = np.concatenate(([0], np.cumsum(kept)[:-1])).astype(np.int64) if kept.size else np.zeros(0, np.int64)
        return RowBatch(np.ascontiguousarray(self.x[rows]), np.ascontiguousarray(self.y[rows]), starts)


class RowSource(Protocol):
    def batches(self) -> Iterator[RowBatch]:
        """One full pass over the usable rows, lazily, batch by batch."""
        ...


class DroppedUnitsError(RuntimeTaskError):
    """A task asked for the units dropped for a missing value from rows that did not count them."""


@runtime_checkable
class CountsDroppedUnits(Protocol):
    """A row source that counts, as it reads, the units it leaves out for a missing value."""

    def dropped_units(self) -> int | None:
        """How many privacy units (rows, without a unit column) had at least one row dropped for
        a null, NaN or infinity in a column the package reads, in the reading of the rows the
        last pass yielded; None before any such reading is complete."""
        ...


def dropped_units(rows: RowSource) -> int:
    """``rows``' count of the units it dropped for a missing value in its last complete pass.

    Raises :class:`DroppedUnitsError` when ``rows`` does not count them or has not finished a pass.
    """
    if not isinstance(rows, CountsDroppedUnits):
        raise DroppedUnitsError("this row source does not count the units it drops")
    count = rows.dropped_units()
    if count is None:
        raise DroppedUnitsError("the rows hold no count of the units they dropped (no complete pass was made)")
    return count


class ArrowRowSource:
    """Streams a ``pyarrow.dataset`` through the manifest's preprocessing."""

    def __init__(self, dataset: ds.Dataset, manifest: Manifest, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        check_schema(dataset.schema, manifest)
        self._dataset = dataset
        self._manifest = manifest
        self._batch_size = batch_size
        self._dropped: int | None = None

    @classmethod
    def open(cls, spec: DatasetSpec, manifest: Manifest, *, batch_size: int = DEFAULT_BATCH_SIZE) -> ArrowRowSource:
        """The dataset as the catalog exposes it (its column allow-list applies).

        Raises ``DatasetUnavailableError`` for unreadable files and
        :class:`~agent.runtime.errors.ColumnError` for a missing or mistyped column.
        """
        return cls(open_dataset(spec), manifest, batch_size=batch_size)

    def batches(self) -> Iterator[RowBatch]:
        dropped = 0
        for record_batch in self._records():
            x, y = to_arrays(record_batch, self._manifest)
            # Each row is its own unit here: the rows to_arrays left out, in this very reading.
            dropped += record_batch.num_rows - x.shape[0]
            if x.shape[0] > 0:
                yield RowBatch(x, y)
        self._dropped = dropped

    def dropped_units(self) -> int | None:
        """Rows the last complete pass dropped for a missing value (see :class:`CountsDroppedUnits`)."""
        return self._dropped

    def count_usable(self) -> int:
        """How many rows a pass would yield now: a scan of the used columns' validity,
        with nothing preprocessed and nothing fed to a graph."""
        return sum(count_usable(batch, self._manifest.required_columns) for batch in self._records())

    def _records(self) -> Iterator[pa.RecordBatch]:
        return self._dataset.to_batches(
            columns=list(self._manifest.columns),
            batch_size=self._batch_size,
            batch_readahead=0,
            fragment_readahead=0,
            fragment_scan_options=scan_options(self._dataset),
            use_threads=False,
        )


class MinimumRows:
    """A row source whose every pass must find at least ``minimum`` usable rows.

    The task checks the minimum cohort before it computes (compute_task, refunded);
    this check holds it for every later pass too, in case the files change while
    the task runs (each pass reads them afresh). It raises after the pass's last
    batch, before the caller can use what the pass summed; by then rows were read,
    so the task is charged.
    """

    def __init__(self, rows: RowSource, minimum: int) -> None:
        self._rows = rows
        self._minimum = minimum

    def dropped_units(self) -> int | None:
        """The wrapped source's count (see :class:`CountsDroppedUnits`), if it keeps one."""
        return self._rows.dropped_units() if isinstance(self._rows, CountsDroppedUnits) else None

    def batches(self) -> Iterator[RowBatch]:
        usable = 0
        for batch in self._rows.batches():
            usable += batch.units
            yield batch
        if usable < self._minimum:
            raise CohortTooSmallError(
                f"a pass found fewer usable rows (or privacy units) than the minimum cohort size of {self._minimum}"
            )


def scan_options(dataset: ds.Dataset) -> ds.FragmentScanOptions | None:
    """How to scan ``dataset`` one batch at a time (Parquet without reading whole files ahead)."""
    # Parquet's pre-buffering coalesces the reads of a whole file up front (measured: a
    # 32 MB file fully buffered before the first 4096-row batch); without it, reads follow
    # the batches.
    if isinstance(dataset, ds.FileSystemDataset) and isinstance(dataset.format, ds.ParquetFileFormat):
        return ds.ParquetFragmentScanOptions(pre_buffer=False)
    return None
