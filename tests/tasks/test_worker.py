"""The worker process: results, limits, cancellation and crashes, with real processes."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.tasks.shared_memory import SharedRegion
from agent.tasks.worker import FailureKind, TaskFailedError, WorkerLimits, WorkerPool, worker_startup_bytes
from tests.tasks import worker_jobs

LIMITS = WorkerLimits(memory_bytes=2 * 1024**3, cpu_seconds=30, wall_seconds=30)


@pytest.fixture(scope="module")
def pool() -> WorkerPool:
    # The test jobs need nothing heavy preloaded.
    return WorkerPool(preload=["tests.tasks.worker_jobs"])


def failure(
    pool: WorkerPool, function: object, job: object, limits: WorkerLimits = LIMITS, **options: Any
) -> TaskFailedError:
    with pytest.raises(TaskFailedError) as caught:
        pool.run(function, job, limits, **options)  # type: ignore[arg-type]
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
    # What a worker holds depends on what the (process-wide) forkserver imported, which depends
    # on the tests before: the limit is set above that, with room for 16 MiB but not 1 GiB.
    startup = worker_startup_bytes(pool)
    assert startup is not None
    mib = startup // 2**20 + 256
    limits = WorkerLimits(memory_bytes=mib * 2**20, cpu_seconds=30, wall_seconds=30)
    caught = failure(pool, worker_jobs.allocate, 1024, limits)
    assert caught.kind is FailureKind.MEMORY and f"{mib} MiB" in caught.message
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


# ---------------------------------------------------------------- warm workers and shared memory


def test_a_run_keeps_its_worker_warm() -> None:
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"], warm_workers=2)
    try:
        first = pool.run(worker_jobs.remember, None, LIMITS, reuse_key="run-a").scalars
        second = pool.run(worker_jobs.remember, None, LIMITS, reuse_key="run-a").scalars
        other = pool.run(worker_jobs.remember, None, LIMITS, reuse_key="run-b").scalars
        assert (first["count"], second["count"], other["count"]) == (1, 2, 1)
        assert first["pid"] == second["pid"] != other["pid"]
        # Without a key, or with other memory limits, a task gets a fresh worker.
        assert pool.run(worker_jobs.remember, None, LIMITS).scalars["count"] == 1
        bigger = WorkerLimits(memory_bytes=LIMITS.memory_bytes * 2, cpu_seconds=30, wall_seconds=30)
        assert pool.run(worker_jobs.remember, None, bigger, reuse_key="run-a").scalars["count"] == 1
    finally:
        pool.close()
    assert pool.warm == 0


def test_at_most_warm_workers_wait_and_the_oldest_goes_first() -> None:
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"], warm_workers=1)
    try:
        pid_a = pool.run(worker_jobs.remember, None, LIMITS, reuse_key="a").scalars["pid"]
        pool.run(worker_jobs.remember, None, LIMITS, reuse_key="b")
        assert pool.warm == 1
        assert pool.run(worker_jobs.remember, None, LIMITS, reuse_key="a").scalars["pid"] != pid_a
        _wait_gone(int(pid_a))
    finally:
        pool.close()


def test_an_idle_worker_ends() -> None:
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"], idle_seconds=0.3)
    try:
        pid = pool.run(worker_jobs.remember, None, LIMITS, reuse_key="a").scalars["pid"]
        _wait_gone(int(pid))
        assert pool.warm == 0
        assert pool.run(worker_jobs.remember, None, LIMITS, reuse_key="a").scalars["count"] == 1
    finally:
        pool.close()


def test_a_failed_task_does_not_leave_its_worker_warm() -> None:
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"])
    try:
        with pytest.raises(TaskFailedError):
            pool.run(worker_jobs.explode, "x", LIMITS, reuse_key="a")  # type: ignore[arg-type]
        assert pool.warm == 0
        with pytest.raises(TaskFailedError):
            pool.run(worker_jobs.refuse, "no", LIMITS, reuse_key="a")  # type: ignore[arg-type]
        assert pool.warm == 0
    finally:
        pool.close()


def test_cpu_time_is_limited_per_task_in_a_warm_worker() -> None:
    pool = WorkerPool(preload=["tests.tasks.worker_jobs"])
    limits = WorkerLimits(memory_bytes=LIMITS.memory_bytes, cpu_seconds=1, wall_seconds=30)
    try:
        # Three tasks of 0.6 s CPU each: together over the limit, each within it.
        for _ in range(3):
            pool.run(worker_jobs.spin, 0.6, limits, reuse_key="a")  # type: ignore[arg-type]
        caught = failure(pool, worker_jobs.spin, 10.0, limits)
        assert caught.kind is FailureKind.CPU_TIME
        with pytest.raises(TaskFailedError) as warm:
            pool.run(worker_jobs.spin_past_sigxcpu, 20.0, limits, reuse_key="a")  # type: ignore[arg-type]
        assert warm.value.kind is FailureKind.CPU_TIME
    finally:
        pool.close()


def test_tensors_arrive_byte_exact_and_read_only(pool: WorkerPool) -> None:
    rng = np.random.default_rng(7)
    tensors = {
        "w": rng.standard_normal((300, 7)).astype(np.float32),
        "b": rng.standard_normal(5),
        "empty": np.zeros((0, 3), np.float32),
        "strided": rng.standard_normal((10, 10)).astype(np.float32)[:, ::2],
    }
    released = pool.run(worker_jobs.echo_tensors, worker_jobs.TensorJob(), LIMITS, tensors=tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(released.tensors[name], array.astype(np.float64))
        assert released.tensors[name].shape == array.shape
    assert released.scalars["writable"] == 0.0
    # And the worker cannot change them.
    caught = failure(pool, worker_jobs.write_tensors, worker_jobs.TensorJob(), LIMITS, tensors=tensors)
    assert caught.kind is FailureKind.CRASHED and "read-only" in caught.detail


def test_tensors_received_into_shared_memory_are_handed_over_without_a_copy(pool: WorkerPool) -> None:
    region = SharedRegion(4096)
    weights = region.array(128, np.float32, (16, 4))
    weights[...] = np.arange(64, dtype=np.float32).reshape(16, 4)
    released = pool.run(worker_jobs.echo_tensors, worker_jobs.TensorJob(), LIMITS, tensors={"w": weights})
    np.testing.assert_array_equal(released.tensors["w"], weights)
    # The worker could not resize the daemon's region under it.
    assert fcntl.fcntl(region.fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK


def test_a_shared_region_is_written_through_its_descriptor_within_its_bounds() -> None:
    region = SharedRegion(4096)
    region.write(64, b"\x01\x02\x03")
    assert bytes(region.array(64, np.uint8, (3,))) == b"\x01\x02\x03"
    for offset, size in ((4095, 2), (-1, 1), (4097, 0)):
        with pytest.raises(ValueError, match="do not fit"):
            region.write(offset, b"\0" * size)
    # Counted in bytes, not items: 1000 float64 are 8000 bytes, and the memfd must not grow.
    with pytest.raises(ValueError, match="8000 bytes"):
        region.write(0, memoryview(np.zeros(1000)))
    assert os.fstat(region.fd).st_size == 4096


def test_region_writes_go_on_after_short_writes_and_stop_when_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwrite(fd, bytes(data[:3]), offset))
    region = SharedRegion(4096)
    region.write(10, bytes(range(100)))
    assert bytes(region.array(10, np.uint8, (100,))) == bytes(range(100))
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    with pytest.raises(OSError, match="stopped at offset 20"):
        region.write(20, b"abc")


def test_a_result_region_the_worker_could_still_change_is_refused(pool: WorkerPool) -> None:
    caught = failure(pool, worker_jobs.unsealed_result, None)
    assert caught.kind is FailureKind.CRASHED and "not sealed" in caught.detail


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} is still running")
