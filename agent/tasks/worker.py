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

import contextlib
import ctypes
import errno
import json
import math
import multiprocessing
import os
import pickle
import re
import resource
import signal
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from agent.tasks.failure import FailureKind
from agent.tasks.shared_memory import (
    SharedMemoryError,
    TensorSlot,
    frozen_region,
    layout,
    map_frozen,
    map_shipped,
    ship,
)

Job = TypeVar("Job")
Job_contra = TypeVar("Job_contra", contravariant=True)
T = TypeVar("T")

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

# A worker still running this long after SIGXCPU (which it may ignore) is killed.
_HARD_CPU_MARGIN = 2

# How often the parent checks for cancellation while waiting for the worker.
_POLL_SECONDS = 0.05

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Encoded before the task runs: after a MemoryError there may be no memory to encode it.
_MEMORY_HEADER = json.dumps({"tag": "memory", "detail": "MemoryError"}).encode()
_RULE_ID = re.compile(r"[a-z][a-z0-9_.]{0,63}")

# Address space a worker needs beyond what it holds when forked, before any task work:
# its first threads' stacks and thread-local data (measured: with less than about 12 MiB
# glibc aborts thread creation with exit code 127, which no handler can report).
STARTUP_HEADROOM_BYTES = 64 * 1024 * 1024


