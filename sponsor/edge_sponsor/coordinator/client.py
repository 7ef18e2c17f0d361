"""A small typed client that dials one agent with mutual TLS."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.packages.manifest import DROPPED_UNITS
from agent.tasks.tensors import TensorDecl
from edge_sponsor.coordinator.tasks import (
    FastRunTask,
    ParameterSet,
    TaskCallError,
    TaskProtocolError,
    TaskRun,
    run_task,
)

DEFAULT_TIMEOUT_SECONDS = 30.0


def dropped_units(run: TaskRun) -> float | None:
    """The noisy DROPPED_UNITS a task released, or None when it released none: the task did not
    ask, or the agent predates the field (proto3 ignores a field it does not know, so such an
    agent runs the task, and charges it, without the count).

    Takes a finished task's :class:`TaskRun` (from :meth:`AgentClient.run_task`); raises nothing.
    """
    return run.scalars.get(DROPPED_UNITS)


@dataclass(frozen=True)
class Units:
    """What a site's ε protects, and how many such units its dataset holds, as the agent told it.

    ``privacy_unit_declared``: the dataset names a unit column (a patient id), so ε is per
    patient, all of a patient's rows together; otherwise each row is its own unit and ε is
    per row. ``lower``/``upper``: the units (patients, or rows), bucketed as [lower, upper);
    ``upper`` 0 is the open top bucket, and both are None when the agent did not say (an agent
    from before units existed, or a dataset it cannot read now).
    """

    privacy_unit_declared: bool
    lower: int | None
    upper: int | None

    @classmethod
    def of_dataset(cls, dataset: pb.Dataset) -> Units:
        # An agent from before units existed sends no unit_count: its ε was per row, and its units are its rows.
        bucket = dataset.unit_count if dataset.HasField("unit_count") else dataset.row_count
        known = dataset.HasField("unit_count") or dataset.HasField("row_count")
        return cls(dataset.privacy_unit_declared, *_edges(bucket, known))

    @classmethod
    def of_budget(cls, budget: pb.Budget) -> Units:
        return cls(budget.privacy_unit_declared, *_edges(budget.unit_count, budget.HasField("unit_count")))

    @property
    def epsilon_per(self) -> str:
        """``patient`` or ``row``: what one unit of the site's ε protects."""
        return "patient" if self.privacy_unit_declared else "row"

    def describe(self) -> str:
        """The units in words, for a person reading a coordinator's output."""
        count = "" if self.lower is None else f"in [{self.lower}, {self.upper or 'inf'})"
        if self.privacy_unit_declared:
            return f"ε per patient (privacy unit declared; patients {count})" if count else "ε per patient"
        rows = f"; rows {count}" if count else ""
        return f"ε per row (no privacy unit: a patient with k rows is protected only at about k·ε{rows})"


def _edges(bucket: pb.RowCountBucket, known: bool) -> tuple[int | None, int | None]:
    return (int(bucket.lower), int(bucket.upper)) if known else (None, None)


def dataset_format_name(code: int) -> str:
    """``parquet``, ``arrow_ipc`` or ``csv`` for a DatasetFormat code; a newer agent's code as a number."""
    try:
        return pb.DatasetFormat.Name(code).removeprefix("DATASET_FORMAT_").lower()  # type: ignore[arg-type]
    except ValueError:
        return f"format {code}"


class AgentRpcError(Exception):
    """An RPC failed; carries the gRPC status code and the agent's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {code.name}: {details}")


class CredentialsError(Exception):
    """A credentials file is missing, unreadable, not PEM, or the key does not match the certificate."""


def _public_der(key: object) -> bytes | None:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return None
    der: bytes = public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def check_credentials(ca_cert: bytes, cert: bytes, key: bytes, names: tuple[str, str, str]) -> None:
    """Checks PEM syntax and that the key belongs to the certificate; errors name the file.

    gRPC would accept all of this and fail only at the handshake, with a
    message that names neither file.
    """
    ca_name, cert_name, key_name = names
    try:
        if not x509.load_pem_x509_certificates(ca_cert):
            raise ValueError("no certificate")
    except ValueError as exc:
        raise CredentialsError(f"{ca_name}: not a PEM CA certificate ({exc})") from None
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError as exc:
        raise CredentialsError(f"{cert_name}: not a PEM client certificate ({exc})") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise CredentialsError(f"{key_name}: not an unencrypted PEM private key ({exc})") from None
    if _public_der(private_key.public_key()) != _public_der(chain[0].public_key()):
        raise CredentialsError(f"{key_name}: does not match the client certificate in {cert_name}")


@dataclass(frozen=True)
class ClientCredentials:
    """PEM bytes: the CA that signed the agent's server certificate, and ours."""

    ca_cert: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_files(cls, ca_cert: Path, cert: Path, key: Path) -> ClientCredentials:
        def read(path: Path, what: str) -> bytes:
            try:
                return path.read_bytes()
            except OSError as exc:
                raise CredentialsError(f"{path}: cannot read {what}: {exc.strerror}") from None

        credentials = cls(read(ca_cert, "CA certificate"), read(cert, "client certificate"), read(key, "client key"))
        credentials.check((str(ca_cert), str(cert), str(key)))
        return credentials

    def check(self, names: tuple[str, str, str] = ("CA certificate", "client certificate", "client key")) -> None:
        """Raises CredentialsError unless all three are PEM and the key matches the certificate."""
        check_credentials(self.ca_cert, self.cert, self.key, names)


