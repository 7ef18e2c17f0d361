"""A load generator for one agent: many concurrent coordinators over mutual TLS (grpc.aio).

Readers call GetInfo, ListDatasets, GetBudget and Health in a loop; task clients run
dp_gradient tasks until the budget refuses them; slow clients send their parameter
bytes one at a time with pauses; dropping clients cancel tasks and uploads half-way.
Bounded in time and in requests; loopback only. Used by tests/reliability/test_load.py
(short profile) and bench/load.py (long profile, figures).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from edge_sponsor.coordinator.client import ClientCredentials


@dataclass(frozen=True)
class LoadPlan:
    seconds: float = 10.0
    readers: int = 16
    task_clients: int = 4
    slow_clients: int = 2
    dropping_clients: int = 2
    max_requests: int = 200_000
    # How long the first part of the run is treated as warm-up for the RSS figure.
    warmup_seconds: float = 3.0


@dataclass
class LoadReport:
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter[str] = field(default_factory=Counter)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)
    tasks_ok: int = 0
    epsilon_spent: float = 0.0
    epsilon_limit: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def percentile_ms(self, method: str, fraction: float) -> float:
        values = sorted(self.latencies[method])
        return values[min(len(values) - 1, int(fraction * len(values)))] * 1000 if values else float("nan")

    def rss_growth_kib(self, warmup_seconds: float) -> int:
        after = [kib for t, kib in self.rss_kib if t >= warmup_seconds]
        return (after[-1] - min(after)) if len(after) >= 2 else 0

    def lines(self, warmup_seconds: float) -> list[str]:
        out = [f"{self.requests} requests in {self.seconds:.1f} s = {self.requests / max(self.seconds, 1e-9):.0f}/s"]
        for method in sorted(self.latencies):
            samples = self.latencies[method]
            out.append(
                f"  {method:<16} n={len(samples):>6}  p50 {self.percentile_ms(method, 0.5):7.2f} ms"
                f"  p99 {self.percentile_ms(method, 0.99):7.2f} ms"
            )
        out.append("  statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        if self.rss_kib:
            first, last = self.rss_kib[0][1], self.rss_kib[-1][1]
            out.append(
                f"  daemon RSS {first / 1024:.0f} MiB at start, {last / 1024:.0f} MiB at end, "
                f"peak {max(k for _, k in self.rss_kib) / 1024:.0f} MiB, growth after warm-up "
                f"{self.rss_growth_kib(warmup_seconds) / 1024:.1f} MiB"
            )
        out.append(f"  tasks completed {self.tasks_ok}; ε spent {self.epsilon_spent:.3f} of {self.epsilon_limit:g}")
        return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Run:
    def __init__(self, plan: LoadPlan, report: LoadReport) -> None:
        self.plan = plan
        self.report = report
        self.deadline = time.monotonic() + plan.seconds

    def going(self) -> bool:
        return time.monotonic() < self.deadline and self.report.requests < self.plan.max_requests

    async def timed(self, method: str, call: Callable[[], Awaitable[object]]) -> object | None:
        started = time.perf_counter()
        try:
            result = await call()
        except grpc.aio.AioRpcError as exc:
            self.report.statuses[exc.code().name] += 1
            return None
        self.report.latencies[method].append(time.perf_counter() - started)
        self.report.statuses["OK"] += 1
        return result


def _spec(digest: str) -> pb.TaskSpec:
    return pb.TaskSpec(
        kind=pb.TASK_KIND_DP_GRADIENT,
        package_digest=digest,
        dataset_id="cohort",
        hyperparameters=pb.DPHyperparameters(clip_norm=1.0, noise_multiplier=2.0, sampling_rate=0.5),
        parameters=[
            pb.TensorHeader(name="w", dtype=pb.DTYPE_FLOAT32, shape=[4], byte_length=16),
            pb.TensorHeader(name="b", dtype=pb.DTYPE_FLOAT32, shape=[], byte_length=4),
        ],
        correlation_id="load",
    )


async def _task(stub: pb_grpc.AgentStub, digest: str, *, pause: float = 0.0, drop: bool = False) -> bool:
    """One dp_gradient task; sends parameters byte by byte with ``pause`` between bytes, or
    cancels it after admission when ``drop``. True when a result came back."""
    call = stub.RunTask()
    await call.write(pb.RunTaskRequest(spec=_spec(digest)))
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "accepted":
            if drop:
                call.cancel()
                return False
            for index in event.accepted.parameters_needed:
                size = 16 if index == 0 else 4
                step = 1 if pause else size
                for offset in range(0, size, step):
                    if pause:
                        await asyncio.sleep(pause)
                    chunk = pb.TensorChunk(tensor_index=index, offset=offset, data=bytes(step))
                    await call.write(pb.RunTaskRequest(parameter_chunk=chunk))
            await call.done_writing()
        elif kind == "completed":
            return True
    return False


async def run_load(
    address: str, credentials: ClientCredentials, digest: str, plan: LoadPlan, daemon_pid: int | None
) -> LoadReport:
    report = LoadReport()
    run = _Run(plan, report)
    options = [("grpc.ssl_target_name_override", "localhost")]
    tls = grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert)
    channels = [grpc.aio.secure_channel(address, tls, options=options) for _ in range(plan.readers + 3)]
    started = time.monotonic()

    async def reader(channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.AgentStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        while run.going():
            await run.timed("GetInfo", lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=10))
            await run.timed("ListDatasets", lambda: stub.ListDatasets(pb.ListDatasetsRequest(), timeout=10))
            await run.timed("GetBudget", lambda: stub.GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=10))
            await run.timed("Health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10))

    async def tasks(channel: grpc.aio.Channel, pause: float, drop: bool, label: str) -> None:
        stub = pb_grpc.AgentStub(channel)
        while run.going():
            done = await run.timed(label, lambda: _task(stub, digest, pause=pause, drop=drop))
            if done is True:
                report.tasks_ok += 1
            elif done is None:
                await asyncio.sleep(0.05)  # refused (budget, concurrency): do not spin

    async def sampler() -> None:
        if daemon_pid is None:
            return
        while run.going():
            report.rss_kib.append((time.monotonic() - started, rss_kib(daemon_pid)))
            await asyncio.sleep(0.25)

    jobs = [reader(channels[i]) for i in range(plan.readers)]
    jobs += [tasks(channels[-1], 0.0, False, "RunTask") for _ in range(plan.task_clients)]
    jobs += [tasks(channels[-2], 0.3, False, "RunTask(slow)") for _ in range(plan.slow_clients)]
    jobs += [tasks(channels[-3], 0.0, True, "RunTask(cancel)") for _ in range(plan.dropping_clients)]
    jobs.append(sampler())
    try:
        await asyncio.gather(*jobs)
        report.seconds = time.monotonic() - started
        budget = await pb_grpc.AgentStub(channels[0]).GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=10)
        report.epsilon_spent, report.epsilon_limit = budget.epsilon_spent, budget.epsilon_limit
    finally:
        for channel in channels:
            await channel.close()
    return report

