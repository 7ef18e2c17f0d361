"""onnxruntime sessions for isolation wrappers, built once per package and task shape.

Two wrappers compute the same clipped sums (:class:`RuntimeMode`): the agent's compiled
batch of the package graph (:mod:`agent.runtime.batched_wrapper`, fast) and the ``Scan``
over rows (:mod:`agent.runtime.isolation`, the reference). ``AUTO`` takes the compiled
batch when the batching compiler accepts the graph and otherwise falls back to ``Scan``,
logging the compiler's reason (also kept in :attr:`CompiledWrapper.fallback_reason`).

A task worker builds one :class:`CompiledWrapper` for the graph its task runs and keeps
it while it stays warm for the run's next tasks (agent.tasks.worker).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from enum import StrEnum

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from agent.packages.manifest import Manifest
from agent.runtime.batched_wrapper import (
    ORDER,
    ROWS_PER_RUN,
    SAME_UNIT,
    build_batched_wrapper,
)
from agent.runtime.batching import BatchingRefused
from agent.runtime.contribution import UnitLayouts, whole_unit_spans
from agent.runtime.errors import GraphExecutionError, WrapperBuildError
from agent.runtime.isolation import (
    CLIP_NORM,
    SUM,
    UNIT_END,
    GraphRole,
    WrapperLayout,
    X,
    Y,
    build_wrapper,
    layout_for,
    parameter_input,
)
from agent.runtime.rows import RowBatch

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


class RuntimeMode(StrEnum):
    AUTO = "auto"
    """The compiled batch if the compiler accepts the graph, else ``Scan``."""
    SCAN = "scan"
    BATCHED = "batched"
    """The compiled batch or :class:`~agent.runtime.batching.BatchingRefused`."""


class CompiledWrapper:
    """A wrapper's session: feeds parameters and rows, returns the flat float64 sum."""

    def __init__(
        self,
        graph_onnx: bytes,
        manifest: Manifest,
        role: GraphRole,
        *,
        intra_op_threads: int = 1,
        mode: RuntimeMode = RuntimeMode.AUTO,
    ) -> None:
        self.role = role
        self.manifest = manifest
        self.layout: WrapperLayout = layout_for(manifest, role)
        self._graph = graph_onnx
        self._intra_op_threads = intra_op_threads
        # Built on the first batch grouped by privacy unit (see _unit_sum).
        self._unit_batched: ort.InferenceSession | None = None
        self._unit_batched_refused = False
        # Whether a unit may have more rows than a compiled run holds (set_max_rows_per_unit).
        self._units_in_scan = False
        self._unit_scan: ort.InferenceSession | None = None
        self._unit_layouts = UnitLayouts()
        self.fallback_reason: str | None = None
        """Why ``AUTO`` runs the ``Scan`` wrapper (``None``: it runs the compiled batch)."""
        self.mode = RuntimeMode.SCAN
        """The wrapper in use: ``BATCHED`` or ``SCAN``."""
        if mode is not RuntimeMode.SCAN:
            try:
                model = build_batched_wrapper(graph_onnx, manifest, role)
                self.mode = RuntimeMode.BATCHED
            except BatchingRefused as refused:
                if mode is RuntimeMode.BATCHED:
                    raise
                self.fallback_reason = str(refused)
                logging.getLogger(__name__).info("batching compiler refused the graph, using Scan: %s", refused)
        if self.mode is RuntimeMode.SCAN:
            model = build_wrapper(graph_onnx, manifest, role)
        self._session = _session(model, intra_op_threads)

    def clipped_sum(
        self, parameters: Mapping[str, Float32Array], batch: RowBatch, clip_norm: float | None = None
    ) -> Float64Array:
        """Sum over ``batch`` of the clipped per-example results, flat, float64.

        For a batch grouped by privacy unit (``batch.unit_starts``), the sum over units of
        each unit's bounded contribution (:mod:`agent.runtime.contribution`).

        ``parameters`` must already be checked (:func:`agent.runtime.parameters.checked_parameters`);
        ``clip_norm`` is required for gradients and ignored for metrics.
        """
        if batch.size == 0:
            return np.zeros(self.layout.size, np.float64)
        feeds: dict[str, object] = {parameter_input(name): np.asarray(value) for name, value in parameters.items()}
        feeds[X] = batch.x
        feeds[Y] = batch.y
        if self.role is GraphRole.GRADIENT:
            if clip_norm is None or not (math.isfinite(clip_norm) and clip_norm > 0.0):
                # C / max(norm, C) is only a clip for a finite C > 0 (C = 0 would give 0/0).
                raise ValueError("a gradient wrapper needs a finite clip_norm > 0")
            feeds[CLIP_NORM] = np.asarray(clip_norm, np.float64)
        try:
            if batch.unit_starts is not None:
                return self._unit_sum(feeds, batch, clip_norm)
            if self.mode is RuntimeMode.SCAN:
                (result,) = self._session.run([SUM], feeds)
                return self._checked(result)
            runs = (
                self._session.run([SUM], feeds | {X: batch.x[rows], Y: batch.y[rows]})[0]
                for rows in (slice(start, start + ROWS_PER_RUN) for start in range(0, batch.size, ROWS_PER_RUN))
            )
            # The first run's output is the running total: a zeroed array and an addition
            # of the model's size would cost as much as a small batch's graph.
            total = self._checked(next(runs))
            for part in runs:
                total += self._checked(part)
            return total
        except Exception as exc:  # onnxruntime's Fail, RuntimeException, InvalidArgument...
            _raise_if_out_of_memory(exc)
            raise GraphExecutionError(
                "the package graph failed on an example (for instance an output whose size is not its declared "
                "parameter's or metric's)",
                detail=str(exc)[:2000],
            ) from None

    def set_max_rows_per_unit(self, rows: int) -> None:
        """The most rows a unit of this task's dataset can have (the policy's cap, public).

        Where a unit may have more rows than one compiled run holds, every unit is summed by
        the Scan wrapper: which wrapper runs, and so what a row costs, must not depend on
        which units a step sampled (a coordinator times the steps).
        """
        self._units_in_scan = rows > ROWS_PER_RUN

    @property
    def unit_mode(self) -> RuntimeMode:
        """The wrapper that sums batches grouped by privacy unit: the compiled batch
        (``BATCHED``) when the compiler accepts the graph with the unit tail, else ``SCAN``.
        A unit of more than ROWS_PER_RUN rows is always summed by ``SCAN``."""
        return RuntimeMode.BATCHED if self._unit_batched_session() is not None else RuntimeMode.SCAN

    def _unit_batched_session(self) -> ort.InferenceSession | None:
        if self._units_in_scan:
            return None
        if self.mode is RuntimeMode.BATCHED and self._unit_batched is None and not self._unit_batched_refused:
            try:
                model = build_batched_wrapper(self._graph, self.manifest, self.role, units=True)
            except BatchingRefused as refused:
                logging.getLogger(__name__).info("per-unit sums run in Scan: %s", refused)
                self._unit_batched_refused = True
            else:
                self._unit_batched = _session(model, self._intra_op_threads)
        return self._unit_batched

    def _unit_sum(self, feeds: dict[str, object], batch: RowBatch, clip_norm: float | None) -> Float64Array:
        """Sum over whole units (rows grouped by ``batch.unit_starts``) of their bounded contributions.

        The compiled batch takes runs of whole units of at most ROWS_PER_RUN rows; when the
        graph only runs in Scan, or a unit may be larger than a run, every unit goes to the
        Scan wrapper, which carries one unit's partial sum from row to row. (A unit larger
        than the cap reaches here only in tests; it, too, goes to Scan.)
        """
        if batch.unit_starts is None:
            raise ValueError("the batch is not grouped by unit")
        starts = batch.unit_starts
        sizes = batch.unit_sizes()
        batched = self._unit_batched_session()
        limit = ROWS_PER_RUN if batched is not None else batch.size
        total: Float64Array | None = None
        for first, last, begin, end in whole_unit_spans(starts, batch.size, limit):
            run = feeds | {X: batch.x[begin:end], Y: batch.y[begin:end]}
            if batched is not None and end - begin <= ROWS_PER_RUN:
                part = self._unit_batched_sum(batched, run, sizes[first:last], starts[first:last] - begin)
            else:
                part = self._unit_scan_sum(run, starts[first:last] - begin, end - begin)
            # The first run's output (a fresh array) is the running total, as in the per-row path.
            if total is None:
                total = part
            else:
                total += part
        if total is None:
            raise ValueError("a batch with rows has units")  # unreachable: clipped_sum returns early on 0 rows
        return total

    def _unit_batched_sum(
        self,
        session: ort.InferenceSession,
        feeds: dict[str, object],
        sizes: npt.NDArray[np.int64],
        starts: npt.NDArray[np.int64],
    ) -> Float64Array:
        blocks = self._unit_layouts.of(sizes, starts)
        # The graph lays the rows out itself and counts the padding rows' results as zeros.
        feeds = feeds | {ORDER: blocks.order, SAME_UNIT: blocks.same_unit}
        (result,) = session.run([SUM], feeds)
        return self._checked(result)

    def _unit_scan_sum(self, feeds: dict[str, object], unit_starts: npt.NDArray[np.int64], rows: int) -> Float64Array:
        if self._unit_scan is None:
            model = build_wrapper(self._graph, self.manifest, self.role, units=True)
            self._unit_scan = _session(model, self._intra_op_threads)
        end = np.zeros(rows, np.bool_)
        end[np.append(unit_starts[1:], rows) - 1] = True
        (result,) = self._unit_scan.run([SUM], feeds | {UNIT_END: end})
        return self._checked(result)

    def _checked(self, output: npt.ArrayLike) -> Float64Array:
        # A later run's output of the wrong shape would broadcast into every coordinate.
        array = np.asarray(output)
        if array.shape != (self.layout.size,):
            raise ValueError(f"an output has shape {list(array.shape)}, the layout {self.layout.size} values")
        if array.dtype != np.float64 or not (array.flags.c_contiguous and array.flags.writeable):
            return np.array(array, np.float64)  # a copy of ours (np.require costs more, for the common case)
        return array

    def unflatten(self, flat: npt.NDArray[np.floating]) -> dict[str, npt.NDArray[np.floating]]:
        """``flat`` cut into the layout's named, shaped tensors (views)."""
        return {
            slot.name: flat[slot.offset : slot.offset + slot.size].reshape(slot.shape) for slot in self.layout.slots
        }


def _session(model: onnx.ModelProto, intra_op_threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # onnxruntime would log run-time errors, whose text may depend on row values, to stderr;
    # GraphExecutionError.detail keeps them for the worker to log deliberately.
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        _raise_if_out_of_memory(exc)
        raise WrapperBuildError(f"onnxruntime refuses the wrapped package graph ({type(exc).__name__})") from None


# How onnxruntime words an allocation that failed (its arena, or C++ operator new under
# RLIMIT_AS): it raises its generic Fail/RuntimeException types, not MemoryError.
_ALLOCATION_FAILURES = ("Failed to allocate", "bad_alloc")


def _raise_if_out_of_memory(exc: Exception) -> None:
    """Re-raises onnxruntime's allocation failure as MemoryError: the worker reports it as the memory limit.

    Without this it would be a graph error (or a refused graph), telling the
    operator nothing about the limit that was hit.
    """
    if isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _ALLOCATION_FAILURES):
        raise MemoryError("onnxruntime could not allocate memory for the package graph") from None
