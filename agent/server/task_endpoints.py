"""RunTask / CancelTask / GetBudget over gRPC: messages in, events out, statuses for every refusal.

The stream of one RunTask call:
  client: TaskSpec, then chunks of the parameter tensors the agent asked for
  agent:  TaskAccepted, TaskProgress..., TaskResultHeader, result chunks, TaskCompleted
The privacy cost is committed to the ledger before the result header is sent.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Literal

import grpc
import numpy as np
import numpy.typing as npt
import structlog

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.tensor_dtypes import CODE_BY_DTYPE, DTYPE_BY_CODE
from agent.datasets.spec import DATASET_ID_PATTERN
from agent.packages.manifest import TaskKind
from agent.tasks.runner import Admission, TaskOutcome, TaskRefusedError, TaskRunner
from agent.tasks.spec import Hyperparameters, TaskSpecError, TaskSpecification
from agent.tasks.tensors import TensorAssembler, TensorDecl, TensorError, chunks, to_wire
from agent.tasks.worker import FailureKind, TaskFailedError

_KINDS = {
    pb.TASK_KIND_DP_GRADIENT: TaskKind.DP_GRADIENT,
    pb.TASK_KIND_DP_LOCAL_TRAINING: TaskKind.DP_LOCAL_TRAINING,
    pb.TASK_KIND_DP_EVALUATE: TaskKind.DP_EVALUATE,
}
_FAILURE_STATUS = {
    FailureKind.MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.CPU_TIME: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.WALL_TIME: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailureKind.CANCELLED: grpc.StatusCode.CANCELLED,
    FailureKind.TASK_ERROR: grpc.StatusCode.FAILED_PRECONDITION,
    FailureKind.CRASHED: grpc.StatusCode.INTERNAL,
}
_MAX_PARAMETERS = 4096
# A RunTask client that sends nothing for this long before its upload is complete is cut off.
UPLOAD_IDLE_SECONDS = 30.0
_MAX_RANK = 8
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_LABEL = 200
_Hyperparameter = Literal["clip_norm", "noise_multiplier", "sampling_rate", "local_steps", "learning_rate"]
_MAX_TENSOR_BYTES = 8 * 1024**3


def tensor_decl(header: pb.TensorHeader, where: str) -> TensorDecl:
    dtype = DTYPE_BY_CODE.get(header.dtype)
    if dtype is None:
        raise TaskSpecError(f"{where}.dtype: unsupported dtype {header.dtype}")
    # Bounded before any arithmetic: a shape of 40k dimensions would otherwise hold the GIL for seconds.
    if len(header.shape) > _MAX_RANK:
        raise TaskSpecError(f"{where}.shape: at most {_MAX_RANK} dimensions, got {len(header.shape)}")
    if any(not 0 <= dim <= _MAX_TENSOR_BYTES for dim in header.shape):
        raise TaskSpecError(f"{where}.shape: dimensions must be 0..{_MAX_TENSOR_BYTES}, got {list(header.shape)}")
    if len(header.name) > _MAX_LABEL:
        raise TaskSpecError(f"{where}.name: at most {_MAX_LABEL} characters")
    if len(header.sha256) not in (0, 32):
        raise TaskSpecError(f"{where}.sha256: must be empty or 32 bytes")
    decl = TensorDecl(header.name, dtype, tuple(header.shape), header.sha256)
    if decl.byte_length > _MAX_TENSOR_BYTES:
        raise TaskSpecError(f"{where}: {decl.byte_length} bytes is more than the agent accepts for one tensor")
    if header.byte_length != decl.byte_length:
        raise TaskSpecError(
            f"{where}.byte_length: {header.byte_length} does not match shape and dtype ({decl.byte_length})"
        )
    return decl


def specification(message: pb.TaskSpec) -> TaskSpecification:
    """A TaskSpec message as checked values; TaskSpecError names the field at fault."""
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise TaskSpecError("spec.kind: must be dp_gradient, dp_local_training or dp_evaluate")
    if _DIGEST.fullmatch(message.package_digest) is None:
        raise TaskSpecError("spec.package_digest must be sha256:<64 lowercase hex digits>")
    if DATASET_ID_PATTERN.fullmatch(message.dataset_id) is None:
        raise TaskSpecError("spec.dataset_id must be a dataset id (a-z, 0-9, '.', '_', '-'; at most 64)")
    if len(message.parameters) > _MAX_PARAMETERS:
        raise TaskSpecError(f"spec.parameters: at most {_MAX_PARAMETERS} tensors")
    hyper = message.hyperparameters
    required: list[_Hyperparameter] = ["noise_multiplier", "sampling_rate"]
    if kind is not TaskKind.DP_EVALUATE:
        required.append("clip_norm")
    if kind is TaskKind.DP_LOCAL_TRAINING:
        required += ["local_steps", "learning_rate"]
    for name in required:
        if not hyper.HasField(name):
            raise TaskSpecError(f"spec.hyperparameters.{name} is required for {kind.value}")
    hyperparameters = Hyperparameters(
        clip_norm=hyper.clip_norm if hyper.HasField("clip_norm") else 1.0,
        noise_multiplier=hyper.noise_multiplier,
        sampling_rate=hyper.sampling_rate,
        local_steps=hyper.local_steps if kind is TaskKind.DP_LOCAL_TRAINING else 1,
        learning_rate=hyper.learning_rate if kind is TaskKind.DP_LOCAL_TRAINING else 0.0,
        release_noisy_count=hyper.release_noisy_count,
    )
    hyperparameters.check(kind)
    for field, value in (("run_id", message.run_id), ("correlation_id", message.correlation_id),
                         ("purpose", message.purpose)):
        if len(value) > _MAX_LABEL:
            raise TaskSpecError(f"spec.{field}: at most {_MAX_LABEL} characters")
    return TaskSpecification(
        kind=kind,
        package_digest=message.package_digest,
        dataset_id=message.dataset_id,
        hyperparameters=hyperparameters,
        parameters=tuple(tensor_decl(h, f"spec.parameters[{i}]") for i, h in enumerate(message.parameters)),
        run_id=message.run_id,
        round=message.round,
        correlation_id=message.correlation_id,
        purpose=message.purpose,
    )


class _IdleWatchdog:
    """Cancels a call whose client stops sending before the upload is complete.

    A stalled stream would otherwise hold a server thread, and after admission
    a budget reservation, for as long as the client likes.
    """

    def __init__(self, context: grpc.ServicerContext, idle_seconds: float) -> None:
        self._context = context
        self._idle_seconds = idle_seconds
        self._last = time.monotonic()
        self._done = threading.Event()
        self.expired = False
        threading.Thread(target=self._watch, name="runtask-watchdog", daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(timeout=min(1.0, self._idle_seconds)):
            if time.monotonic() - self._last > self._idle_seconds:
                self.expired = True
                self._context.cancel()
                return


class TaskEndpoints:
    def __init__(
        self, runner: TaskRunner, logger: structlog.typing.FilteringBoundLogger, idle_seconds: float | None = None
    ) -> None:
        self._runner = runner
        self._logger = logger
        self._idle_seconds = UPLOAD_IDLE_SECONDS if idle_seconds is None else idle_seconds

    def run(
        self, caller: str, request_iterator: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TaskEvent]:
        # Who is asking comes first: an unknown client gets nothing, not even a thread to hold.
        try:
            self._runner.check_caller(caller)
        except TaskRefusedError as exc:
            context.abort(getattr(grpc.StatusCode, exc.status), exc.reason)
        watchdog = _IdleWatchdog(context, self._idle_seconds)
        try:
            yield from self._run(caller, request_iterator, context, watchdog)
        finally:
            watchdog.stop()

    def _run(
        self,
        caller: str,
        request_iterator: Iterator[pb.RunTaskRequest],
        context: grpc.ServicerContext,
        watchdog: _IdleWatchdog,
    ) -> Iterator[pb.TaskEvent]:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "spec":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of RunTask must be the task spec")
        watchdog.touch()
        try:
            spec = specification(first.spec)
        except TaskSpecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        try:
            admission = self._runner.admit(caller, spec, cancelled)
        except TaskRefusedError as exc:
            context.abort(getattr(grpc.StatusCode, exc.status), exc.reason)
        # From here on the task holds a reservation: every exit must settle it.
        try:
            yield pb.TaskEvent(
                accepted=pb.TaskAccepted(
                    task_id=admission.task_id,
                    epsilon_reserved=admission.epsilon_reserved,
                    parameters_needed=list(range(len(spec.parameters))),
                )
            )
            parameters = self._receive_parameters(spec, request_iterator, context, admission, watchdog)
            watchdog.stop()
            yield from self._execute(admission, parameters, cancelled, context)
        finally:
            self._runner.settle_if_open(admission)

    def _receive_parameters(
        self,
        spec: TaskSpecification,
        request_iterator: Iterator[pb.RunTaskRequest],
        context: grpc.ServicerContext,
        admission: Admission,
        watchdog: _IdleWatchdog,
    ) -> dict[str, npt.NDArray[np.generic]]:
        assembler = TensorAssembler(spec.parameters, shared=True)
        try:
            for message in request_iterator:
                watchdog.touch()
                if message.WhichOneof("part") != "parameter_chunk":
                    raise TensorError("only parameter chunks may follow the task spec")
                chunk = message.parameter_chunk
                if chunk.tensor_index >= len(spec.parameters):
                    raise TensorError(f"tensor_index {chunk.tensor_index} is out of range")
                assembler.write(chunk.tensor_index, chunk.offset, chunk.data)
            return assembler.finish()
        except TensorError as exc:
            self._runner.fail(admission, "invalid_parameters", str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except grpc.RpcError:
            # The client went away (or the watchdog cancelled a stalled upload).
            self._runner.fail(admission, "abandoned", "the parameter upload stopped")
            context.abort(grpc.StatusCode.CANCELLED, "the parameter upload stopped")

    def _execute(
        self,
        admission: Admission,
        parameters: dict[str, npt.NDArray[np.generic]],
        cancelled: threading.Event,
        context: grpc.ServicerContext,
    ) -> Iterator[pb.TaskEvent]:
        events: queue.Queue[tuple[float, str] | TaskOutcome | TaskFailedError] = queue.Queue()

        def work() -> None:
            try:
                events.put(
                    self._runner.execute(
                        admission, parameters, on_progress=lambda f, s: events.put((f, s)), cancelled=cancelled
                    )
                )
            except TaskFailedError as exc:
                events.put(exc)
            except BaseException as exc:  # a bug must end the call, not hang it
                self._logger.exception("task.execute_failed", task_id=admission.task_id)
                events.put(TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", repr(exc)))

        threading.Thread(target=work, name=f"task-{admission.task_id}", daemon=True).start()
        while True:
            item = events.get()
            if isinstance(item, TaskFailedError):
                context.abort(_FAILURE_STATUS[item.kind], item.message)
            if isinstance(item, TaskOutcome):
                yield from self._result_events(admission, item)
                return
            fraction, stage = item
            yield pb.TaskEvent(progress=pb.TaskProgress(fraction=fraction, stage=stage))

    @staticmethod
    def _result_events(admission: Admission, outcome: TaskOutcome) -> Iterator[pb.TaskEvent]:
        headers = []
        wires = []
        for name, array in outcome.tensors.items():
            dtype = str(array.dtype)  # float32 or float64: the worker protocol admits nothing else
            wire = to_wire(array, dtype)
            wires.append(wire)
            headers.append(
                pb.TensorHeader(
                    name=name, dtype=CODE_BY_DTYPE[dtype], shape=list(array.shape), byte_length=len(wire)
                )
            )
        yield pb.TaskEvent(result_header=pb.TaskResultHeader(tensors=headers, scalars=dict(outcome.scalars)))
        for index, wire in enumerate(wires):
            for offset, data in chunks(wire):
                yield pb.TaskEvent(result_chunk=pb.TensorChunk(tensor_index=index, offset=offset, data=data))
        yield pb.TaskEvent(
            completed=pb.TaskCompleted(
                task_id=admission.task_id,
                epsilon_charged=outcome.epsilon_charged,
                delta=outcome.delta,
                budget_epsilon_spent=outcome.budget_epsilon_spent,
            )
        )