def channel_options(max_message_bytes: int, server_name: str | None) -> list[tuple[str, int | str]]:
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Every 30 s: below the idle timeout of common firewalls and above the
        # agent's minimum ping interval, so it is never told "too many pings".
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


class AgentClient:
    """Calls one agent. Every call has a deadline; failures raise AgentRpcError."""

    def __init__(
        self,
        address: str,
        credentials: ClientCredentials,
        *,
        server_name: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.address = address
        self._timeout = timeout
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=credentials.ca_cert,
            private_key=credentials.key,
            certificate_chain=credentials.cert,
        )
        self._channel = grpc.secure_channel(
            address, channel_credentials, options=channel_options(max_message_bytes, server_name)
        )
        self._stub = pb_grpc.AgentStub(self._channel)
        self._run_task = FastRunTask.on(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _deadline(self, timeout: float | None) -> float:
        return self._timeout if timeout is None else timeout

    @staticmethod
    def _error(method: str, exc: grpc.RpcError) -> AgentRpcError:
        # Channel-level RpcErrors are also grpc.Call objects with code() and details().
        code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return AgentRpcError(method, code, details or "")

    def wait_until_ready(self, timeout: float) -> None:
        """Blocks until the channel is connected (TLS handshake done) or raises."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise AgentRpcError(
                "connect", grpc.StatusCode.UNAVAILABLE, f"no connection to {self.address} within {timeout} s"
            ) from None

    def get_info(self, timeout: float | None = None) -> pb.AgentInfo:
        try:
            return self._stub.GetInfo(pb.GetInfoRequest(), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetInfo", exc) from None

    def list_datasets(self, timeout: float | None = None) -> list[pb.Dataset]:
        try:
            response = self._stub.ListDatasets(pb.ListDatasetsRequest(), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("ListDatasets", exc) from None
        return list(response.datasets)

    def get_dataset(self, dataset_id: str, timeout: float | None = None) -> pb.Dataset:
        try:
            return self._stub.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetDataset", exc) from None

    def probe_transport(self, chunks: Iterable[bytes], timeout: float | None = None) -> pb.ProbeSummary:
        def messages() -> Iterator[pb.ProbeChunk]:
            for data in chunks:
                yield pb.ProbeChunk(data=data)

        try:
            return self._stub.ProbeTransport(messages(), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("ProbeTransport", exc) from None

    def upload_package(
        self, archive: bytes, chunk_bytes: int = 1024 * 1024, timeout: float | None = None
    ) -> pb.Package:
        """Uploads a signed package archive in chunks; the agent checks size and digest at the end."""
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")

        def messages() -> Iterator[pb.UploadPackageRequest]:
            header = pb.PackageUploadHeader(size_bytes=len(archive), sha256=hashlib.sha256(archive).digest())
            yield pb.UploadPackageRequest(header=header)
            view = memoryview(archive)
            for offset in range(0, len(archive), chunk_bytes):
                yield pb.UploadPackageRequest(chunk=bytes(view[offset : offset + chunk_bytes]))

        try:
            return self._stub.UploadPackage(messages(), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("UploadPackage", exc) from None

    def list_packages(self, timeout: float | None = None) -> list[pb.Package]:
        try:
            response = self._stub.ListPackages(pb.ListPackagesRequest(), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("ListPackages", exc) from None
        return list(response.packages)

    def get_package(self, digest: str, timeout: float | None = None) -> pb.Package:
        try:
            return self._stub.GetPackage(pb.GetPackageRequest(digest=digest), timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetPackage", exc) from None

    def get_budget(
        self, dataset_id: str, timeout: float | None = None, *, planned: Sequence[pb.PlannedTasks] = ()
    ) -> pb.Budget:
        """The dataset's budget; with ``planned``, also ``epsilon_projected``: the group's ε once
        those tasks are charged too, by the agent's own accounting (nothing is reserved)."""
        request = pb.GetBudgetRequest(dataset_id=dataset_id, planned=list(planned))
        try:
            return self._stub.GetBudget(request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise self._error("GetBudget", exc) from None

    def run_task(
        self,
        spec: pb.TaskSpec,
        parameters: Sequence[tuple[str, npt.NDArray[np.generic]]] | ParameterSet,
        *,
        timeout: float | None = None,
        stall_seconds: float | None = None,
        on_progress: Callable[[float, str], None] | None = None,
        expected: Sequence[TensorDecl] | None = None,
        on_call: Callable[[Callable[[], None]], None] | None = None,
    ) -> TaskRun:
        """Runs one task (see edge_sponsor.coordinator.tasks.run_task); a refusal, a broken or stalled
        stream raises AgentRpcError.

        With ``stall_seconds`` the call is cancelled once nothing has moved for that
        long, and ``timeout`` is an optional overall cap; without it, ``timeout``
        (or the client's default) is a plain deadline.
        """
        try:
            return run_task(
                self._run_task,
                spec,
                parameters,
                timeout=timeout if stall_seconds else self._deadline(timeout),
                stall_seconds=stall_seconds,
                on_progress=on_progress,
                expected=expected,
                on_call=on_call,
            )
        except grpc.RpcError as exc:
            raise self._error("RunTask", exc) from None
        except TaskCallError as exc:
            raise AgentRpcError("RunTask", exc.code, str(exc)) from None
        except TaskProtocolError as exc:
            raise AgentRpcError("RunTask", grpc.StatusCode.INTERNAL, str(exc)) from None

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The health status name of `service` ("" = the whole agent), e.g. "SERVING"."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self._deadline(timeout)
            )
        except grpc.RpcError as exc:
            raise self._error("Health.Check", exc) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
