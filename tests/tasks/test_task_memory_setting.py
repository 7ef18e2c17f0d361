"""A task_memory_mb too small for a worker to start is reported as what it is (issue 19).

Real agent, real worker processes, real ledger: the coordinator is told
RESOURCE_EXHAUSTED naming the setting (the hospital can raise it), not INTERNAL
"the task's worker process died", and nothing is charged.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from agent.tasks.worker import FailureKind, TaskFailedError, WorkerLimits, WorkerPool, worker_startup_bytes
from tests.conftest import Pki
from tests.packages.package_builders import new_key
from tests.tasks import worker_jobs
from tests.tasks.test_run_task_rpc import policy_text, run, spec, start


@pytest.fixture(scope="module")
def publisher() -> AgentKey:
    return new_key()


@pytest.mark.parametrize("task_memory_mb", [64, 1024])
def test_a_task_memory_mb_below_a_worker_s_needs_is_resource_exhausted_naming_the_setting(
    tmp_path: Path, pki: Pki, publisher: AgentKey, monkeypatch: pytest.MonkeyPatch, task_memory_mb: int
) -> None:
    def tiny(key: AgentKey, **options: object) -> str:
        text = policy_text(key, **options)  # type: ignore[arg-type]
        return text.replace("task_seconds = 60", f"task_seconds = 60\ntask_memory_mb = {task_memory_mb}")

    monkeypatch.setattr("tests.tasks.test_run_task_rpc.policy_text", tiny)
    agent = start(tmp_path, pki, publisher)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            run(agent, spec(agent))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value.details()
        assert f"{task_memory_mb} MiB (task_memory_mb" in (refused.value.details() or "")
        failed = agent.audit("task.failed")[-1]
        assert (failed["failure"], failed["charged"]) == ("memory", False)
        assert agent.stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30).tasks_charged == 0
    finally:
        agent.channel.close()
        agent.process.stop()


def test_parameters_that_cannot_be_mapped_under_the_limit_are_a_memory_failure() -> None:
    # Just enough to start, not enough to map 256 MiB of parameters: mmap fails with
    # ENOMEM while the worker takes its order, which it reports instead of exiting.
    pool = WorkerPool(warm_workers=0)
    try:
        startup = worker_startup_bytes(pool)
        assert startup is not None
        limits = WorkerLimits(memory_bytes=startup + 32 * 2**20, cpu_seconds=30, wall_seconds=60)
        with pytest.raises(TaskFailedError) as failed:
            big = {"big": np.zeros(2**26, np.float32)}
            pool.run(worker_jobs.echo_tensors, worker_jobs.TensorJob(), limits, tensors=big)
        assert failed.value.kind is FailureKind.MEMORY
        assert failed.value.progressed is False
    finally:
        pool.close()
