"""The worker process: results, limits, cancellation and crashes, with real processes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.tasks.worker import FailureKind, TaskFailedError, WorkerLimits, WorkerPool
from tests.tasks import worker_jobs

LIMITS = WorkerLimits(memory_bytes=2 * 1024**3, cpu_seconds=30, wall_seconds=30)


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    # The test jobs need nothing heavy preloaded.
    return WorkerPool(preload=["tests.tasks.worker_jobs"])


def failure(pool: WorkerPool, function: object, job: object, limits: WorkerLimits = LIMITS) -> TaskFailedError:
    with pytest.raises(TaskFailedError) as caught:
        pool.run(function, job, limits)  # type: ignore[arg-type]
    return caught.value


def test_result_and_progress(pool: WorkerPool) -> None:
    seen: list[tuple[float, str]] = []
    released = pool.run(worker_jobs.add, (2, 3), LIMITS, on_progress=lambda f, s: seen.append((f, s)))
    assert released.tensors["sum"].tolist() == [5.0] and released.scalars == {"count": 2.0}
    assert seen == [(0.5, "adding")]


def test_each_task_gets_a_fresh_process(pool: WorkerPool) -> None:
    first = pool.run(worker_jobs.pid, None, LIMITS).scalars["pid"]
    second = pool.run(worker_jobs.pid, None, LIMITS).scalars["pid"]
    assert first != second and os.getpid() not in (first, second)


def test_memory_limit(pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=512 * 1024**2, cpu_seconds=30, wall_seconds=30)
    caught = failure(pool, worker_jobs.allocate, 1024, limits)
    assert caught.kind is FailureKind.MEMORY and "512 MiB" in caught.message
    # The same pool keeps working afterwards.
    assert pool.run(worker_jobs.allocate, 16, limits).scalars["bytes"] == 16 * 1024 * 1024


def test_cpu_time_limit(pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=LIMITS.memory_bytes, cpu_seconds=1, wall_seconds=30)
    caught = failure(pool, worker_jobs.spin, 10.0, limits)
    assert caught.kind is FailureKind.CPU_TIME and "1 s" in caught.message


def test_wall_clock_limit(pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=LIMITS.memory_bytes, cpu_seconds=30, wall_seconds=0.5)
    started = time.monotonic()
    caught = failure(pool, worker_jobs.sleep, 30.0, limits)
    assert caught.kind is FailureKind.WALL_TIME
    assert time.monotonic() - started < 5


def test_cancellation_kills_the_worker(pool: WorkerPool) -> None:
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    started = time.monotonic()
    with pytest.raises(TaskFailedError) as caught:
        pool.run(worker_jobs.sleep, 30.0, LIMITS, cancelled=cancelled)
    assert caught.value.kind is FailureKind.CANCELLED
    assert time.monotonic() - started < 5


def test_refusal_message_is_passed_on(pool: WorkerPool) -> None:
    caught = failure(pool, worker_jobs.refuse, "column 'age' has the wrong type")
    assert caught.kind is FailureKind.TASK_ERROR and caught.message == "column 'age' has the wrong type"


def test_unexpected_errors_are_masked_for_the_caller(pool: WorkerPool) -> None:
    caught = failure(pool, worker_jobs.explode, "/srv/hospital/secret.parquet")
    assert caught.kind is FailureKind.CRASHED
    assert "/srv/hospital" not in caught.message
    assert "/srv/hospital/secret.parquet" in caught.detail  # for the local log


def test_a_dying_worker_is_reported(pool: WorkerPool) -> None:
    caught = failure(pool, worker_jobs.die, None)
    assert caught.kind is FailureKind.CRASHED and "exit code 3" in caught.detail


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="64 MiB"):
        WorkerLimits(memory_bytes=1024, cpu_seconds=1, wall_seconds=1)


def test_a_hostile_worker_cannot_send_objects_to_the_daemon(pool: WorkerPool, tmp_path: Path) -> None:
    marker = Path("/tmp/edge-agent-pwned")
    marker.unlink(missing_ok=True)
    caught = failure(pool, worker_jobs.hostile_pickle, str(marker))
    assert caught.kind is FailureKind.CRASHED
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["object_dtype", "short", "scalar_string"])
def test_malformed_results_are_crashes(pool: WorkerPool, kind: str) -> None:
    caught = failure(pool, worker_jobs.hostile_result, kind)
    assert caught.kind is FailureKind.CRASHED and "bad result" in caught.detail


def test_a_kill_below_the_cpu_limit_is_memory_not_cpu_time(pool: WorkerPool) -> None:
    # SIGKILL with little CPU used: the kernel's out-of-memory killer, not the hard CPU limit.
    caught = failure(pool, worker_jobs.kill_self, None)
    assert caught.kind is FailureKind.MEMORY and "2048 MiB" in caught.message
    assert "CPU" not in caught.message


def test_a_kill_at_the_hard_cpu_limit_is_cpu_time(pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=LIMITS.memory_bytes, cpu_seconds=1, wall_seconds=30)
    caught = failure(pool, worker_jobs.spin_past_sigxcpu, 20.0, limits)
    assert caught.kind is FailureKind.CPU_TIME and "CPU-time limit of 1 s" in caught.message


# onnxruntime and the isolation wrapper, loaded before the limits apply (as the daemon's PRELOAD does).
@pytest.fixture(scope="module")
def onnx_pool() -> WorkerPool:
    return WorkerPool(
        preload=["tests.tasks.worker_jobs", "onnxruntime", "agent.runtime.sessions", "tests.runtime.helpers"]
    )


def test_onnxruntime_out_of_memory_is_reported_as_memory(onnx_pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=2048 * 1024**2, cpu_seconds=30, wall_seconds=60)
    # Each example expands to 200M x 4 float32: 3.2 GB, over the 2 GiB address space.
    caught = failure(onnx_pool, worker_jobs.graph_memory_hog, 200_000_000, limits)
    assert caught.kind is FailureKind.MEMORY, caught.detail
    assert "memory limit (address space) of 2048 MiB" in caught.message
    # Within the limit the same graph runs.
    assert set(onnx_pool.run(worker_jobs.graph_memory_hog, 1000, limits).tensors) == {"sum"}


def test_onnxruntime_cpu_hog_is_reported_as_cpu_time(onnx_pool: WorkerPool) -> None:
    limits = WorkerLimits(memory_bytes=LIMITS.memory_bytes, cpu_seconds=1, wall_seconds=60)
    caught = failure(onnx_pool, worker_jobs.graph_cpu_hog, 1000, limits)
    assert caught.kind is FailureKind.CPU_TIME and "CPU-time limit of 1 s" in caught.message
