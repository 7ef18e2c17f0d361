"""UploadPackage / ListPackages / GetPackage: the package store seen over gRPC.

The store and the verifier decide; this module turns their answers into gRPC
statuses and audit events. Every refused upload is audited with its rejection
code, and nothing of it stays in the store (the store guarantees that).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import NoReturn

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.tensor_dtypes import CODE_BY_DTYPE
from agent.audit.events import PackageRefused, PackageUploaded
from agent.audit.sink import AuditSink
from agent.governance.model import Policy
from agent.governance.publishers import check_package_name, trust_store
from agent.packages import (
    PackageLimits,
    PackageRejected,
    PackageStatus,
    PackageStore,
    StagedUpload,
    StoredPackage,
)
from agent.packages.store import parse_digest
from agent.server.status import refuse
from agent.tasks.tensors import DTYPES, TensorDecl

_STATUS = {
    PackageStatus.PENDING: pb.PACKAGE_STATUS_PENDING,
    PackageStatus.APPROVED: pb.PACKAGE_STATUS_APPROVED,
    PackageStatus.REJECTED: pb.PACKAGE_STATUS_REJECTED,
}


def package_message(package: StoredPackage) -> pb.Package:
    manifest = package.manifest
    uploaded = Timestamp()
    uploaded.FromDatetime(package.uploaded_at)
    message = pb.Package(
        digest=package.digest,
        name=manifest.name,
        version=package.version,
        publisher=manifest.publisher,
        description=manifest.description,
        task_kinds=[kind.value for kind in manifest.task_kinds],
        status=_STATUS[package.status],
        signer_key_ids=list(package.signer_key_ids),
        uploaded_at=uploaded,
    )
    if package.status is PackageStatus.PENDING:
        message.status_reason = "awaiting review by the hospital's compliance officer"
    elif package.decision is not None:
        message.status_reason = f"{package.decision.decision.value} by {package.decision.reviewer}"
        if package.decision.reason:
            message.status_reason += f": {package.decision.reason}"
    for parameter in manifest.parameters:
        known = parameter.dtype in DTYPES
        message.parameters.append(
            pb.TensorHeader(
                name=parameter.name,
                dtype=CODE_BY_DTYPE.get(parameter.dtype, pb.DTYPE_UNSPECIFIED),
                shape=list(parameter.shape),
                byte_length=TensorDecl(parameter.name, parameter.dtype, parameter.shape).byte_length if known else 0,
            )
        )
    return message


class PackageEndpoints:
    """The package RPCs; the caller has already been authorised by the policy."""

    def __init__(
        self,
        store: PackageStore,
        audit: AuditSink,
        logger: structlog.typing.FilteringBoundLogger,
        clock: Callable[[], dt.datetime],
        limits: PackageLimits | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._logger = logger
        self._clock = clock
        self._limits = limits or PackageLimits()

    def upload(
        self,
        caller: str,
        policy: Policy,
        request_iterator: Iterator[pb.UploadPackageRequest],
        context: grpc.ServicerContext,
    ) -> pb.Package:
        header = self._header(request_iterator, context)
        try:
            staged = self._store.begin_upload(header.size_bytes, "sha256:" + header.sha256.hex(), self._limits)
        except PackageRejected as exc:
            self._refuse(context, caller, exc)
        with staged:
            received = self._receive(staged, request_iterator, context, caller)
            try:
                stored = self._store.commit(
                    staged,
                    trust_store(policy),
                    self._limits,
                    self._clock(),
                    policy.packages.require_approval,
                    check=lambda verified: check_package_name(verified, policy),
                )
            except PackageRejected as exc:
                self._refuse(context, caller, exc, received)
        self._audit.record(PackageUploaded.of(stored, coordinator=caller, policy_digest=policy.digest))
        return package_message(stored)

    def list(self) -> pb.ListPackagesResponse:
        return pb.ListPackagesResponse(packages=[package_message(p) for p in self._store.list()])

    def get(self, digest: str, context: grpc.ServicerContext) -> pb.Package:
        try:
            parse_digest(digest)
        except ValueError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "digest must be sha256:<64 lowercase hex digits>")
        package = self._store.get(digest)
        if package is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"package {digest} is not stored on this agent")
        return package_message(package)

    # ------------------------------------------------------------ upload steps

    @staticmethod
    def _header(
        request_iterator: Iterator[pb.UploadPackageRequest], context: grpc.ServicerContext
    ) -> pb.PackageUploadHeader:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of an upload must be its header")
        header = first.header
        if header.size_bytes < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "header.size_bytes must be the archive's size (> 0)")
        if len(header.sha256) != 32:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"header.sha256 must be the 32-byte SHA-256 of the archive, got {len(header.sha256)} bytes",
            )
        return header

    def _receive(
        self,
        staged: StagedUpload,
        request_iterator: Iterator[pb.UploadPackageRequest],
        context: grpc.ServicerContext,
        caller: str,
    ) -> int:
        received = 0
        for message in request_iterator:
            if message.WhichOneof("part") != "chunk":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only chunks may follow the upload header")
            try:
                staged.write(message.chunk)
            except PackageRejected as exc:
                self._refuse(context, caller, exc, received + len(message.chunk))
            received += len(message.chunk)
        return received

    def _refuse(
        self, context: grpc.ServicerContext, caller: str, exc: PackageRejected, received: int = 0
    ) -> NoReturn:
        self._audit.record(
            PackageRefused(
                coordinator=caller,
                outcome=exc.code.refusal.value,
                rule=exc.code.value,
                reason=exc.message,
                bytes_received=received,
            )
        )
        self._logger.info("package.refused", caller=caller, code=exc.code.value, reason=exc.message)
        # str(exc) is "<code>: <message>": the code is stable, the message names what is at fault.
        refuse(context, exc.code.refusal, str(exc))
