"""The coordinator's side of one RunTask call: send spec and parameters, collect events and result."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
import numpy.typing as npt

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.api.tensor_dtypes import CODE_BY_DTYPE, DTYPE_BY_CODE
from agent.tasks.tensors import DTYPES, TensorAssembler, TensorDecl, chunks, to_wire


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


class TaskProtocolError(Exception):
    """The agent's event stream broke the RunTask protocol."""


def tensor_header(name: str, array: npt.NDArray[np.generic]) -> pb.TensorHeader:
    dtype = str(array.dtype)
    if dtype not in CODE_BY_DTYPE:
        raise ValueError(f"parameter {name!r}: dtype {dtype} cannot be sent")
    return pb.TensorHeader(
        name=name, dtype=CODE_BY_DTYPE[dtype], shape=list(array.shape), byte_length=array.size * array.itemsize
    )


def run_task(
    stub: pb_grpc.AgentStub,
    spec: pb.TaskSpec,
    parameters: Sequence[tuple[str, npt.NDArray[np.generic]]],
    *,
    timeout: float | None,
    on_progress: Callable[[float, str], None] | None = None,
    expected: Sequence[TensorDecl] | None = None,
) -> TaskRun:
    """Runs one task; ``parameters`` in the package's order. Raises grpc.RpcError on a refusal.

    With ``expected``, a result header that declares other tensors is a TaskProtocolError
    before any memory is set aside for it (a hostile agent could declare terabytes).
    """
    message = pb.TaskSpec()
    message.CopyFrom(spec)
    del message.parameters[:]
    message.parameters.extend(tensor_header(name, array) for name, array in parameters)
    needed: queue.Queue[list[int] | None] = queue.Queue()

    def requests() -> Iterator[pb.RunTaskRequest]:
        yield pb.RunTaskRequest(spec=message)
        # The agent says which tensors it needs once it has admitted the task.
        indexes = needed.get()
        if indexes is None:
            return
        for index in indexes:
            array = parameters[index][1]
            for offset, data in chunks(to_wire(array, str(array.dtype))):
                yield pb.RunTaskRequest(parameter_chunk=pb.TensorChunk(tensor_index=index, offset=offset, data=data))

    call = stub.RunTask(requests(), timeout=timeout)
    progress: list[tuple[float, str]] = []
    assembler: TensorAssembler | None = None
    scalars: dict[str, float] = {}
    task_id = ""
    try:
        for event in call:
            kind = event.WhichOneof("event")
            if kind == "accepted":
                task_id = event.accepted.task_id
                needed.put(list(event.accepted.parameters_needed))
            elif kind == "progress":
                progress.append((event.progress.fraction, event.progress.stage))
                if on_progress is not None:
                    on_progress(event.progress.fraction, event.progress.stage)
            elif kind == "result_header":
                declared = [_decl(h) for h in event.result_header.tensors]
                if expected is not None and [(d.name, d.dtype, d.shape) for d in declared] != [
                    (e.name, e.dtype, e.shape) for e in expected
                ]:
                    raise TaskProtocolError(
                        "the result declares "
                        + (", ".join(f"{d.name}{list(d.shape)}" for d in declared) or "no tensors")
                        + ", not the package's "
                        + (", ".join(f"{e.name}{list(e.shape)}" for e in expected) or "none")
                    )
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
                )
        raise TaskProtocolError("the agent ended the task stream without a result")
    finally:
        needed.put(None)  # unblocks the request generator if the task was refused
        if isinstance(call, grpc.Future):
            call.cancel()


def _decl(header: pb.TensorHeader) -> TensorDecl:
    dtype = DTYPE_BY_CODE.get(header.dtype)
    if dtype is None or dtype not in DTYPES:
        raise TaskProtocolError(f"result tensor {header.name!r} has an unknown dtype {header.dtype}")
    return TensorDecl(header.name, dtype, tuple(header.shape))
