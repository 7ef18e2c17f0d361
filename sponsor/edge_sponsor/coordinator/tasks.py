"""The coordinator's side of one RunTask call: send spec and parameters, collect events and result."""

from __future__ import annotations

import contextlib
import hashlib
import queue
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from agent.api.chunk_codec import ChunkView, encode_parameter_chunk, run_task_callable
from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.api.tensor_dtypes import CODE_BY_DTYPE, DTYPE_BY_CODE
from agent.tasks.idle_timer import IdleTimer
from agent.tasks.tensors import (
    DTYPES,
    MAX_CHUNK_BYTES,
    TensorAssembler,
    TensorDecl,
    TensorError,
    chunk_views,
    to_wire,
)


@dataclass(frozen=True)
class TaskRun:
    task_id: str
    tensors: Mapping[str, npt.NDArray[np.generic]]
    scalars: Mapping[str, float]
    # This task's share of the budget group's ε, and the group's ε with it counted.
    epsilon_charged: float
    delta: float
    progress: tuple[tuple[float, str], ...]
    budget_epsilon_spent: float = 0.0
    # The parameters the agent asked for, i.e. did not hold already for the run.
    parameters_sent: tuple[str, ...] = ()


class TaskProtocolError(Exception):
    """The agent's event stream broke the RunTask protocol."""


