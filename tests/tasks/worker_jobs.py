"""Computations for the worker tests; module-level so that the forkserver can import them."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.tasks.worker import Progress, Released, TaskInputError, WorkerMemory


def add(job: tuple[int, int], progress: Progress, memory: WorkerMemory) -> Released:
    progress(0.5, "adding")
    return Released({"sum": np.array([job[0] + job[1]], np.float64)}, {"count": 2.0})


def allocate(megabytes: int, progress: Progress, memory: WorkerMemory) -> Released:
    block = bytearray(megabytes * 1024 * 1024)
    return Released({}, {"bytes": float(len(block))})


def spin(seconds: float, progress: Progress, memory: WorkerMemory) -> Released:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return Released({}, {})


def sleep(seconds: float, progress: Progress, memory: WorkerMemory) -> Released:
    progress(0.0, "sleeping")
    time.sleep(seconds)
    return Released({}, {})


def refuse(message: str, progress: Progress, memory: WorkerMemory) -> Released:
    raise TaskInputError(message)


def explode(path: str, progress: Progress, memory: WorkerMemory) -> Released:
    raise RuntimeError(f"cannot open {path}")


def die(_: None, progress: Progress, memory: WorkerMemory) -> Released:
    os._exit(3)


def pid(_: None, progress: Progress, memory: WorkerMemory) -> Released:
    return Released({}, {"pid": float(os.getpid())})


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("touch /tmp/edge-agent-pwned",))


def hostile_pickle(marker: str, progress: Progress, memory: WorkerMemory) -> Released:
    """A worker taken over by a hostile graph writes a pickle where the daemon expects JSON."""
    import inspect

    sender = inspect.currentframe().f_back.f_locals["sender"]  # type: ignore[union-attr]
    sender.send(_Payload())
    sender.send_bytes(pickle.dumps(_Payload()))
    os._exit(0)


def hostile_result(kind: str, progress: Progress, memory: WorkerMemory) -> Released:
    """Results that do not match what they announce."""
    import inspect
    import json

    sender = inspect.currentframe().f_back.f_locals["sender"]  # type: ignore[union-attr]
    headers = {
        "object_dtype": {"tag": "result", "tensors": [{"name": "w", "dtype": "object", "shape": [1]}], "scalars": {}},
        "short": {"tag": "result", "tensors": [{"name": "w", "dtype": "float64", "shape": [1000]}], "scalars": {}},
        "scalar_string": {"tag": "result", "tensors": [], "scalars": {"x": "1e9"}},
    }
    sender.send_bytes(json.dumps(headers[kind]).encode())
    sender.send_bytes(b"\0" * 8)
    os._exit(0)


def kill_self(_: None, progress: Progress, memory: WorkerMemory) -> Released:
    """What the kernel's out-of-memory killer does: SIGKILL, long before any CPU limit."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)
    return Released({}, {})


def spin_past_sigxcpu(seconds: float, progress: Progress, memory: WorkerMemory) -> Released:
    """A worker that survives the soft CPU limit is SIGKILLed at the hard one."""
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    return spin(seconds, progress, memory)


def _wrapper(nodes: list[Any]) -> Any:
    from agent.runtime.isolation import GraphRole
    from agent.runtime.sessions import CompiledWrapper
    from tests.runtime.helpers import hostile_manifest, single_example_graph

    return CompiledWrapper(single_example_graph(nodes, check=False), hostile_manifest(), GraphRole.GRADIENT)


def _run_wrapper(nodes: list[Any], rows: int) -> Released:
    from agent.runtime.rows import RowBatch
    from tests.runtime.helpers import F, hostile_params

    wrapper = _wrapper(nodes)
    x = np.ones((rows, F), np.float32)
    total = wrapper.clipped_sum(hostile_params(np.random.default_rng(0)), RowBatch(x, np.ones(rows, np.float32)), 1.0)
    return Released({"sum": total}, {})


def graph_memory_hog(expanded_rows: int, progress: Progress, memory: WorkerMemory) -> Released:
    """A per-example graph that expands each row to ``expanded_rows`` copies, run by onnxruntime."""
    from tests.runtime.helpers import F, const, node, zero_loss

    nodes = [
        const("shape", [expanded_rows, F], np.int64),
        node("Expand", ["x", "shape"], "copies"),
        const("axis0", [0], np.int64),
        node("ReduceSum", ["copies", "axis0"], "grad_w", keepdims=0),
        node("ReduceSum", ["x"], "grad_b", keepdims=0),
        *zero_loss(),
    ]
    progress(0.0, "computing")
    return _run_wrapper(nodes, 2)


def graph_cpu_hog(rows: int, progress: Progress, memory: WorkerMemory) -> Released:
    """A per-example graph that multiplies two 1000x1000 matrices built from the row, run by onnxruntime."""
    from tests.runtime.helpers import F, const, node, zero_loss

    nodes = [
        const("repeats", [1000 * 1000 // F], np.int64),
        const("rows", [1000, 1000], np.int64),
        node("Tile", ["x", "repeats"], "wide"),
        node("Reshape", ["wide", "rows"], "square"),
        node("MatMul", ["square", "square"], "p1"),
        node("MatMul", ["p1", "square"], "p2"),
        node("ReduceSum", ["p2"], "total", keepdims=0),
        node("Mul", ["x", "total"], "grad_w"),
        node("ReduceSum", ["x"], "grad_b", keepdims=0),
        *zero_loss(),
    ]
    progress(0.0, "computing")
    return _run_wrapper(nodes, rows)


@dataclass(frozen=True)
class TensorJob:
    """A job whose tensors travel in shared memory (as a TaskJob's parameters do)."""

    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)

    def with_parameters(self, parameters: Mapping[str, np.ndarray]) -> TensorJob:
        return TensorJob(dict(parameters))


def echo_tensors(job: TensorJob, progress: Progress, memory: WorkerMemory) -> Released:
    """Returns the tensors it was given (as float64) and whether they were writable."""
    writable = any(array.flags.writeable for array in job.tensors.values())
    return Released({name: np.array(a, np.float64) for name, a in job.tensors.items()}, {"writable": float(writable)})


def write_tensors(job: TensorJob, progress: Progress, memory: WorkerMemory) -> Released:
    """Tries to change the daemon's parameters in place."""
    for array in job.tensors.values():
        array[...] = 0
    return Released({}, {})


def remember(_: None, progress: Progress, memory: WorkerMemory) -> Released:
    """How many tasks this worker ran before, counted in its memory, and its pid."""
    count = memory.get_or_create("count", lambda: [0])
    count[0] += 1
    return Released({}, {"count": float(count[0]), "pid": float(os.getpid())})


def unsealed_result(_: None, progress: Progress, memory: WorkerMemory) -> Released:
    """A worker that hands over a result region it could still change under the daemon."""
    import inspect
    import json
    import socket

    sender = inspect.currentframe().f_back.f_locals["sender"]  # type: ignore[union-attr]
    fd = os.memfd_create("result", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 64)
    sender.send_bytes(json.dumps({"tag": "result", "tensors": [{"name": "w", "dtype": "float64", "shape": [8]}],
                                  "scalars": {}}).encode())
    socket.send_fds(socket.socket(fileno=os.dup(sender.fileno())), [b"R"], [fd])
    os._exit(0)
