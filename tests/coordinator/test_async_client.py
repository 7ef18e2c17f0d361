"""The asyncio client (edge_sponsor.coordinator.async_client) against a real agent over
mTLS: tasks awaited together run together, progress arrives on the event loop, and
cancelling the awaiting coroutine stops the task at the agent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api.edge_agent.v1 import agent_pb2 as pb
from edge_sponsor.coordinator.async_client import AsyncAgentClient
from edge_sponsor.coordinator.client import AgentRpcError
from tests.conftest import Pki
from tests.packages.package_builders import new_key
from tests.tasks.test_run_task_rpc import PARAMETERS, Agent, spec, start


@pytest.fixture
def agent(tmp_path: Path, pki: Pki) -> Iterator[Agent]:
    started = start(tmp_path, pki, new_key())
    yield started
    started.channel.close()
    started.process.stop()


def test_tasks_awaited_together_run_together_and_report_progress_on_the_loop(agent: Agent, pki: Pki) -> None:
    async def main() -> tuple[list[str], set[int], int, int]:
        loop_thread = threading.get_ident()
        seen: set[int] = set()
        async with AsyncAgentClient(agent.address, pki.credentials(), server_name="localhost") as client:
            info = await client.get_info()
            runs = await asyncio.gather(
                *(
                    client.run_task(
                        spec(agent),
                        PARAMETERS,
                        stall_seconds=60,
                        on_progress=lambda _f, _s: seen.add(threading.get_ident()),
                    )
                    for n in range(3)
                )
            )
            budget = await client.get_budget("cohort")
        assert info.agent_id
        return [run.task_id for run in runs], seen, budget.tasks_charged, loop_thread

    task_ids, progress_threads, charged, loop_thread = asyncio.run(main())
    assert len(set(task_ids)) == 3 and all(task_ids)
    assert charged == 3
    assert progress_threads == {loop_thread}


def test_cancelling_the_awaiting_coroutine_stops_the_task_at_the_agent(agent: Agent, pki: Pki) -> None:
    long_task = spec(agent, pb.TASK_KIND_DP_LOCAL_TRAINING, local_steps=1000, sampling_rate=1.0, noise_multiplier=20.0)

    async def main() -> float:
        async with AsyncAgentClient(agent.address, pki.credentials(), server_name="localhost") as client:
            computing = asyncio.Event()
            task = asyncio.create_task(
                client.run_task(long_task, PARAMETERS, stall_seconds=60, on_progress=lambda _f, _s: computing.set())
            )
            await asyncio.wait_for(computing.wait(), timeout=30)
            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - cancelled_at

    assert asyncio.run(main()) < 5
    # The agent saw the call cancelled and stopped its worker: the task failed as cancelled.
    deadline = time.monotonic() + 10
    while not agent.audit("task.failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert agent.audit("task.failed")[-1]["failure"] == "cancelled"


def test_a_refusal_raises_the_agents_status(agent: Agent, pki: Pki) -> None:
    async def main() -> None:
        async with AsyncAgentClient(agent.address, pki.credentials(), server_name="localhost") as client:
            await client.run_task(spec(agent, dataset="no-such-dataset"), PARAMETERS)

    with pytest.raises(AgentRpcError) as refused:
        asyncio.run(main())
    assert refused.value.code.name == "NOT_FOUND"


def test_a_queued_task_cancelled_never_reaches_the_agent(agent: Agent, pki: Pki) -> None:
    long_task = spec(agent, pb.TASK_KIND_DP_LOCAL_TRAINING, local_steps=1000, sampling_rate=1.0, noise_multiplier=20.0)

    async def main() -> float:
        client = AsyncAgentClient(agent.address, pki.credentials(), server_name="localhost", max_concurrent_calls=1)
        try:
            computing = asyncio.Event()
            first = asyncio.create_task(
                client.run_task(long_task, PARAMETERS, stall_seconds=60, on_progress=lambda _f, _s: computing.set())
            )
            await asyncio.wait_for(computing.wait(), timeout=30)
            queued = asyncio.create_task(client.run_task(spec(agent), PARAMETERS, stall_seconds=60))
            await asyncio.sleep(0.2)
            cancelled_at = time.monotonic()
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            waited = time.monotonic() - cancelled_at
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            return waited
        finally:
            await client.close()

    assert asyncio.run(main()) < 1.0  # withdrawn from the queue, not waited for
    # The first task ends as cancelled at the agent; the queued one never started there.
    deadline = time.monotonic() + 10
    while not agent.audit("task.failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [entry["failure"] for entry in agent.audit("task.failed")] == ["cancelled"]
    assert len(agent.audit("task.started")) == 1
