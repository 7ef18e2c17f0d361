"""The edge_agent.v1.Agent service: what a coordinator may learn about this agent."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent.api.chunk_codec import ChunkView
from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.audit.events import RpcDecision
from agent.audit.sink import AuditSink
from agent.datasets import (
    DatasetCatalog,
    DatasetFormat,
    DatasetInspection,
    UnknownDatasetError,
    row_count_bucket,
)
from agent.datasets.spec import DATASET_ID_PATTERN
from agent.governance.decisions import (
    Action,
    Decision,
    Request,
    UsageState,
    dataset_not_found,
    decide,
    visible_datasets,
)
from agent.governance.in_force import PolicyInForce
from agent.governance.model import DatasetRule
from agent.identity.agent_key import AgentKey
from agent.packages import PackageStore
from agent.packages.manifest import DROPPED_UNITS_CAPABILITY
from agent.privacy.errors import AccountingSettingsError
from agent.privacy.ledger import PrivacyLedger
from agent.server.package_endpoints import PackageEndpoints
from agent.server.peer import caller_identity
from agent.server.status import refuse
from agent.server.task_endpoints import TaskEndpoints
from agent.tasks.errors import TaskSpecError
from agent.tasks.parameter_cache import ParameterCache
from agent.tasks.planning import planned_mechanisms
from agent.tasks.runner import TaskRunner

CAPABILITIES = (
    "budget",
    "datasets",
    DROPPED_UNITS_CAPABILITY,
    "health",
    "packages",
    "reflection",
    "tasks",
    "transport-probe",
)

# A client-streaming call that "ends" this close to its deadline ended by it.
_DEADLINE_SLACK_SECONDS = 0.05
# How long a GetBudget with planned tasks waits for another projection to finish.
_PROJECTION_WAIT_SECONDS = 30.0

_FORMATS = {
    DatasetFormat.PARQUET: pb.DATASET_FORMAT_PARQUET,
    DatasetFormat.ARROW_IPC: pb.DATASET_FORMAT_ARROW_IPC,
    DatasetFormat.CSV: pb.DATASET_FORMAT_CSV,
}

# What a coordinator is told about an unreadable dataset. The real reason
# names hospital file paths, which stay in the local log.
UNAVAILABLE_FOR_CALLER = (
    "the dataset cannot be read at the moment; the hospital's operators can see why in the agent log"
)


@dataclass(frozen=True)
class AgentIdentity:
    agent_id: str
    version: str
    api_version: str
    key: AgentKey


def _dataset_id(text: str, context: grpc.ServicerContext) -> str:
    if not text:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "dataset_id is required")
    if DATASET_ID_PATTERN.fullmatch(text) is None:
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "dataset_id must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        )
    return text


class AgentService(pb_grpc.AgentServicer):
    def __init__(
        self,
        *,
        identity: AgentIdentity,
        catalog: DatasetCatalog,
        policy: PolicyInForce,
        audit: AuditSink,
        packages: PackageStore,
        ledger: PrivacyLedger,
        runner: TaskRunner,
        logger: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        max_probe_bytes: int = 2 * 1024**3,
        stream_idle_seconds: float = 30.0,
        parameter_cache: ParameterCache | None = None,
    ) -> None:
        self._identity = identity
        self._catalog = catalog
        self._policy = policy
        self._audit = audit
        self._packages = PackageEndpoints(packages, audit, logger, clock)
        self._ledger = ledger
        self._runner = runner
        self._tasks = TaskEndpoints(runner, logger, stream_idle_seconds, parameter_cache)
        self._logger = logger
        self._clock = clock
        self._max_probe_bytes = max_probe_bytes
        self._projecting = threading.Lock()

    # ------------------------------------------------------------ policy

    def close(self) -> None:
        """The server has stopped: warm task workers, kept parameters and background
        compositions are not needed any more."""
        self._runner.close()
        self._tasks.close()
        self._ledger.close()

    def _authorize(
        self, context: grpc.ServicerContext, method: str, action: Action, dataset_id: str | None = None
    ) -> tuple[str, Decision]:
        """Decides, audits the decision, and aborts the call if it is a denial."""
        caller = caller_identity(context) or ""
        policy = self._policy.current()
        known = dataset_id is not None and self._catalog_has(dataset_id)
        request = Request(caller, action, self._clock(), dataset_id=dataset_id, dataset_known=known)
        decision = decide(request, policy, UsageState())
        self._audit.record(
            RpcDecision.of(decision, method=method, coordinator=caller, dataset=dataset_id, policy_digest=policy.digest)
        )
        if decision.refusal is not None:
            refuse(context, decision.refusal, decision.message)
        return caller, decision

    @property
    def catalog(self) -> DatasetCatalog:
        return self._catalog

    def _catalog_has(self, dataset_id: str) -> bool:
        try:
            self._catalog.get(dataset_id)
        except UnknownDatasetError:
            return False
        return True

    # ------------------------------------------------------------ info

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.AgentInfo:
        self._authorize(context, "GetInfo", Action.GET_INFO)
        now = Timestamp()
        now.FromDatetime(self._clock())
        return pb.AgentInfo(
            agent_id=self._identity.agent_id,
            version=self._identity.version,
            api_version=self._identity.api_version,
            public_key_fingerprint=self._identity.key.fingerprint,
            public_key=self._identity.key.public_bytes,
            server_time=now,
            capabilities=list(CAPABILITIES),
            caller_identity=caller_identity(context) or "",
        )

    # ------------------------------------------------------------ datasets

    def _dataset_message(self, inspection: DatasetInspection, rule: DatasetRule | None) -> pb.Dataset:
        spec = inspection.spec
        message = pb.Dataset(id=spec.id, description=spec.description, format=_FORMATS[spec.format])
        if not inspection.available:
            self._logger.warning("dataset.unavailable", dataset=spec.id, reason=inspection.reason)
            message.status = pb.DATASET_STATUS_UNAVAILABLE
            message.status_reason = UNAVAILABLE_FOR_CALLER
            return message
        message.status = pb.DATASET_STATUS_AVAILABLE
        # The catalog's allow-list was applied by the inspection; the policy
        # narrows it further (exposed columns, never the forbidden ones).
        message.columns.extend(
            pb.Column(name=c.name, arrow_type=c.arrow_type, nullable=c.nullable)
            for c in inspection.columns
            if rule is not None and rule.column_visible(c.name)
        )
        if inspection.row_count is not None:
            lower, upper = row_count_bucket(inspection.row_count)
            message.row_count.lower = lower
            message.row_count.upper = upper
        message.privacy_unit_declared = spec.privacy_unit is not None
        _set_units(message.unit_count, inspection)
        return message

    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.ListDatasetsResponse:
        caller, _ = self._authorize(context, "ListDatasets", Action.LIST_DATASETS)
        policy = self._policy.current()
        ids = [spec.id for spec in self._catalog.specs()]
        return pb.ListDatasetsResponse(
            datasets=[
                self._dataset_message(self._catalog.inspect(dataset_id), policy.dataset_rule(dataset_id))
                for dataset_id in visible_datasets(caller, policy, self._clock(), ids)
            ]
        )

    def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:
        dataset_id = _dataset_id(request.dataset_id, context)
        self._authorize(context, "GetDataset", Action.GET_DATASET, dataset_id)
        try:
            inspection = self._catalog.inspect(dataset_id)
        except UnknownDatasetError:  # removed between the decision and now
            context.abort(grpc.StatusCode.NOT_FOUND, dataset_not_found(dataset_id))
        return self._dataset_message(inspection, self._policy.current().dataset_rule(dataset_id))

    # ------------------------------------------------------------ transport

    def ProbeTransport(
        self, request_iterator: Iterator[pb.ProbeChunk], context: grpc.ServicerContext
    ) -> pb.ProbeSummary:
        self._authorize(context, "ProbeTransport", Action.PROBE_TRANSPORT)
        chunks = 0
        received = 0
        first: float | None = None
        last = 0.0
        for chunk in request_iterator:
            if not context.is_active():  # cancelled, past its deadline, or the agent is stopping
                context.abort(grpc.StatusCode.CANCELLED, "the call ended before the probe finished")
            # Monotonic: a wall-clock step (NTP) must not yield negative durations.
            last = time.monotonic()
            first = last if first is None else first
            chunks += 1
            received += len(chunk.data)
            if received > self._max_probe_bytes:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a transport probe may send at most {self._max_probe_bytes} bytes",
                )
        # grpcio ends the request iterator normally when a cancellation or the
        # deadline races the next read, so "the stream ended" can mean "the
        # caller gave up": look before answering as if it had finished.
        if not context.is_active():
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before the probe finished")
        remaining = context.time_remaining()
        if remaining is not None and remaining <= _DEADLINE_SLACK_SECONDS:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the probe's deadline passed")
        return pb.ProbeSummary(
            chunks_received=chunks, bytes_received=received, seconds=0.0 if first is None else last - first
        )

    # ------------------------------------------------------------ packages

    def UploadPackage(
        self, request_iterator: Iterator[pb.UploadPackageRequest], context: grpc.ServicerContext
    ) -> pb.Package:
        caller, _ = self._authorize(context, "UploadPackage", Action.UPLOAD_PACKAGE)
        return self._packages.upload(caller, self._policy.current(), request_iterator, context)

    def ListPackages(self, request: pb.ListPackagesRequest, context: grpc.ServicerContext) -> pb.ListPackagesResponse:
        self._authorize(context, "ListPackages", Action.READ_PACKAGES)
        return self._packages.list()

    def GetPackage(self, request: pb.GetPackageRequest, context: grpc.ServicerContext) -> pb.Package:
        self._authorize(context, "GetPackage", Action.READ_PACKAGES)
        return self._packages.get(request.digest, context)

    # ------------------------------------------------------------ tasks

    def RunTask(  # type: ignore[override]  # the chunk codecs (agent.api.chunk_codec), see add_agent_service
        self, request_iterator: Iterator[pb.RunTaskRequest | ChunkView], context: grpc.ServicerContext
    ) -> Iterator[pb.TaskEvent | bytes]:
        # The policy decision needs the package and the dataset, so the runner
        # decides (and audits) once it has read the task spec.
        caller = caller_identity(context) or ""
        return self._tasks.run(caller, request_iterator, context)

    def CancelTask(self, request: pb.CancelTaskRequest, context: grpc.ServicerContext) -> pb.CancelTaskResponse:
        caller, _ = self._authorize(context, "CancelTask", Action.CANCEL_TASK)
        if not request.task_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "task_id is required")
        return pb.CancelTaskResponse(cancelled=self._runner.cancel(caller, request.task_id[:100]))

    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        dataset_id = _dataset_id(request.dataset_id, context)
        self._authorize(context, "GetBudget", Action.GET_BUDGET, dataset_id)
        rule = self._policy.current().dataset_rule(dataset_id)
        if rule is None:  # the decision refuses datasets without a rule (reloaded since: told the same way)
            context.abort(grpc.StatusCode.NOT_FOUND, dataset_not_found(dataset_id))
        try:
            planned = planned_mechanisms(request.planned, rule.bounds)
        except TaskSpecError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        status = self._ledger.status(rule.budget_group, limit_epsilon=rule.epsilon_budget, delta=rule.delta)
        budget = pb.Budget(
            dataset_id=dataset_id,
            budget_group=rule.budget_group,
            epsilon_limit=rule.epsilon_budget,
            delta=rule.delta,
            epsilon_spent=status.epsilon_spent,
            epsilon_reserved=status.epsilon_reserved,
            tasks_charged=status.tasks_committed,
            accountant=self._ledger.accountant.kind.value,
        )
        if planned:
            # One projection at a time: each composes a plan afresh (seconds, tens of megabytes at
            # the caps), and a burst of them must not starve the reservations tasks wait on.
            if not self._projecting.acquire(timeout=_PROJECTION_WAIT_SECONDS):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the agent is projecting another plan; try again")
            try:
                budget.epsilon_projected = self._ledger.projected(
                    rule.budget_group,
                    planned,
                    delta=rule.delta,
                    max_settings=self._policy.current().limits.max_accounting_settings,
                )
            except AccountingSettingsError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the planned tasks cannot be accounted: {exc}")
            except MemoryError:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the planned tasks are too large to account here")
            finally:
                self._projecting.release()
        try:
            inspection = self._catalog.inspect(dataset_id)
        except UnknownDatasetError:
            # Removed from the registry since the decision: the budget stands, the units are unknown.
            return budget
        budget.privacy_unit_declared = inspection.spec.privacy_unit is not None
        _set_units(budget.unit_count, inspection)
        return budget


def _set_units(bucket: pb.RowCountBucket, inspection: DatasetInspection) -> None:
    """The dataset's units (patients, or rows where no unit is declared), bucketed; unset when unknown."""
    units = inspection.units if inspection.available else None
    if units is not None:
        bucket.lower, bucket.upper = row_count_bucket(units)
