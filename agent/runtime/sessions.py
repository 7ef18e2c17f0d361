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
import onnxruntime as ort

from agent.packages.manifest import Manifest
from agent.runtime.batched_wrapper import ROWS_PER_RUN, build_batched_wrapper
from agent.runtime.batching import BatchingRefused
from agent.runtime.errors import GraphExecutionError, WrapperBuildError
from agent.runtime.isolation import (
    CLIP_NORM,
    SUM,
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # onnxruntime would log run-time errors, whose text may depend on row values, to stderr;
        # GraphExecutionError.detail keeps them for the worker to log deliberately.
        options.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            _raise_if_out_of_memory(exc)
            raise WrapperBuildError(f"onnxruntime refuses the wrapped package graph ({type(exc).__name__})") from None

    def clipped_sum(
        self, parameters: Mapping[str, Float32Array], batch: RowBatch, clip_norm: float | None = None
    ) -> Float64Array:
        """Sum over ``batch`` of the clipped per-example results, flat, float64.

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

    def _checked(self, output: npt.ArrayLike) -> Float64Array:
        # A later run's output of the wrong shape would broadcast into every coordinate.
        array = np.asarray(output)
        if array.shape != (self.layout.size,):
            raise ValueError(f"an output has shape {list(array.shape)}, the layout {self.layout.size} values")
        return np.require(array, np.float64, ["C", "W"])

    def unflatten(self, flat: npt.NDArray[np.floating]) -> dict[str, npt.NDArray[np.floating]]:
        """``flat`` cut into the layout's named, shaped tensors (views)."""
        return {
            slot.name: flat[slot.offset : slot.offset + slot.size].reshape(slot.shape) for slot in self.layout.slots
        }


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
