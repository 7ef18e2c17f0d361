"""RunTask / CancelTask / GetBudget over gRPC: messages in, events out, statuses for every refusal.

The stream of one RunTask call:
  client: TaskSpec, then chunks of the parameter tensors the agent asked for
  agent:  TaskAccepted, TaskProgress..., TaskResultHeader, result chunks, TaskCompleted
The privacy cost is committed to the ledger before the result header is sent.

The agent asks only for tensors it does not hold already for the caller's run
(agent.tasks.parameter_cache). Whenever it waits for the client (the spec, the
upload, a send of an event or result chunk) and nothing moves for
``stream_idle_seconds``, the call is cut off with a status saying so.
"""

from __future__ import annotations

import contextlib
import queue
import re
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Literal

import grpc
import numpy as np
import numpy.typing as npt
import structlog

from agent.api.chunk_codec import ChunkView, encode_result_chunk
from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.tensor_dtypes import CODE_BY_DTYPE, DTYPE_BY_CODE
from agent.datasets.spec import DATASET_ID_PATTERN
from agent.server.status import refuse
from agent.tasks.errors import TaskSpecError
from agent.tasks.failure import FailureKind
from agent.tasks.idle_timer import IdleTimer
from agent.tasks.kinds import registry
from agent.tasks.parameter_cache import ParameterCache, RunKey
from agent.tasks.runner import Admission, TaskOutcome, TaskRefusedError, TaskRunner
from agent.tasks.spec import TaskSpecification
from agent.tasks.tensors import TensorAssembler, TensorDecl, TensorError, chunk_views, to_wire
from agent.tasks.worker import TaskFailedError

_FAILURE_STATUS = {
    FailureKind.MEMORY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.CPU_TIME: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FailureKind.WALL_TIME: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailureKind.CANCELLED: grpc.StatusCode.CANCELLED,
    FailureKind.TASK_ERROR: grpc.StatusCode.FAILED_PRECONDITION,
    FailureKind.CRASHED: grpc.StatusCode.INTERNAL,
    FailureKind.ABANDONED: grpc.StatusCode.CANCELLED,
    FailureKind.STALLED: grpc.StatusCode.DEADLINE_EXCEEDED,
    FailureKind.INVALID_PARAMETERS: grpc.StatusCode.INVALID_ARGUMENT,
}
_MAX_PARAMETERS = 4096
# While a task is prepared or computes, its latest progress is repeated this often: a
# coordinator can then tell a long step from a dead stream.
PROGRESS_HEARTBEAT_SECONDS = 10.0
# The stage of the repeated progress before the worker reported any.
PREPARING = "preparing"
_MAX_RANK = 8
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_LABEL = 200
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
    profile = registry.by_wire(message.kind)
    if profile is None:
        raise TaskSpecError(f"spec.kind: must be {_one_of(registry.names())}")
    if _DIGEST.fullmatch(message.package_digest) is None:
        raise TaskSpecError("spec.package_digest must be sha256:<64 lowercase hex digits>")
    if DATASET_ID_PATTERN.fullmatch(message.dataset_id) is None:
        raise TaskSpecError("spec.dataset_id must be a dataset id (a-z, 0-9, '.', '_', '-'; at most 64)")
    if len(message.parameters) > _MAX_PARAMETERS:
        raise TaskSpecError(f"spec.parameters: at most {_MAX_PARAMETERS} tensors")
    task = profile.from_wire(message.hyperparameters)
    for field, value in (("run_id", message.run_id), ("correlation_id", message.correlation_id),
                         ("purpose", message.purpose)):
        if len(value) > _MAX_LABEL:
            raise TaskSpecError(f"spec.{field}: at most {_MAX_LABEL} characters")
    return TaskSpecification(
        profile=task,
        package_digest=message.package_digest,
        dataset_id=message.dataset_id,
        parameters=tuple(tensor_decl(h, f"spec.parameters[{i}]") for i, h in enumerate(message.parameters)),
        run_id=message.run_id,
        round=message.round,
        correlation_id=message.correlation_id,
        purpose=message.purpose,
    )


def _one_of(names: tuple[str, ...]) -> str:
    """``a, b or c``."""
    *others, last = names
    return f"{', '.join(others)} or {last}" if others else last


_Phase = Literal["spec", "upload", "events", "result"]
_CUT_OFF: dict[_Phase, str] = {
    "spec": "no data for {seconds} s: the agent waited for the task spec and cut the call off",
    "upload": "no data for {seconds} s during the parameter upload: the agent cut the task off; it was not charged",
    "events": (
        "no data for {seconds} s: the task's events were not read and the agent cut the call off; "
        "the task was cancelled (charged if it had begun reading rows)"
    ),
    "result": (
        "no data for {seconds} s: the result was not read and the agent cut the call off; the task was charged"
    ),
}


