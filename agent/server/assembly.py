"""Builds the service's object graph from a loaded config: one place, used by `serve` and by tests."""

from __future__ import annotations

import structlog

from agent import API_VERSION, __version__
from agent.config import AgentConfig
from agent.datasets import DatasetCatalog, DatasetRegistry, InspectionCache
from agent.governance.in_force import PolicyInForce
from agent.identity.agent_key import AgentKey
from agent.packages import PackageStore
from agent.server.audit_sink import AuditSink
from agent.server.service import AgentIdentity, AgentService


def assemble_service(
    config: AgentConfig,
    *,
    key: AgentKey,
    policy: PolicyInForce,
    audit: AuditSink,
    logger: structlog.typing.FilteringBoundLogger,
    version: str = __version__,
) -> AgentService:
    # The cache keeps CSV row counts from being rescanned on every RPC while
    # still noticing files that change or vanish.
    catalog = DatasetCatalog(
        config.datasets, DatasetRegistry(config.dataset_registry_file), InspectionCache(), logger=logger
    )
    return AgentService(
        identity=AgentIdentity(config.agent_id, version, API_VERSION, key),
        catalog=catalog,
        policy=policy,
        audit=audit,
        packages=PackageStore(config.state_dir / "packages"),
        logger=logger,
    )
