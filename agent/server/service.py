"""The edge_agent.v1.Agent service: what a coordinator may learn about this agent."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NoReturn

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.datasets import (
    DatasetCatalog,
    DatasetFormat,
    DatasetInspection,
    UnknownDatasetError,
    row_count_bucket,
)
from agent.identity.agent_key import AgentKey
from agent.server.peer import caller_identity

CAPABILITIES = ("datasets", "health", "reflection", "transport-probe")

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


def _unimplemented(context: grpc.ServicerContext, what: str) -> NoReturn:
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not available in this agent version yet")


class AgentService(pb_grpc.AgentServicer):
    def __init__(
        self,
        identity: AgentIdentity,
        catalog: DatasetCatalog,
        logger: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        max_probe_bytes: int = 2 * 1024**3,
    ) -> None:
        self._identity = identity
        self._catalog = catalog
        self._logger = logger
        self._clock = clock
        self._max_probe_bytes = max_probe_bytes

    # ------------------------------------------------------------ info

    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.AgentInfo:
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

    def _dataset_message(self, inspection: DatasetInspection) -> pb.Dataset:
        spec = inspection.spec
        message = pb.Dataset(id=spec.id, description=spec.description, format=_FORMATS[spec.format])
        if not inspection.available:
            self._logger.warning("dataset.unavailable", dataset=spec.id, reason=inspection.reason)
            message.status = pb.DATASET_STATUS_UNAVAILABLE
            message.status_reason = UNAVAILABLE_FOR_CALLER
            return message
        message.status = pb.DATASET_STATUS_AVAILABLE
        message.columns.extend(
            pb.Column(name=c.name, arrow_type=c.arrow_type, nullable=c.nullable) for c in inspection.columns
        )
        if inspection.row_count is not None:
            lower, upper = row_count_bucket(inspection.row_count)
            message.row_count.lower = lower
            message.row_count.upper = upper
        return message

    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.ListDatasetsResponse:
        return pb.ListDatasetsResponse(datasets=[self._dataset_message(i) for i in self._catalog.inspect_all()])

    def GetDataset(self, request: pb.GetDatasetRequest, context: grpc.ServicerContext) -> pb.Dataset:
        if not request.dataset_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "dataset_id is required")
        try:
            inspection = self._catalog.inspect(request.dataset_id)
        except UnknownDatasetError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"dataset {request.dataset_id[:100]!r} not found")
        return self._dataset_message(inspection)

    # ------------------------------------------------------------ transport

    def ProbeTransport(
        self, request_iterator: Iterator[pb.ProbeChunk], context: grpc.ServicerContext
    ) -> pb.ProbeSummary:
        chunks = 0
        received = 0
        first: float | None = None
        last = 0.0
        for chunk in request_iterator:
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
        return pb.ProbeSummary(
            chunks_received=chunks, bytes_received=received, seconds=0.0 if first is None else last - first
        )

    # ------------------------------------------------------------ later issues

    def UploadPackage(
        self, request_iterator: Iterator[pb.UploadPackageRequest], context: grpc.ServicerContext
    ) -> pb.Package:
        _unimplemented(context, "UploadPackage")

    def ListPackages(self, request: pb.ListPackagesRequest, context: grpc.ServicerContext) -> pb.ListPackagesResponse:
        _unimplemented(context, "ListPackages")

    def GetPackage(self, request: pb.GetPackageRequest, context: grpc.ServicerContext) -> pb.Package:
        _unimplemented(context, "GetPackage")

    def RunTask(
        self, request_iterator: Iterator[pb.RunTaskRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TaskEvent]:
        _unimplemented(context, "RunTask")

    def CancelTask(self, request: pb.CancelTaskRequest, context: grpc.ServicerContext) -> pb.CancelTaskResponse:
        _unimplemented(context, "CancelTask")

    def GetBudget(self, request: pb.GetBudgetRequest, context: grpc.ServicerContext) -> pb.Budget:
        _unimplemented(context, "GetBudget")
