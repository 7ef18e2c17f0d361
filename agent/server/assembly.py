"""Builds the service's object graph from a loaded config: one place, used by `serve` and by tests."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from pathlib import Path

import structlog

from agent import API_VERSION, __version__
from agent.audit.events import TaskAbandoned
from agent.audit.sink import AuditSink
from agent.config import AgentConfig
from agent.datasets import DatasetCatalog, DatasetRegistry, InspectionCache
from agent.governance.in_force import PolicyInForce
from agent.identity.agent_key import AgentKey
from agent.observability.metrics import AgentMetrics
from agent.packages import PackageStore
from agent.privacy.accounting import make_accountant
from agent.privacy.errors import PrivacyError
from agent.privacy.ledger import LEDGER_FILENAME, PrivacyLedger
from agent.server.service import AgentIdentity, AgentService
from agent.tasks.parameter_cache import ParameterCache
from agent.tasks.runner import TaskRunner
from agent.tasks.worker import WorkerPool


def assemble_service(
    config: AgentConfig,
    *,
    key: AgentKey,
    policy: PolicyInForce,
    audit: AuditSink,
    logger: structlog.typing.FilteringBoundLogger,
    version: str = __version__,
    metrics: AgentMetrics | None = None,
) -> AgentService:
    # The cache keeps CSV row counts from being rescanned on every RPC while
    # still noticing files that change or vanish.
    catalog = DatasetCatalog(
        config.datasets,
        DatasetRegistry(config.dataset_registry_file),
        InspectionCache(),
        logger=logger,
        report_exposure=True,
    )
    packages = PackageStore(config.state_dir / "packages")
    ledger = PrivacyLedger(config.state_dir / LEDGER_FILENAME, make_accountant("pld"))
    _recover_abandoned_tasks(ledger, audit, logger)
    warm_ledger_in_background(ledger, logger)
    workers = WorkerPool(warm_workers=config.server.warm_workers, idle_seconds=config.server.warm_worker_idle_seconds)
    parameter_cache = ParameterCache(
        config.server.parameter_cache_mb * 1024 * 1024, config.server.parameter_cache_idle_seconds
    )
    if metrics is not None:
        metrics.watch_reuse(workers.stats, parameter_cache.stats)
    runner = TaskRunner(
        policy=policy,
        catalog=catalog,
        packages=packages,
        ledger=ledger,
        workers=workers,
        audit=audit,
        logger=logger,
        scratch=_fresh_scratch(config.state_dir / "scratch"),
    )
    return AgentService(
        identity=AgentIdentity(config.agent_id, version, API_VERSION, key),
        catalog=catalog,
        policy=policy,
        audit=audit,
        packages=packages,
        ledger=ledger,
        runner=runner,
        logger=logger,
        stream_idle_seconds=config.server.stream_idle_seconds,
        parameter_cache=parameter_cache,
    )


def warm_ledger_in_background(
    ledger: PrivacyLedger, logger: structlog.typing.FilteringBoundLogger
) -> threading.Thread:
    """Composes every budget group's history once, beside serving.

    The accountant keeps composed histories in memory only: without this, the
    first task after a restart would compose the group's whole history while
    its coordinator waits (seconds, up to a minute for many distinct settings).
    """

    def warm() -> None:
        started = time.monotonic()
        try:
            groups = ledger.groups()
        except PrivacyError as exc:
            logger.warning("ledger.warmup_failed", error=str(exc))
            return
        logger.info("ledger.warmed", budget_groups=len(groups), seconds=round(time.monotonic() - started, 2))

    thread = threading.Thread(target=warm, name="ledger-warmup", daemon=True)
    thread.start()
    return thread


def _recover_abandoned_tasks(
    ledger: PrivacyLedger, audit: AuditSink, logger: structlog.typing.FilteringBoundLogger
) -> None:
    """Reservations left by an agent that died mid-task count as spent: nobody knows if a result left."""
    for task in ledger.recover_abandoned(dt.datetime.now(dt.UTC)):
        audit.record(
            TaskAbandoned(
                task_id=task.task_id,
                coordinator=task.coordinator,
                dataset=task.dataset,
                budget_group=task.budget_group,
                reserved_at=task.reserved_at.isoformat(),
                charged=True,
                correlation_id=task.correlation_id,
            )
        )
        logger.warning("task.abandoned", task_id=task.task_id, dataset=task.dataset, charged=True)


def _fresh_scratch(directory: Path) -> Path:
    """The tasks' scratch directory, emptied: what a previous run left there (a worker killed
    with the daemon) is rows of patients that no task will read again."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory
