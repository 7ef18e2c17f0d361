"""Runs one task's computation in a separate process with memory, CPU-time and wall-clock limits.

Why a process: a package graph is untrusted input to onnxruntime, a large native
library. If it exhausts memory, spins, or crashes the runtime, only the worker
dies; the daemon keeps serving and reports the task as failed. The worker is
also the unit of cancellation: stopping a task means killing its process.

The worker is as untrusted as the graph it runs: it answers the daemon only in
a fixed format (JSON headers and raw little-endian tensor bytes), never with
pickles, so a worker taken over through onnxruntime cannot run code in the
daemon.

Workers are forked from a forkserver that has already imported numpy,
onnxruntime and pyarrow, so starting one costs milliseconds, not the seconds
of a fresh interpreter, and never inherits the daemon's threads or sockets.
"""

from __future__ import annotations

import ctypes
import enum
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

Job = TypeVar("Job")

# Result tensors may only be of these dtypes (the releases are noisy float sums).
_RESULT_DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}
_MAX_HEADER_BYTES = 1024 * 1024

# Imported once by the forkserver so that every worker starts warm. Each worker
# also re-imports the parent's main script (multiprocessing's spawn.prepare;
# the forkserver's own "__main__" preload never receives the path in 3.11), and
# the edge-agent console script imports agent.cli.main: preloaded, that import
# is free instead of 1.4 s per task (measured).
PRELOAD = ["numpy", "onnxruntime", "pyarrow", "pyarrow.dataset", "agent.tasks.computation", "agent.cli.main"]

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4

# How often the parent checks for cancellation while waiting for the worker.
_POLL_SECONDS = 0.05

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Encoded before the task runs: after a MemoryError there may be no memory to encode it.
_MEMORY_HEADER = json.dumps({"tag": "memory", "detail": "MemoryError"}).encode()


class FailureKind(enum.Enum):
    MEMORY = "memory"  # the address-space limit was hit
    CPU_TIME = "cpu_time"  # the CPU-time limit was hit
    WALL_TIME = "wall_time"  # the wall-clock limit was hit
    CANCELLED = "cancelled"  # CancelTask or the client went away
    TASK_ERROR = "task_error"  # the computation refused its input (message is safe to show)
    CRASHED = "crashed"  # anything else: the worker died or raised unexpectedly