class TaskCallError(Exception):
    """This side gave up on the call or could not take a message; ``code`` is the status to report.

    Nothing moved for ``stall_seconds``, the overall deadline passed, or the
    agent sent a message over this coordinator's receive limit.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def tensor_header(name: str, array: npt.NDArray[np.generic]) -> pb.TensorHeader:
    dtype = str(array.dtype)
    if dtype not in CODE_BY_DTYPE:
        raise ValueError(f"parameter {name!r}: dtype {dtype} cannot be sent")
    return pb.TensorHeader(
        name=name, dtype=CODE_BY_DTYPE[dtype], shape=list(array.shape), byte_length=array.size * array.itemsize
    )


@dataclass(frozen=True, eq=False)
class OutgoingTensor:
    name: str
    header: pb.TensorHeader
    # The raw little-endian bytes, as sent.
    wire: memoryview


@dataclass(frozen=True, eq=False)
class ParameterSet:
    """Parameters ready to send: wire bytes and sha256 of each tensor, computed once.

    Every site of a round, and the evaluation of the same model, send the same
    set: build it once per set of values, not once per task.
    """

    tensors: tuple[OutgoingTensor, ...]

    @classmethod
    def of(cls, parameters: Sequence[tuple[str, npt.NDArray[np.generic]]]) -> ParameterSet:
        tensors = []
        for name, array in parameters:
            header = tensor_header(name, array)
            wire = to_wire(array, str(array.dtype))
            header.sha256 = hashlib.sha256(wire).digest()
            tensors.append(OutgoingTensor(name, header, wire))
        return cls(tuple(tensors))

    @property
    def byte_length(self) -> int:
        return sum(len(tensor.wire) for tensor in self.tensors)


@dataclass(frozen=True)
class FastRunTask:
    """RunTask on a channel with the chunk codecs of agent.api.chunk_codec (no copies per chunk)."""

    call: Callable[..., Any]

    @classmethod
    def on(cls, channel: grpc.Channel) -> FastRunTask:
        return cls(run_task_callable(channel))


def run_task(
    stub: pb_grpc.AgentStub | FastRunTask,
    spec: pb.TaskSpec,
    parameters: Sequence[tuple[str, npt.NDArray[np.generic]]] | ParameterSet,
    *,
    timeout: float | None,
    stall_seconds: float | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    expected: Sequence[TensorDecl] | None = None,
    on_call: Callable[[Callable[[], None]], None] | None = None,
) -> TaskRun:
    """Runs one task; ``parameters`` in the package's order. Raises grpc.RpcError on a refusal.

    Each tensor is declared with its sha256, and only the tensors the agent asks
    for are sent (it may hold the others from an earlier task of the run).

    ``timeout`` caps the whole call; ``stall_seconds`` cancels it as soon as
    nothing has moved for that long: no event arrived and no parameter chunk
    was taken by the transport. A slow transfer or a long computation that
    reports progress goes on. Either raises TaskCallError (DEADLINE_EXCEEDED).

    With ``expected``, a result header that declares other tensors is a TaskProtocolError
    before any memory is set aside for it (a hostile agent could declare terabytes).

    ``on_call`` is handed, once the call has started, a function that cancels it (from any
    thread): the call then ends with CANCELLED, and the agent stops the task.
    """
    outgoing = parameters if isinstance(parameters, ParameterSet) else ParameterSet.of(parameters)
    message = pb.TaskSpec()
    message.CopyFrom(spec)
    del message.parameters[:]
    message.parameters.extend(tensor.header for tensor in outgoing.tensors)
    upload = _Upload(outgoing, fast=isinstance(stub, FastRunTask))
    started = time.monotonic()
    if isinstance(stub, FastRunTask):
        call = stub.call(upload.requests(message), timeout=timeout)
    else:
        call = stub.RunTask(upload.requests(message), timeout=timeout)  # type: ignore[arg-type]

    def cut_off() -> None:
        call.cancel()

    if on_call is not None:
        on_call(cut_off)

    watch: IdleTimer | None = None
    if stall_seconds:
        watch = IdleTimer(stall_seconds, cut_off, name="runtask-stall")
        upload.moved = watch.touch
    finished = False
    try:
        run = _read_events(call, upload, watch, on_progress, expected)
        # The agent ends the stream right after TaskCompleted: reading that end (instead
        # of cancelling) lets the call finish OK, so the agent does not log a success as a
        # cancelled call. The result is in hand whatever the end brings.
        with contextlib.suppress(grpc.RpcError):
            finished = next(iter(call), None) is None
        return run
    except grpc.RpcError as exc:
        raise _call_error(exc, watch, timeout, time.monotonic() - started) from None
    except TensorError as exc:
        raise TaskProtocolError(f"the result: {exc}") from None
    finally:
        if watch is not None:
            watch.stop()
        upload.needed.put(None)  # unblocks the request generator if the task was refused
        if isinstance(call, grpc.Future) and not finished:
            call.cancel()


class _Upload:
    """The request side of one call: the spec, then the tensors the agent asks for."""

    def __init__(self, outgoing: ParameterSet, *, fast: bool) -> None:
        self.outgoing = outgoing
        self.fast = fast
        self.needed: queue.Queue[list[int] | None] = queue.Queue()
        self.sent: list[str] = []
        self.moved: Callable[[], None] = lambda: None

    def requests(self, spec: pb.TaskSpec) -> Iterator[pb.RunTaskRequest | bytes]:
        yield pb.RunTaskRequest(spec=spec)
        # The agent says which tensors it needs once it has admitted the task.
        indexes = self.needed.get()
        if indexes is None:
            return
        for index in indexes:
            tensor = self.outgoing.tensors[index]
            self.sent.append(tensor.name)
            for offset, data in chunk_views(tensor.wire):
                if self.fast:
                    yield encode_parameter_chunk(index, offset, data)
                else:
                    chunk = pb.TensorChunk(tensor_index=index, offset=offset, data=bytes(data))
                    yield pb.RunTaskRequest(parameter_chunk=chunk)
                # Resumed only once gRPC has sent the previous message.
                self.moved()


def _read_events(
    call: Iterator[pb.TaskEvent | ChunkView],
    upload: _Upload,
    watch: IdleTimer | None,
    on_progress: Callable[[float, str], None] | None,
    expected: Sequence[TensorDecl] | None,
) -> TaskRun:
    progress: list[tuple[float, str]] = []
    assembler: TensorAssembler | None = None
    scalars: dict[str, float] = {}
    task_id = ""
    for event in call:
        if watch is not None:
            watch.touch()
        if isinstance(event, ChunkView):
            if assembler is None:
                raise TaskProtocolError("a result chunk arrived before the result header")
            assembler.write(event.tensor_index, event.offset, event.data)
            continue
        kind = event.WhichOneof("event")
        if kind == "accepted":
            task_id = event.accepted.task_id
            upload.needed.put(_needed(event.accepted.parameters_needed, len(upload.outgoing.tensors)))
        elif kind == "progress":
            progress.append((event.progress.fraction, event.progress.stage))
            if on_progress is not None:
                on_progress(event.progress.fraction, event.progress.stage)
        elif kind == "result_header":
            declared = [_decl(h) for h in event.result_header.tensors]
            _check_declared(declared, expected)
            assembler = TensorAssembler(declared)
            scalars = dict(event.result_header.scalars)
        elif kind == "result_chunk":
            if assembler is None:
                raise TaskProtocolError("a result chunk arrived before the result header")
            chunk = event.result_chunk
            assembler.write(chunk.tensor_index, chunk.offset, chunk.data)
        elif kind == "completed":
            if assembler is None:
                raise TaskProtocolError("the task completed without a result header")
            return TaskRun(
                task_id=task_id,
                tensors=assembler.finish(),
                scalars=scalars,
                epsilon_charged=event.completed.epsilon_charged,
                delta=event.completed.delta,
                budget_epsilon_spent=event.completed.budget_epsilon_spent,
                progress=tuple(progress),
                parameters_sent=tuple(upload.sent),
            )
    raise TaskProtocolError("the agent ended the task stream without a result")


def _check_declared(declared: Sequence[TensorDecl], expected: Sequence[TensorDecl] | None) -> None:
    if expected is not None and [(d.name, d.dtype, d.shape) for d in declared] != [
        (e.name, e.dtype, e.shape) for e in expected
    ]:
        raise TaskProtocolError(
            "the result declares "
            + (", ".join(f"{d.name}{list(d.shape)}" for d in declared) or "no tensors")
            + ", not the package's "
            + (", ".join(f"{e.name}{list(e.shape)}" for e in expected) or "none")
        )


def _needed(indexes: Sequence[int], count: int) -> list[int]:
    if any(index >= count for index in indexes) or len(set(indexes)) != len(indexes):
        raise TaskProtocolError(f"the agent asked for parameters {list(indexes)} of {count}")
    return list(indexes)


def _call_error(
    exc: grpc.RpcError, watch: IdleTimer | None, timeout: float | None, elapsed: float
) -> grpc.RpcError | TaskCallError:
    """Our own reasons for a failed call as TaskCallError; the agent's statuses as they are."""
    if watch is not None and watch.fired:
        return TaskCallError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no data for {watch.seconds:g} s: no event came from the agent and no parameter chunk was taken, "
            "so the coordinator cancelled the task (stall_seconds)",
        )
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
    # gRPC's clock and ours differ by a hair: a deadline that fired at the cap is ours.
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout is not None and elapsed >= timeout - 0.05:
        return TaskCallError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the task did not finish within its overall deadline of {timeout:g} s; it was still moving",
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "CLIENT:" in details and "larger than max" in details:
        # gRPC's own words name neither the setting nor what would be enough.
        return TaskCallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{details}: a RunTask message is over this coordinator's own message size limit (max_message_bytes); "
            f"tensors travel in chunks of up to {MAX_CHUNK_BYTES} bytes plus framing, so allow at least 2 MiB",
        )
    return exc


def _decl(header: pb.TensorHeader) -> TensorDecl:
    dtype = DTYPE_BY_CODE.get(header.dtype)
    if dtype is None or dtype not in DTYPES:
        raise TaskProtocolError(f"result tensor {header.name!r} has an unknown dtype {header.dtype}")
    return TensorDecl(header.name, dtype, tuple(header.shape))
