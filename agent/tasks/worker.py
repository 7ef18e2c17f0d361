"""Runs one task's computation in a separate process with memory, CPU-time and wall-clock limits.

Why a process: a package graph is untrusted input to onnxruntime, a large native
library. If it exhausts memory, spins, or crashes the runtime, only the worker
dies; the daemon keeps serving and reports the task as failed. The worker is
also the unit of cancellation: stopping a task means killing its process.

Workers are forked from a forkserver that has already imported numpy,
onnxruntime and pyarrow, so starting one costs milliseconds, not the seconds
of a fresh interpreter, and never inherits the daemon's threads or sockets.
"""

from __future__ import annotations

import ctypes
import enum
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

Job = TypeVar("Job")
Output = TypeVar("Output")

# Imported once by the forkserver so that every worker starts warm. Each worker
# also re-imports the parent's main script (multiprocessing's spawn.prepare;
# the forkserver's own "__main__" preload never receives the path in 3.11), and
# the edge-agent console script imports agent.cli.main: preloaded, that import
# is free instead of 1.4 s per task (measured).
PRELOAD = ["numpy", "onnxruntime", "pyarrow", "pyarrow.dataset", "agent.tasks.computation", "agent.cli.main"]

_PR_SET_PDEATHSIG = 1

# How often the parent checks for cancellation while waiting for the worker.
_POLL_SECONDS = 0.05


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


class Progress(Protocol):
    def __call__(self, fraction: float, stage: str) -> None: ...


@dataclass(frozen=True)
class _Call(Generic[Job, Output]):
    function: Callable[[Job, Progress], Output]
    job: Job
    limits: WorkerLimits


class WorkerPool:
    """Starts workers from one forkserver; ``run`` blocks the calling thread until the task ends."""

    def __init__(self, preload: list[str] | None = None) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD if preload is None else preload)

    def run(
        self,
        function: Callable[[Job, Progress], Output],
        job: Job,
        limits: WorkerLimits,
        *,
        on_progress: Callable[[float, str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Output:
        """``function`` must be a module-level function (it is pickled by reference)."""
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main, args=(sender, _Call(function, job, limits)), name="edge-agent-task", daemon=True
        )
        process.start()
        sender.close()  # the parent must not hold the write end, or EOF never comes
        try:
            output: Output = self._wait(process, receiver, limits, on_progress, cancelled)
            return output
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
    ) -> Any:
        deadline = time.monotonic() + limits.wall_seconds
        progressed = False
        try:
            while True:
                if cancelled is not None and cancelled.is_set():
                    raise TaskFailedError(FailureKind.CANCELLED, "the task was cancelled")
                if time.monotonic() >= deadline:
                    raise TaskFailedError(
                        FailureKind.WALL_TIME,
                        f"the task did not finish within {limits.wall_seconds:g} s and was stopped",
                    )
                if not receiver.poll(_POLL_SECONDS):
                    # A worker that died without closing its pipe (or never started) must not
                    # leave the task waiting for the wall-clock limit.
                    if not process.is_alive() and not receiver.poll(0):
                        raise _death(process.exitcode, limits)
                    continue
                try:
                    message = receiver.recv()
                except (EOFError, OSError):
                    process.join(timeout=5)
                    raise _death(process.exitcode, limits) from None
                tag = message[0]
                if tag == "progress":
                    progressed = True
                    if on_progress is not None:
                        on_progress(float(message[1]), str(message[2]))
                elif tag == "result":
                    return message[1]
                elif tag == "refused":
                    raise TaskFailedError(FailureKind.TASK_ERROR, str(message[1]))
                elif tag == "memory":
                    raise TaskFailedError(
                        FailureKind.MEMORY,
                        f"the task needed more than its memory limit of {limits.memory_bytes // 2**20} MiB",
                        str(message[1]),
                    )
                else:
                    raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", str(message[1]))
        except TaskFailedError as exc:
            exc.progressed = progressed
            raise


def _death(exitcode: int | None, limits: WorkerLimits) -> TaskFailedError:
    if exitcode in {-signal.SIGXCPU, -signal.SIGKILL}:
        # The kernel sends SIGXCPU at the soft CPU limit and SIGKILL at the hard one.
        return TaskFailedError(
            FailureKind.CPU_TIME, f"the task used more than its CPU-time limit of {limits.cpu_seconds} s"
        )
    if exitcode is not None and exitcode < 0:
        return TaskFailedError(
            FailureKind.CRASHED, "the task's worker process died", f"killed by {signal.Signals(-exitcode).name}"
        )
    return TaskFailedError(FailureKind.CRASHED, "the task's worker process died", f"exit code {exitcode}")


def _die_with_parent() -> None:
    """A worker must not outlive the daemon (SIGKILLed daemon -> forkserver exits -> we are killed)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still ends the worker at its next send
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(sender: multiprocessing.connection.Connection, call: _Call[Any, Any]) -> None:
    _die_with_parent()
    limits = call.limits
    # Limits first, before any package byte is touched. The hard CPU limit is a
    # little above the soft one so that SIGXCPU arrives first and is reported.
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 2))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon; it stops us itself

    def progress(fraction: float, stage: str) -> None:
        sender.send(("progress", fraction, stage))

    try:
        output = call.function(call.job, progress)
    except TaskInputError as exc:
        sender.send(("refused", str(exc)))
    except MemoryError:
        sender.send(("memory", "MemoryError"))
    except Exception as exc:
        text = traceback.format_exc()
        # onnxruntime reports allocation failures as its own exception types.
        kind = "memory" if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc) else "crashed"
        sender.send((kind, text))
    else:
        sender.send(("result", output))
    finally:
        sender.close()
    os._exit(0)  # skip interpreter teardown: nothing of the worker needs flushing