class TaskFailedError(Exception):
    """The task produced no result. ``message`` is safe to send to the coordinator."""

    def __init__(self, kind: FailureKind, message: str, detail: str = "", *, progressed: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # For the local log only: may name files or carry a traceback.
        self.detail = detail
        # Whether the computation had reported progress (begun its real work) before it failed.
        self.progressed = progressed


class TaskInputError(Exception):
    """Raised by a computation for input it refuses; the message is sent to the coordinator as is."""


@dataclass(frozen=True)
class WorkerLimits:
    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float

    def __post_init__(self) -> None:
        if self.memory_bytes < 64 * 1024 * 1024:
            raise ValueError("a worker needs at least 64 MiB of address space")
        if self.cpu_seconds < 1 or self.wall_seconds <= 0:
            raise ValueError("worker time limits must be positive")


@dataclass(frozen=True, eq=False)
class Released:
    """What a worker hands back: named float tensors and named scalars, nothing else."""

    tensors: Mapping[str, npt.NDArray[np.floating[Any]]]
    scalars: Mapping[str, float]


class Progress(Protocol):
    def __call__(self, fraction: float, stage: str) -> None: ...


@dataclass(frozen=True)
class _Call(Generic[Job]):
    function: Callable[[Job, Progress], Released]
    job: Job
    limits: WorkerLimits


class WorkerPool:
    """Starts workers from one forkserver; ``run`` blocks the calling thread until the task ends."""

    def __init__(self, preload: list[str] | None = None) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD if preload is None else preload)

    def run(
        self,
        function: Callable[[Job, Progress], Released],
        job: Job,
        limits: WorkerLimits,
        *,
        on_progress: Callable[[float, str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Released:
        """``function`` must be a module-level function (it is pickled by reference)."""
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, args=(sender, _Call(function, job, limits)), name="edge-agent-task", daemon=True
        )
        process.start()
        sender.close()  # the parent must not hold the write end, or EOF never comes
        try:
            return self._wait(process, receiver, limits, on_progress, cancelled)
        finally:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join()

    def _wait(
        self,
        process: multiprocessing.process.BaseProcess,
        receiver: multiprocessing.connection.Connection,
        limits: WorkerLimits,
        on_progress: Callable[[float, str], None] | None,
        cancelled: threading.Event | None,
    ) -> Released:
        deadline = time.monotonic() + limits.wall_seconds
        progressed = False
        # The worker's CPU time as last seen alive: tells a kill at the hard CPU limit
        # from one by the kernel's out-of-memory killer (both are SIGKILL).
        cpu_seen: float | None = None
        try:
            while True:
                cpu_now = _cpu_seconds(process.pid)
                cpu_seen = cpu_seen if cpu_now is None else cpu_now
                # Everything the worker already sent is read before a cancellation or the
                # deadline is acted on: a worker that had begun reading rows must be known
                # as such (it is charged).
                if receiver.poll(_POLL_SECONDS):
                    while True:
                        header = self._next_header(receiver, process, limits, cpu_seen)
                        tag = header.get("tag")
                        if tag == "progress":
                            progressed = True
                            if on_progress is not None:
                                on_progress(_fraction(header.get("fraction")), str(header.get("stage", ""))[:100])
                        elif tag == "result":
                            return _read_result(header, receiver)
                        else:
                            raise _failure(header, limits)
                        if not receiver.poll(0):
                            break
                if cancelled is not None and cancelled.is_set():
                    raise TaskFailedError(FailureKind.CANCELLED, "the task was cancelled")
                if time.monotonic() >= deadline:
                    raise TaskFailedError(
                        FailureKind.WALL_TIME,
                        f"the task did not finish within {limits.wall_seconds:g} s and was stopped",
                    )
                # A worker that died without closing its pipe (or never started) must not
                # leave the task waiting for the wall-clock limit.
                if not process.is_alive() and not receiver.poll(0):
                    raise _death(process.exitcode, limits, cpu_seen)
        except TaskFailedError as exc:
            exc.progressed = exc.progressed or progressed
            raise

    @staticmethod
    def _next_header(
        receiver: multiprocessing.connection.Connection,
        process: multiprocessing.process.BaseProcess,
        limits: WorkerLimits,
        cpu_seen: float | None,
    ) -> dict[str, Any]:
        try:
            return _header(receiver.recv_bytes(_MAX_HEADER_BYTES))
        except (EOFError, OSError):
            process.join(timeout=5)
            raise _death(process.exitcode, limits, cpu_seen) from None


def _failure(header: dict[str, Any], limits: WorkerLimits) -> TaskFailedError:
    tag = header.get("tag")
    if tag == "refused":
        return TaskFailedError(FailureKind.TASK_ERROR, str(header.get("message", ""))[:2000])
    if tag == "memory":
        return _memory_failure(limits, str(header.get("detail", "")))
    return TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", str(header.get("detail", header)))


class _BadMessageError(Exception):
    pass


def _header(data: bytes) -> dict[str, Any]:
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", "malformed worker message")
    return header


def _fraction(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0:
        return float(value)
    return 0.0


def _read_result(header: dict[str, Any], receiver: multiprocessing.connection.Connection) -> Released:
    """Decodes a result the worker announced; anything unexpected is a crash, never an object."""
    try:
        tensors: dict[str, npt.NDArray[np.floating[Any]]] = {}
        for entry in header["tensors"]:
            name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
            if not isinstance(name, str) or dtype_name not in _RESULT_DTYPES or name in tensors:
                raise _BadMessageError(f"tensor entry {entry!r}")
            if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
            ):
                raise _BadMessageError(f"tensor shape {shape!r}")
            dtype = _RESULT_DTYPES[dtype_name]
            length = math.prod(shape) * dtype.itemsize
            data = receiver.recv_bytes(length + 1)
            if len(data) != length:
                raise _BadMessageError(f"tensor {name}: {len(data)} bytes, expected {length}")
            tensors[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        scalars = header["scalars"]
        if not isinstance(scalars, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in scalars.items()
        ):
            raise _BadMessageError("scalars")
        return Released(tensors, {k: float(v) for k, v in scalars.items()})
    except (KeyError, TypeError, _BadMessageError, EOFError, OSError) as exc:
        raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", f"bad result: {exc}") from None


def _memory_failure(limits: WorkerLimits, detail: str) -> TaskFailedError:
    return TaskFailedError(
        FailureKind.MEMORY,
        f"the task needed more than its memory limit (address space) of {limits.memory_bytes // 2**20} MiB",
        detail,
    )


def _death(exitcode: int | None, limits: WorkerLimits, cpu_seen: float | None = None) -> TaskFailedError:
    """Why a worker died without saying so, from its exit status and the CPU time it was last seen with."""
    cpu_failure = TaskFailedError(
        FailureKind.CPU_TIME, f"the task used more than its CPU-time limit of {limits.cpu_seconds} s"
    )
    if exitcode == -signal.SIGXCPU:
        # The kernel sends SIGXCPU at the soft CPU limit, and only for it.
        return cpu_failure
    if exitcode == -signal.SIGKILL:
        # SIGKILL comes at the hard CPU limit (soft + 2 s) if SIGXCPU did not end the
        # worker, and from the kernel's out-of-memory killer (the daemon's own kills,
        # on cancellation or the wall clock, are reported before the worker is reaped).
        # A worker last seen below its soft CPU limit cannot have reached the hard one.
        if cpu_seen is None:
            return TaskFailedError(FailureKind.CRASHED, "the task's worker process died", "killed by SIGKILL")
        if cpu_seen >= limits.cpu_seconds:
            return cpu_failure
        return _memory_failure(limits, f"killed by SIGKILL after {cpu_seen:.2f} s of CPU: out-of-memory killer")
    if exitcode is not None and exitcode < 0:
        return TaskFailedError(
            FailureKind.CRASHED, "the task's worker process died", f"killed by {signal.Signals(-exitcode).name}"
        )
    return TaskFailedError(FailureKind.CRASHED, "the task's worker process died", f"exit code {exitcode}")


def _cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a live process, from /proc (None where that is not readable).

    The worker is the forkserver's child, not ours, so wait4's rusage is not available.
    """
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        # After the command name: state is field 3 of proc(5), utime 14 and stime 15.
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def _prctl(option: int, value: int) -> bool:
    """Linux prctl(2); False where it does not exist."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value)
    except (OSError, AttributeError):
        return False
    return True


def _die_with_parent() -> None:
    """A worker must not outlive the daemon (SIGKILLed daemon -> forkserver exits -> we are killed)."""
    if not _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL):
        return  # not Linux: the pipe's EOF still ends the worker at its next send
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(sender: multiprocessing.connection.Connection, call: _Call[Any]) -> None:
    _die_with_parent()
    limits = call.limits
    # Limits first, before any package byte is touched. The hard CPU limit is a
    # little above the soft one so that SIGXCPU arrives first and is reported.
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 2))
    # A crash must not leave a core file holding patient rows, nor let another process read our memory.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon; it stops us itself

    def send(header: dict[str, Any]) -> None:
        sender.send_bytes(json.dumps(header).encode())

    def progress(fraction: float, stage: str) -> None:
        send({"tag": "progress", "fraction": fraction, "stage": stage})

    try:
        output = call.function(call.job, progress)
        # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
        arrays = [(name, np.require(array, requirements="C")) for name, array in output.tensors.items()]
        for name, array in arrays:
            if array.dtype.str not in ("<f4", "<f8"):
                raise TypeError(f"result tensor {name} has dtype {array.dtype}")
        send(
            {
                "tag": "result",
                "tensors": [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in arrays],
                "scalars": {name: float(value) for name, value in output.scalars.items()},
            }
        )
        for _, array in arrays:
            sender.send_bytes(array.reshape(-1).view(np.uint8).data)
    except TaskInputError as exc:
        send({"tag": "refused", "message": str(exc)})
    except MemoryError:
        sender.send_bytes(_MEMORY_HEADER)
    except Exception as exc:
        # onnxruntime reports allocation failures as its own exception types.
        kind = "memory" if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc) else "crashed"
        send({"tag": kind, "detail": traceback.format_exc()})
    finally:
        sender.close()
    os._exit(0)  # skip interpreter teardown: nothing of the worker needs flushing