class TaskFailedError(Exception):
    """The task produced no result. ``message`` is safe to send to the coordinator."""

    def __init__(
        self, kind: FailureKind, message: str, detail: str = "", *, progressed: bool = False, rule: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # For the local log only: may name files or carry a traceback.
        self.detail = detail
        # Whether the computation had reported progress (begun its real work) before it failed.
        self.progressed = progressed
        # The rule a refused input broke (TaskInputError.rule), for the audit log; "" when none.
        self.rule = rule


class TaskInputError(Exception):
    """Raised by a computation for input it refuses; the message is sent to the coordinator as is.

    ``rule`` names the policy rule that refused it (e.g. ``dataset.min_cohort``) for the audit log.
    """

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class WorkerStats:
    """Worker processes started, tasks that found a warm one, and how many wait now."""

    started: int
    reused: int
    warm: int


@dataclass
class _Counts:
    started: int = 0
    reused: int = 0


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


class WorkerMemory:
    """What a warm worker keeps between the tasks it runs (compiled graphs), by key."""

    def __init__(self) -> None:
        self._items: dict[Hashable, object] = {}

    def get_or_create(self, key: Hashable, create: Callable[[], T]) -> T:
        if key not in self._items:
            self._items[key] = create()
        return self._items[key]  # type: ignore[return-value]


class WorkerFunction(Protocol[Job_contra]):
    def __call__(self, job: Job_contra, progress: Progress, memory: WorkerMemory, /) -> Released: ...


@dataclass(frozen=True)
class _Order:
    """One task for a worker, pickled by the daemon (the worker never pickles anything back)."""

    function: Callable[..., Released]
    job: object
    cpu_seconds: int
    slots: tuple[TensorSlot, ...]
    regions: int


class _Worker:
    """The daemon's handle of one worker process: its process, its socket, what it may be reused for."""

    def __init__(self, process: multiprocessing.process.BaseProcess, connection: Connection, memory_bytes: int):
        self.process = process
        self.connection = connection
        self.memory_bytes = memory_bytes
        self.idle_since = time.monotonic()

    def stop(self) -> None:
        self.connection.close()
        if self.process.is_alive():
            self.process.kill()
        self.process.join()


class WorkerPool:
    """Starts workers from one forkserver; ``run`` blocks the calling thread until the task ends.

    A task given a ``reuse_key`` leaves its worker warm afterwards: the next task
    with the same key (the next round of the same run) finds its graph compiled
    and its session built. Any failure, cancellation or limit ends the worker; an
    idle worker ends after ``idle_seconds``, and at most ``warm_workers`` wait.
    """

    def __init__(
        self, preload: list[str] | None = None, *, warm_workers: int = 4, idle_seconds: float = 300.0
    ) -> None:
        if warm_workers < 0 or idle_seconds <= 0:
            raise ValueError("warm_workers must be >= 0 and idle_seconds > 0")
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD if preload is None else preload)
        self._warm_workers = warm_workers
        self._idle_seconds = idle_seconds
        self._idle: OrderedDict[Hashable, _Worker] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        self._counts = _Counts()
        self._reaper: threading.Timer | None = None

    def run(
        self,
        function: WorkerFunction[Job],
        job: Job,
        limits: WorkerLimits,
        *,
        tensors: Mapping[str, npt.NDArray[Any]] | None = None,
        reuse_key: Hashable | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Released:
        """``function`` must be a module-level function (it is pickled by reference).

        ``tensors`` are handed over in shared memory and given to the job with
        ``job.with_parameters`` in the worker.
        """
        worker = self._take(reuse_key, limits) if reuse_key is not None else None
        if worker is None:
            worker = self._start(limits)
        kept = False
        try:
            cpu_start = _cpu_seconds(worker.process.pid)
            self._send(worker, function, job, limits, tensors)
            result = self._wait(worker, limits, on_progress, cancelled, cpu_start)
            if reuse_key is not None:
                kept = self._keep(reuse_key, worker)
            return result
        finally:
            if not kept:
                worker.stop()

    def close(self) -> None:
        """Ends every waiting worker; running tasks end their own."""
        with self._lock:
            self._closed = True
            idle = list(self._idle.values())
            self._idle.clear()
            if self._reaper is not None:
                self._reaper.cancel()
        for worker in idle:
            worker.stop()

    @property
    def warm(self) -> int:
        """How many workers wait for a next task."""
        return self.stats().warm

    def stats(self) -> WorkerStats:
        """Counts since start, for the metrics endpoint."""
        with self._lock:
            return WorkerStats(self._counts.started, self._counts.reused, warm=len(self._idle))

    def _start(self, limits: WorkerLimits) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)  # a socket pair: descriptors can pass
        process = self._context.Process(
            target=_worker_main, args=(theirs, limits.memory_bytes), name="edge-agent-task", daemon=True
        )
        process.start()
        theirs.close()  # only the worker holds its end, or EOF never comes
        with self._lock:
            self._counts.started += 1
        return _Worker(process, ours, limits.memory_bytes)

    def _take(self, key: Hashable, limits: WorkerLimits) -> _Worker | None:
        with self._lock:
            worker = self._idle.pop(key, None)
        if worker is None:
            return None
        if worker.memory_bytes != limits.memory_bytes or not worker.process.is_alive():
            worker.stop()
            return None
        with self._lock:
            self._counts.reused += 1
        return worker

    def _keep(self, key: Hashable, worker: _Worker) -> bool:
        if self._warm_workers == 0:
            return False
        worker.idle_since = time.monotonic()
        evicted: list[_Worker] = []
        with self._lock:
            if self._closed:
                return False
            replaced = self._idle.pop(key, None)
            if replaced is not None:
                evicted.append(replaced)
            self._idle[key] = worker
            while len(self._idle) > self._warm_workers:
                evicted.append(self._idle.popitem(last=False)[1])
            if self._reaper is None:
                self._schedule_reaper()
        for old in evicted:
            old.stop()
        return True

    def _schedule_reaper(self) -> None:
        self._reaper = threading.Timer(min(self._idle_seconds, 30.0), self._reap)
        self._reaper.daemon = True
        self._reaper.start()

    def _reap(self) -> None:
        expired: list[_Worker] = []
        now = time.monotonic()
        with self._lock:
            for key, worker in list(self._idle.items()):
                if now - worker.idle_since >= self._idle_seconds:
                    expired.append(self._idle.pop(key))
            self._reaper = None
            if self._idle and not self._closed:
                self._schedule_reaper()
        for worker in expired:
            worker.stop()

    @staticmethod
    def _send(
        worker: _Worker,
        function: WorkerFunction[Job],
        job: Job,
        limits: WorkerLimits,
        tensors: Mapping[str, npt.NDArray[Any]] | None,
    ) -> None:
        shipment = ship(tensors) if tensors else None
        order = _Order(
            function=function,
            job=job,
            cpu_seconds=limits.cpu_seconds,
            slots=tuple(shipment.slots) if shipment else (),
            regions=len(shipment.fds) if shipment else 0,
        )
        try:
            worker.connection.send_bytes(pickle.dumps(order, protocol=pickle.HIGHEST_PROTOCOL))
            if shipment and shipment.fds:
                with _socket(worker.connection) as channel:
                    socket.send_fds(channel, [b"F"], shipment.fds)
        except OSError:
            pass  # the worker is gone: _wait reports why it died
        finally:
            if shipment:
                shipment.close()

    def _wait(
        self,
        worker: _Worker,
        limits: WorkerLimits,
        on_progress: Callable[[float, str], None] | None,
        cancelled: threading.Event | None,
        cpu_start: float | None,
    ) -> Released:
        process, receiver = worker.process, worker.connection
        deadline = time.monotonic() + limits.wall_seconds
        progressed = False
        # The CPU this task used, as last seen: tells a kill at the CPU limit from one by
        # the kernel's out-of-memory killer (both are SIGKILL), and stops a worker that
        # got past SIGXCPU (a warm worker's hard limit cannot be lowered per task).
        cpu_seen: float | None = None
        try:
            while True:
                cpu_now = _cpu_seconds(process.pid)
                if cpu_now is not None and cpu_start is not None:
                    cpu_seen = cpu_now - cpu_start
                    if cpu_seen >= limits.cpu_seconds + _HARD_CPU_MARGIN:
                        process.kill()
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
                # A worker that died without closing its socket (or never started) must not
                # leave the task waiting for the wall-clock limit.
                if not process.is_alive() and not receiver.poll(0):
                    raise _death(process.exitcode, limits, cpu_seen)
        except TaskFailedError as exc:
            exc.progressed = exc.progressed or progressed
            raise

    @staticmethod
    def _next_header(
        receiver: Connection,
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
        rule = header.get("rule")
        # The worker is untrusted: only a short rule id reaches the audit log.
        rule = rule if isinstance(rule, str) and _RULE_ID.fullmatch(rule) else ""
        return TaskFailedError(FailureKind.TASK_ERROR, str(header.get("message", ""))[:2000], rule=rule)
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


def _read_result(header: dict[str, Any], receiver: Connection) -> Released:
    """Decodes a result the worker announced; anything unexpected is a crash, never an object.

    The tensors arrive in one sealed shared-memory region (see agent.tasks.shared_memory)
    whose descriptor follows the header.
    """
    try:
        entries: list[tuple[str, str, tuple[int, ...]]] = []
        for entry in header["tensors"]:
            name, dtype_name, shape = entry["name"], entry["dtype"], entry["shape"]
            if not isinstance(name, str) or dtype_name not in _RESULT_DTYPES or name in {e[0] for e in entries}:
                raise _BadMessageError(f"tensor entry {entry!r}")
            if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
            ):
                raise _BadMessageError(f"tensor shape {shape!r}")
            entries.append((name, _RESULT_DTYPES[dtype_name].str, tuple(shape)))
        scalars = header["scalars"]
        if not isinstance(scalars, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in scalars.items()
        ):
            raise _BadMessageError("scalars")
        tensors: dict[str, npt.NDArray[np.floating[Any]]] = {}
        if entries:
            slots, size = layout(entries)
            with _socket(receiver) as channel:
                _, fds, _, _ = socket.recv_fds(channel, 1, 1)
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise _BadMessageError("no result region")
            mapped = map_frozen(fds[0], size)
            for slot in slots:
                count = math.prod(slot.shape)
                tensors[slot.name] = np.frombuffer(
                    mapped, dtype=np.dtype(slot.dtype), count=count, offset=slot.offset
                ).reshape(slot.shape)
        return Released(tensors, {k: float(v) for k, v in scalars.items()})
    except (KeyError, TypeError, ValueError, _BadMessageError, SharedMemoryError, EOFError, OSError) as exc:
        raise TaskFailedError(FailureKind.CRASHED, "the task failed inside the agent", f"bad result: {exc}") from None