def _cancel_with_status(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """Ends the call from another thread with a status the peer can read.

    The servicer thread is blocked inside gRPC (waiting for a message, or for a
    send to complete) and cannot abort() itself; the public cancel() would send
    a bare CANCELLED that does not say why. The call under the context can
    cancel with a status; where it cannot (another gRPC build), the bare cancel.
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    cancel = getattr(call, "cancel", None)
    if callable(cancel):
        # A private interface: any failure falls back to the public one.
        with contextlib.suppress(Exception):
            cancel(code.value[0], details)
            return
    context.cancel()


class _StreamWatch:
    """Cuts off a RunTask call on which nothing moved for ``idle_seconds`` while the agent waits for its client.

    A stalled stream would otherwise hold a server thread, and before the
    result a budget reservation, for as long as the client likes. Paused while
    the agent itself works (admission, computing).
    """

    def __init__(
        self, context: grpc.ServicerContext, idle_seconds: float, logger: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._context = context
        self._logger = logger
        self.phase: _Phase = "spec"
        self.task_id = ""
        self._timer = IdleTimer(idle_seconds, self._cut_off, name="runtask-watchdog")

    @property
    def fired(self) -> bool:
        return self._timer.fired

    def message(self) -> str:
        return _CUT_OFF[self.phase].format(seconds=f"{self._timer.seconds:g}")

    def touch(self) -> None:
        self._timer.touch()

    def pause(self) -> None:
        self._timer.pause()

    def resume(self, phase: _Phase) -> None:
        self.phase = phase
        self._timer.resume()

    def stop(self) -> None:
        self._timer.stop()

    def _cut_off(self) -> None:
        self._logger.warning("task.stream_idle", task_id=self.task_id, phase=self.phase, seconds=self._timer.seconds)
        _cancel_with_status(self._context, grpc.StatusCode.DEADLINE_EXCEEDED, self.message())


def receive_tensors(
    assembler: TensorAssembler,
    count: int,
    messages: Iterable[pb.RunTaskRequest | ChunkView],
    on_message: Callable[[], None] = lambda: None,
) -> dict[str, npt.NDArray[np.generic]]:
    """Reads parameter chunks into ``assembler`` until the client half-closes; TensorError names the fault."""
    for message in messages:
        on_message()
        # The RunTask codec (agent.api.chunk_codec) decodes every parameter chunk,
        # canonical or not, as a ChunkView: any other message is out of place here.
        if not isinstance(message, ChunkView):
            raise TensorError("only parameter chunks may follow the task spec")
        if message.tensor_index >= count:
            raise TensorError(f"tensor_index {message.tensor_index} is out of range")
        assembler.write(message.tensor_index, message.offset, message.data)
    return assembler.finish()


def result_events(task_id: str, outcome: TaskOutcome) -> Iterator[pb.TaskEvent | bytes]:
    """TaskResultHeader, the result tensors in chunks of at most MAX_CHUNK_BYTES, TaskCompleted.

    Chunks come already encoded (agent.api.chunk_codec): one copy of the tensor's
    memory instead of three; the RunTask handler's serializer passes bytes through.
    """
    headers = []
    wires = []
    for name, array in outcome.tensors.items():
        dtype = str(array.dtype)  # float32 or float64: the worker protocol admits nothing else
        wire = to_wire(array, dtype)
        wires.append(wire)
        headers.append(
            pb.TensorHeader(name=name, dtype=CODE_BY_DTYPE[dtype], shape=list(array.shape), byte_length=len(wire))
        )
    yield pb.TaskEvent(result_header=pb.TaskResultHeader(tensors=headers, scalars=dict(outcome.scalars)))
    for index, wire in enumerate(wires):
        for offset, data in chunk_views(wire):
            yield encode_result_chunk(index, offset, data)
    yield pb.TaskEvent(
        completed=pb.TaskCompleted(
            task_id=task_id,
            epsilon_charged=outcome.epsilon_charged,
            delta=outcome.delta,
            budget_epsilon_spent=outcome.budget_epsilon_spent,
        )
    )


class TaskEndpoints:
    def __init__(
        self,
        runner: TaskRunner,
        logger: structlog.typing.FilteringBoundLogger,
        idle_seconds: float = 30.0,
        parameter_cache: ParameterCache | None = None,
        *,
        heartbeat_seconds: float = PROGRESS_HEARTBEAT_SECONDS,
    ) -> None:
        self._runner = runner
        self._logger = logger
        self._idle_seconds = idle_seconds
        self._cache = parameter_cache
        self._heartbeat_seconds = heartbeat_seconds

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    def run(
        self, caller: str, request_iterator: Iterator[pb.RunTaskRequest | ChunkView], context: grpc.ServicerContext
    ) -> Iterator[pb.TaskEvent | bytes]:
        # Who is asking comes first: an unknown client gets nothing, not even a thread to hold.
        try:
            self._runner.check_caller(caller)
        except TaskRefusedError as exc:
            refuse(context, exc.refusal, exc.reason)
        watch = _StreamWatch(context, self._idle_seconds, self._logger)
        try:
            yield from self._run(caller, request_iterator, context, watch)
        finally:
            watch.stop()

    def _run(
        self,
        caller: str,
        request_iterator: Iterator[pb.RunTaskRequest | ChunkView],
        context: grpc.ServicerContext,
        watch: _StreamWatch,
    ) -> Iterator[pb.TaskEvent | bytes]:
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:
            # Cut off by the watch, or the client went away: nothing was admitted.
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED if watch.fired else grpc.StatusCode.CANCELLED,
                          watch.message() if watch.fired else "the client went away before sending the task spec")
        if not isinstance(first, pb.RunTaskRequest) or first.WhichOneof("part") != "spec":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of RunTask must be the task spec")
        watch.pause()  # checking the spec and admitting the task is the agent's own work
        try:
            spec = specification(first.spec)
        except TaskSpecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        try:
            admission = self._runner.admit(caller, spec, cancelled)
        except TaskRefusedError as exc:
            refuse(context, exc.refusal, exc.reason)
        watch.task_id = admission.task_id
        # From here on the task holds a reservation: every exit must settle it.
        try:
            key = RunKey.of(caller, spec.run_id, spec.package_digest)
            held = self._cache.lookup(key, spec.parameters) if self._cache is not None else {}
            needed = [index for index in range(len(spec.parameters)) if index not in held]
            watch.resume("upload")
            yield pb.TaskEvent(
                accepted=pb.TaskAccepted(
                    task_id=admission.task_id,
                    epsilon_reserved=admission.epsilon_reserved,
                    parameters_needed=needed,
                )
            )
            received = self._receive_parameters(
                spec, needed=needed, request_iterator=request_iterator, context=context, admission=admission,
                watch=watch,
            )
            watch.pause()
            parameters = {
                decl.name: held[index] if index in held else received[decl.name]
                for index, decl in enumerate(spec.parameters)
            }
            # Kept before the first progress event: a coordinator that starts the run's next
            # task once this one reports progress finds these parameters held.
            if self._cache is not None:
                self._cache.store(key, spec.parameters, parameters)
            yield from self._execute(admission, parameters, cancelled, context, watch)
        finally:
            self._runner.settle_if_open(admission)

    def _receive_parameters(
        self,
        spec: TaskSpecification,
        *,
        needed: Collection[int],
        request_iterator: Iterator[pb.RunTaskRequest | ChunkView],
        context: grpc.ServicerContext,
        admission: Admission,
        watch: _StreamWatch,
    ) -> dict[str, npt.NDArray[np.generic]]:
        assembler = TensorAssembler(spec.parameters, shared=True)
        assembler.expect_only(set(needed))
        try:
            received = receive_tensors(assembler, len(spec.parameters), request_iterator, watch.touch)
        except TensorError as exc:
            if watch.fired:
                # Cut off by the watch: the request stream may end rather than fail.
                self._runner.fail(admission, FailureKind.STALLED, watch.message())
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, watch.message())
            if not context.is_active():
                # The call ended under the upload (a message over the size limit ends
                # the request stream early): the client has its status already.
                ended = f"the call ended during the parameter upload: {exc}"
                self._runner.fail(admission, FailureKind.ABANDONED, ended)
                context.abort(grpc.StatusCode.CANCELLED, "the call ended during the parameter upload")
            self._runner.fail(admission, FailureKind.INVALID_PARAMETERS, str(exc))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except grpc.RpcError:
            if watch.fired:
                self._runner.fail(admission, FailureKind.STALLED, watch.message())
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, watch.message())
            self._runner.fail(admission, FailureKind.ABANDONED, "the parameter upload stopped")
            context.abort(grpc.StatusCode.CANCELLED, "the parameter upload stopped")
        return received

    def _execute(
        self,
        admission: Admission,
        parameters: dict[str, npt.NDArray[np.generic]],
        cancelled: threading.Event,
        context: grpc.ServicerContext,
        watch: _StreamWatch,
    ) -> Iterator[pb.TaskEvent | bytes]:
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
        latest = (0.0, PREPARING)
        while True:
            try:
                item = events.get(timeout=self._heartbeat_seconds)
            except queue.Empty:
                item = latest
            if isinstance(item, TaskFailedError):
                context.abort(_FAILURE_STATUS[item.kind], item.message)
            if isinstance(item, TaskOutcome):
                watch.resume("result")
                for event in result_events(admission.task_id, item):
                    yield event
                    watch.touch()  # resumed: the previous message has been sent
                return
            latest = item
            fraction, stage = item
            watch.resume("events")
            yield pb.TaskEvent(progress=pb.TaskProgress(fraction=fraction, stage=stage))
            watch.pause()

