"""Prometheus metrics of one agent, served on their own HTTP listener ([metrics] listen).

Everything lives in a CollectorRegistry owned by this object (never the
library's global default registry), so two agents in one process, or a test
and an agent, never share counters. Figures come from three places:
- the RPC interceptor calls `observe_rpc` once per finished call;
- the audit log's observer feeds `observe_audit`: tasks and package
  rejections are already audited at exactly one place each, so counting them
  there needs no hooks in the task runner or the package endpoints;
- ε spent is read from the privacy ledger at scrape time (LedgerCollector),
  so it is right even for tasks settled by another process or an earlier run;
- warm-worker reuse and the parameter cache are read from their own counts at
  scrape time (ReuseCollector): whether a run's rounds really skip the worker
  start and the parameter upload.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.audit import events
from agent.audit.record import AuditRecord
from agent.privacy.errors import PrivacyError
from agent.privacy.ledger import BudgetStatus

if TYPE_CHECKING:  # the task modules import numpy; `serve` imports this module before any of that
    from agent.tasks.parameter_cache import CacheStats
    from agent.tasks.worker import WorkerStats

# Tasks run from well under a second to the policy's task_seconds limit.
TASK_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Audit kinds that end a task, and the outcome label each gives.
_TASK_ENDS = {
    events.TaskFinished.kind: "succeeded",
    events.TaskFailed.kind: "failed",
    events.TaskRefused.kind: "refused",
}


class MetricsListenError(Exception):
    """The metrics listener could not bind its address."""


@dataclass
class AgentMetrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        r = self.registry
        self.rpcs = Counter(
            "edge_agent_rpcs", "Finished RPCs by method and gRPC status", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram("edge_agent_rpc_duration_seconds", "RPC duration", ["method"], registry=r)
        self.tasks = Counter(
            "edge_agent_tasks",
            "Tasks by kind and outcome (succeeded, failed, refused)",
            ["kind", "outcome"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "edge_agent_task_duration_seconds",
            "Duration of admitted tasks, from start to result or failure",
            ["kind", "outcome"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.package_rejections = Counter(
            "edge_agent_package_verification_failures",
            "Uploaded packages refused by verification (signature, digest, graph checks), by code",
            ["code"],
            registry=r,
        )
        # task_id -> start time; an entry lives from task.started to its end.
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method=method, code=code).inc()
        self.rpc_seconds.labels(method=method).observe(seconds)

    def observe_audit(self, record: AuditRecord) -> None:
        kind = record.kind
        if kind == events.TaskStarted.kind:
            with self._lock:
                self._started[str(events.value(record, events.TASK_ID))] = self.clock()
        elif kind in _TASK_ENDS:
            task_kind = str(events.value(record, events.TASK_KIND) or "unknown")
            outcome = _TASK_ENDS[kind]
            self.tasks.labels(kind=task_kind, outcome=outcome).inc()
            with self._lock:
                started = self._started.pop(str(events.value(record, events.TASK_ID)), None)
            if started is not None:
                self.task_seconds.labels(kind=task_kind, outcome=outcome).observe(self.clock() - started)
        elif kind == events.PackageRefused.kind:
            self.package_rejections.labels(code=str(events.value(record, events.RULE) or "unknown")).inc()

    def watch_budgets(self, groups: Callable[[], Iterable[BudgetStatus]]) -> None:
        """Reports ε per budget group from `groups()` (normally PrivacyLedger.groups) at every scrape."""
        self.registry.register(LedgerCollector(groups))

    def watch_reuse(self, workers: Callable[[], WorkerStats], parameters: Callable[[], CacheStats]) -> None:
        """Reports warm-worker reuse (WorkerPool.stats) and the parameter cache (ParameterCache.stats)."""
        self.registry.register(ReuseCollector(workers, parameters))


class ReuseCollector(Collector):
    def __init__(self, workers: Callable[[], WorkerStats], parameters: Callable[[], CacheStats]) -> None:
        self._workers = workers
        self._parameters = parameters

    def collect(self) -> Iterator[Metric]:
        workers = self._workers()
        yield CounterMetricFamily(
            "edge_agent_task_workers_started", "Task worker processes started", value=workers.started
        )
        yield CounterMetricFamily(
            "edge_agent_task_workers_reused",
            "Tasks run by a warm worker of the same run (graph and session already built)",
            value=workers.reused,
        )
        yield GaugeMetricFamily(
            "edge_agent_task_workers_warm", "Warm workers waiting for a run's next task", value=workers.warm
        )
        cache = self._parameters()
        yield CounterMetricFamily(
            "edge_agent_parameter_cache_hits", "Parameter tensors a task found held (not sent again)", value=cache.hits
        )
        yield CounterMetricFamily(
            "edge_agent_parameter_cache_misses", "Parameter tensors a task had to receive", value=cache.misses
        )
        yield CounterMetricFamily(
            "edge_agent_parameter_cache_hit_bytes", "Bytes of parameters not sent again", value=cache.hit_bytes
        )
        yield GaugeMetricFamily("edge_agent_parameter_cache_bytes", "Bytes of parameters held", value=cache.held_bytes)


class LedgerCollector(Collector):
    def __init__(self, groups: Callable[[], Iterable[BudgetStatus]]) -> None:
        self._groups = groups

    def collect(self) -> Iterator[Metric]:
        spent = GaugeMetricFamily(
            "edge_agent_privacy_epsilon_spent",
            "ε spent by committed tasks, per budget group (by default each dataset is its own group)",
            labels=["budget_group"],
        )
        limit = GaugeMetricFamily(
            "edge_agent_privacy_epsilon_limit", "ε budget of the group's latest task", labels=["budget_group"]
        )
        readable = GaugeMetricFamily(
            "edge_agent_privacy_ledger_readable", "1 if the privacy ledger could be read for this scrape, else 0"
        )
        try:
            groups = list(self._groups())
        except PrivacyError:
            # A scrape must not fail (or print a trace) because the ledger is
            # busy or damaged; the daemon logs ledger errors where they matter.
            groups = []
            readable.add_metric([], 0.0)
        else:
            readable.add_metric([], 1.0)
        for status in groups:
            spent.add_metric([status.budget_group], status.epsilon_spent)
            if status.limit_epsilon is not None:
                limit.add_metric([status.budget_group], status.limit_epsilon)
        yield spent
        yield limit
        yield readable


@dataclass
class MetricsListener:
    """The HTTP listener serving /metrics; `close()` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(listen: str, registry: CollectorRegistry) -> MetricsListener:
    """Serves `registry` on HOST:PORT ([IPV6]:PORT); port 0 picks a free one."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        server, thread = start_http_server(int(port), addr=host, registry=registry)
    except OSError as exc:
        raise MetricsListenError(f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from None
    return MetricsListener(server, thread)