def _socket(connection: Connection) -> socket.socket:
    """The connection's socket, for passing descriptors: a duplicate to close after use
    (the Connection keeps its own descriptor)."""
    return socket.socket(fileno=os.dup(connection.fileno()))


def _memory_failure(limits: WorkerLimits, detail: str) -> TaskFailedError:
    # The setting is named: the hospital's operators can raise it in the policy.
    return TaskFailedError(
        FailureKind.MEMORY,
        f"the task needed more than its memory limit (address space) of {limits.memory_bytes // 2**20} MiB "
        "(task_memory_mb in the agent's policy)",
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


def address_space_bytes() -> int | None:
    """This process's address space (VmSize), what RLIMIT_AS limits; None where /proc cannot tell."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return None


def report_address_space(job: object, progress: Progress, memory: WorkerMemory) -> Released:
    """A job that only measures: the address space a worker holds once it has taken an order
    (the forkserver's preloaded libraries), which is what it needs before any task work."""
    return Released({}, {"address_space_bytes": float(address_space_bytes() or 0)})


def worker_startup_bytes(pool: WorkerPool) -> int | None:
    """The address space a task worker of ``pool`` needs to start: what it holds before any
    task work, measured by running :func:`report_address_space` in one, plus
    STARTUP_HEADROOM_BYTES (None where it cannot be measured). A task_memory_mb below it
    fails every task."""
    generous = WorkerLimits(memory_bytes=1 << 40, cpu_seconds=30, wall_seconds=120.0)
    try:
        released = pool.run(report_address_space, None, generous)
    except TaskFailedError:
        return None
    measured = int(released.scalars.get("address_space_bytes", 0.0))
    return measured + STARTUP_HEADROOM_BYTES if measured else None


def _worker_main(connection: Connection, memory_bytes: int) -> None:
    _die_with_parent()
    held = address_space_bytes()
    if held is not None and held + STARTUP_HEADROOM_BYTES > memory_bytes:
        # Below what the forked libraries already hold (plus a first thread's needs) the
        # worker would die unexplained, in a mapping or in glibc: say so instead.
        detail = f"a worker holds {held // 2**20} MiB of address space before any task work"
        connection.send_bytes(json.dumps({"tag": "memory", "detail": detail}).encode())
        os._exit(0)
    # Limits first, before any package byte is touched. CPU time is limited per task
    # (see _set_cpu_limit); the hard limit stays where it is so that it can be raised
    # again for the next task, and the daemon kills a worker that ignores SIGXCPU.
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # A crash must not leave a core file holding patient rows, nor let another process read our memory.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _prctl(_PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the daemon; it stops us itself
    memory = WorkerMemory()
    while True:
        try:
            # From the daemon, which is trusted; nothing is ever unpickled the other way.
            order: _Order = pickle.loads(connection.recv_bytes())  # noqa: S301
            tensors: dict[str, npt.NDArray[Any]] = {}
            if order.regions:
                with _socket(connection) as channel:
                    _, fds, _, _ = socket.recv_fds(channel, 1, order.regions)
                tensors = map_shipped(order.slots, fds)
        except MemoryError:
            _send_quietly(connection, _MEMORY_HEADER)
            break
        except (EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
                # Mapping the parameters hit the address-space limit: a memory failure, not a goodbye.
                _send_quietly(connection, _MEMORY_HEADER)
            break  # the daemon let us go (idle, shutdown) or is gone
        _set_cpu_limit(order.cpu_seconds)
        _perform(connection, order, tensors, memory)
        del tensors
    os._exit(0)  # skip interpreter teardown: nothing of the worker needs flushing


def _send_quietly(connection: Connection, header: bytes) -> None:
    with contextlib.suppress(OSError):  # the daemon is gone: nobody to tell
        connection.send_bytes(header)


def _set_cpu_limit(cpu_seconds: int) -> None:
    """SIGXCPU once this task has used ``cpu_seconds`` of CPU (on top of earlier tasks')."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = math.ceil(usage.ru_utime + usage.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = used + cpu_seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _perform(sender: Connection, order: _Order, tensors: dict[str, npt.NDArray[Any]], memory: WorkerMemory) -> None:
    def send(header: dict[str, Any]) -> None:
        sender.send_bytes(json.dumps(header).encode())

    def progress(fraction: float, stage: str) -> None:
        send({"tag": "progress", "fraction": fraction, "stage": stage})

    try:
        job = order.job.with_parameters(tensors) if order.slots else order.job  # type: ignore[attr-defined]
        output = order.function(job, progress, memory)
        del job
        # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-d).
        arrays = [(name, np.require(array, requirements="C")) for name, array in output.tensors.items()]
        for name, array in arrays:
            if array.dtype.str not in ("<f4", "<f8"):
                raise TypeError(f"result tensor {name} has dtype {array.dtype}")
        region = frozen_region([array for _, array in arrays]) if arrays else None
        send(
            {
                "tag": "result",
                "tensors": [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in arrays],
                "scalars": {name: float(value) for name, value in output.scalars.items()},
            }
        )
        if region is not None:
            fd, _ = region
            try:
                with _socket(sender) as channel:
                    socket.send_fds(channel, [b"R"], [fd])
            finally:
                os.close(fd)
    except TaskInputError as exc:
        send({"tag": "refused", "message": str(exc), "rule": exc.rule})
    except MemoryError:
        sender.send_bytes(_MEMORY_HEADER)
    except Exception as exc:
        # onnxruntime reports allocation failures as its own exception types.
        kind = "memory" if "bad_alloc" in str(exc) or "Failed to allocate" in str(exc) else "crashed"
        send({"tag": kind, "detail": traceback.format_exc()})
