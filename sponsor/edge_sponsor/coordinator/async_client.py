"""The typed client for asyncio code: ``await agent.run_task(...)`` beside other coroutines.

Each call runs the synchronous :class:`~edge_sponsor.coordinator.client.AgentClient` (one
implementation of the protocol: chunked parameters sent on the agent's request, stall
detection, result checks) in this client's own thread pool, so that awaiting the tasks
of many sites at once runs them concurrently, without blocking the event loop.
Cancelling a coroutine that awaits :meth:`AsyncAgentClient.run_task` withdraws the task
if it is still queued, and otherwise cancels the gRPC call (at once, or the moment it
opens): the agent stops the task (what it had charged before stays charged, as for any
cancelled call). A task that completed just as it was cancelled has been charged, and its
result is not returned. Progress callbacks run on the event loop, not in the pool's threads.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.tasks.tensors import TensorDecl
from edge_sponsor.coordinator.client import DEFAULT_TIMEOUT_SECONDS, AgentClient, ClientCredentials
from edge_sponsor.coordinator.tasks import ParameterSet, TaskRun

_T = TypeVar("_T")


class AsyncAgentClient:
    """Calls one agent from asyncio code; failures raise AgentRpcError, as AgentClient's."""

    def __init__(
        self,
        address: str,
        credentials: ClientCredentials,
        *,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = 16 * 1024 * 1024,
        max_concurrent_calls: int = 8,
    ) -> None:
        self.sync = AgentClient(
            address, credentials, server_name=server_name, timeout=timeout, max_message_bytes=max_message_bytes
        )
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent_calls, thread_name_prefix=f"agent-{address}")

    async def __aenter__(self) -> AsyncAgentClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancels the calls still queued, then closes the channel (which ends the calls in
        progress: they raise AgentRpcError CANCELLED) and waits for the pool's threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.sync.close()
        await asyncio.get_running_loop().run_in_executor(None, functools.partial(self._pool.shutdown, wait=True))

    async def _call(self, function: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function)

    async def get_info(self, timeout: float | None = None) -> pb.AgentInfo:
        return await self._call(functools.partial(self.sync.get_info, timeout))

    async def list_datasets(self, timeout: float | None = None) -> list[pb.Dataset]:
        return await self._call(functools.partial(self.sync.list_datasets, timeout))

    async def get_dataset(self, dataset_id: str, timeout: float | None = None) -> pb.Dataset:
        return await self._call(functools.partial(self.sync.get_dataset, dataset_id, timeout))

    async def upload_package(self, archive: bytes, timeout: float | None = None) -> pb.Package:
        return await self._call(functools.partial(self.sync.upload_package, archive, timeout=timeout))

    async def list_packages(self, timeout: float | None = None) -> list[pb.Package]:
        return await self._call(functools.partial(self.sync.list_packages, timeout))

    async def get_package(self, digest: str, timeout: float | None = None) -> pb.Package:
        return await self._call(functools.partial(self.sync.get_package, digest, timeout))

    async def get_budget(
        self, dataset_id: str, timeout: float | None = None, *, planned: Sequence[pb.PlannedTasks] = ()
    ) -> pb.Budget:
        return await self._call(functools.partial(self.sync.get_budget, dataset_id, timeout, planned=planned))

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        return await self._call(functools.partial(self.sync.health, service, timeout))

    async def run_task(
        self,
        spec: pb.TaskSpec,
        parameters: Sequence[tuple[str, npt.NDArray[np.generic]]] | ParameterSet,
        *,
        timeout: float | None = None,
        stall_seconds: float | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        expected: Sequence[TensorDecl] | None = None,
    ) -> TaskRun:
        """Runs one task (AgentClient.run_task); cancelling the awaiting coroutine cancels the call."""
        loop = asyncio.get_running_loop()
        cancel = _CallCancel()

        def progress(fraction: float, stage: str) -> None:
            if on_progress is not None:
                loop.call_soon_threadsafe(on_progress, fraction, stage)

        call = functools.partial(
            self.sync.run_task,
            spec,
            parameters,
            timeout=timeout,
            stall_seconds=stall_seconds,
            on_progress=progress,
            expected=expected,
            on_call=cancel.opened,
        )
        job = self._pool.submit(call)
        waiter = asyncio.wrap_future(job)
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            # Queued: withdrawn, it never reaches the agent. Started: its call is cancelled as
            # soon as it is open (now, or the moment it opens), and the agent stops the task.
            if not job.cancel():
                cancel()
                await _ended(waiter)
            raise


async def _ended(waiter: asyncio.Future[TaskRun]) -> None:
    """Waits until ``waiter``'s job has ended, however it ends (its result and error are
    taken, not wanted), so that nothing of a cancelled task runs on once the cancellation
    reaches the caller; a second cancellation meanwhile does not cut the wait short."""
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            continue
        except Exception:  # the cancelled call's own error: the end waited for
            return
    if not waiter.cancelled():
        waiter.exception()  # taken: an error nobody asks for would be logged when collected


class _CallCancel:
    """Cancels one RunTask call, whether it is open yet or not: a cancellation that comes
    before the call opens cancels it the moment it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None
        self._cancelled = False

    def opened(self, cancel: Callable[[], None]) -> None:
        with self._lock:
            self._cancel = cancel
            now = self._cancelled
        if now:
            cancel()

    def __call__(self) -> None:
        with self._lock:
            self._cancelled = True
            cancel = self._cancel
        if cancel is not None:
            cancel()
