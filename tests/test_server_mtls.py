"""The Agent service over a real loopback server with real certificates."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.identity.agent_key import load_key_file
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError, ClientCredentials
from tests.conftest import COORDINATOR_URI, Pki, RunningAgent, start_in_process, write_config


def _cohort(path: Path, rows: int) -> Path:
    pq.write_table(
        pa.table(
            {
                "patient_id": [f"P{i}" for i in range(rows)],
                "age": list(range(rows)),
                "outcome": [i % 2 == 0 for i in range(rows)],
            }
        ),
        path,
    )
    return path


@pytest.fixture
def agent_with_datasets(tmp_path: Path, pki: Pki) -> RunningAgent:
    data = tmp_path / "data"
    data.mkdir()
    onco = _cohort(data / "onco.parquet", 137)
    vanishing = _cohort(data / "vanishing.parquet", 50)
    config = write_config(
        tmp_path,
        pki,
        extra=f"""
[[datasets]]
id = "onco-2024"
path = "{onco}"
description = "Oncology cohort 2024"
columns = ["age", "outcome"]

[[datasets]]
id = "vanishing"
path = "{vanishing}"
""",
    )
    started = start_in_process(config)
    vanishing.unlink()
    yield RunningAgent(f"127.0.0.1:{started.port}", started.port, config, daemon=started)
    started.stop()


def test_get_info_reports_identity_version_key_and_time(running_agent: RunningAgent, pki: Pki) -> None:
    key = load_key_file(running_agent.config_path.parent / "identity.key")
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with running_agent.client(pki) as client:
        info = client.get_info()
    assert info.agent_id == "hospital-test"
    assert info.api_version == "edge_agent.v1"
    assert info.public_key == key.public_bytes
    assert info.public_key_fingerprint == key.fingerprint
    assert info.public_key_fingerprint.startswith("SHA256:")
    assert "datasets" in info.capabilities
    assert info.caller_identity == COORDINATOR_URI
    server_time = info.server_time.ToDatetime(tzinfo=dt.UTC)
    assert before <= server_time <= dt.datetime.now(dt.UTC)


def test_caller_identity_falls_back_to_common_name(running_agent: RunningAgent, pki: Pki) -> None:
    with running_agent.client(pki, who="cn-only") as client:
        assert client.get_info().caller_identity == "cn-only-coordinator"


def test_list_and_get_datasets_expose_only_allowed_columns(agent_with_datasets: RunningAgent, pki: Pki) -> None:
    with agent_with_datasets.client(pki) as client:
        datasets = {d.id: d for d in client.list_datasets()}
        single = client.get_dataset("onco-2024")
    assert set(datasets) == {"onco-2024", "vanishing"}
    onco = datasets["onco-2024"]
    assert onco == single
    assert onco.status == pb.DATASET_STATUS_AVAILABLE
    assert onco.format == pb.DATASET_FORMAT_PARQUET
    assert onco.description == "Oncology cohort 2024"
    assert [(c.name, c.arrow_type) for c in onco.columns] == [("age", "int64"), ("outcome", "bool")]
    # 137 rows are released only as the bucket [100, 200).
    assert (onco.row_count.lower, onco.row_count.upper) == (100, 200)


def test_vanished_dataset_is_unavailable_without_leaking_its_path(agent_with_datasets: RunningAgent, pki: Pki) -> None:
    with agent_with_datasets.client(pki) as client:
        dataset = client.get_dataset("vanishing")
    assert dataset.status == pb.DATASET_STATUS_UNAVAILABLE
    assert dataset.status_reason
    assert "/" not in dataset.status_reason
    assert "vanishing.parquet" not in dataset.status_reason
    assert not dataset.columns


def test_unknown_dataset_is_not_found(running_agent: RunningAgent, pki: Pki) -> None:
    with running_agent.client(pki) as client, pytest.raises(AgentRpcError) as failure:
        client.get_dataset("no-such-dataset")
    assert failure.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-dataset" in failure.value.details


def test_empty_dataset_id_is_invalid_argument(running_agent: RunningAgent, pki: Pki) -> None:
    with running_agent.client(pki) as client, pytest.raises(AgentRpcError) as failure:
        client.get_dataset("")
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_health_reports_serving(running_agent: RunningAgent, pki: Pki) -> None:
    with running_agent.client(pki) as client:
        assert client.health() == "SERVING"
        assert client.health("edge_agent.v1.Agent") == "SERVING"
        with pytest.raises(AgentRpcError) as failure:
            client.health("no.such.Service")
    assert failure.value.code == grpc.StatusCode.NOT_FOUND


def _secure_channel(agent: RunningAgent, pki: Pki, who: str | None) -> grpc.Channel:
    ca = pki.path("ca.crt").read_bytes()
    if who is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=pki.path(f"{who}.key").read_bytes(),
            certificate_chain=pki.path(f"{who}.crt").read_bytes(),
        )
    return grpc.secure_channel(agent.address, credentials, options=[("grpc.ssl_target_name_override", "localhost")])


def test_reflection_lists_the_services(running_agent: RunningAgent, pki: Pki) -> None:
    with _secure_channel(running_agent, pki, "coordinator") as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"edge_agent.v1.Agent", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services


@pytest.mark.parametrize("who", [None, "foreign", "expired"], ids=["no-client-cert", "other-ca", "expired"])
def test_connections_without_a_valid_client_certificate_are_refused(
    running_agent: RunningAgent, pki: Pki, who: str | None
) -> None:
    with _secure_channel(running_agent, pki, who) as channel:
        stub = pb_grpc.AgentStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.GetInfo(pb.GetInfoRequest(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_connections_are_refused(running_agent: RunningAgent) -> None:
    with grpc.insecure_channel(running_agent.address) as channel, pytest.raises(grpc.RpcError) as failure:
        pb_grpc.AgentStub(channel).GetInfo(pb.GetInfoRequest(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_distrusts_the_server_refuses_it(running_agent: RunningAgent, pki: Pki, tmp_path: Path) -> None:
    from agent.identity.certificates import CertificateAuthority

    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(CertificateAuthority.create("Not the agent's CA").cert_pem)
    credentials = ClientCredentials.from_files(other_ca, pki.path("coordinator.crt"), pki.path("coordinator.key"))
    client = AgentClient(running_agent.address, credentials, server_name="localhost", timeout=5)
    with client, pytest.raises(AgentRpcError) as failure:
        client.get_info()
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (lambda s: s.GetPackage(pb.GetPackageRequest(digest="sha256:00"), timeout=5), "INVALID_ARGUMENT"),
        (lambda s: s.GetBudget(pb.GetBudgetRequest(dataset_id="x"), timeout=5), "NOT_FOUND"),
        (lambda s: s.GetBudget(pb.GetBudgetRequest(dataset_id="../etc"), timeout=5), "INVALID_ARGUMENT"),
        (lambda s: s.GetDataset(pb.GetDatasetRequest(dataset_id="A" * 500), timeout=5), "INVALID_ARGUMENT"),
        (lambda s: s.CancelTask(pb.CancelTaskRequest(), timeout=5), "INVALID_ARGUMENT"),
        (lambda s: s.UploadPackage(iter([pb.UploadPackageRequest(chunk=b"x")]), timeout=5), "INVALID_ARGUMENT"),
        (lambda s: list(s.RunTask(iter([pb.RunTaskRequest(spec=pb.TaskSpec())]), timeout=5)), "INVALID_ARGUMENT"),
        (lambda s: list(s.RunTask(iter([]), timeout=5)), "INVALID_ARGUMENT"),
    ],
    ids=[
        "GetPackage",
        "GetBudget",
        "GetBudget-bad-id",
        "GetDataset-bad-id",
        "CancelTask",
        "UploadPackage",
        "RunTask-empty-spec",
        "RunTask-no-spec",
    ],
)
def test_malformed_requests_get_a_clear_status(
    running_agent: RunningAgent, pki: Pki, call: object, status: str
) -> None:
    with _secure_channel(running_agent, pki, "coordinator") as channel, pytest.raises(grpc.RpcError) as failure:
        call(pb_grpc.AgentStub(channel))  # type: ignore[operator]
    assert failure.value.code().name == status, failure.value.details()
    assert failure.value.details()


def test_transport_probe_counts_what_it_received(running_agent: RunningAgent, pki: Pki) -> None:
    chunks = [os.urandom(256 * 1024) for _ in range(8)]
    with running_agent.client(pki) as client:
        summary = client.probe_transport(chunks)
    assert summary.chunks_received == 8
    assert summary.bytes_received == 8 * 256 * 1024
    assert summary.seconds >= 0


def test_a_message_over_the_size_limit_is_refused_and_the_agent_keeps_serving(
    running_agent: RunningAgent, pki: Pki
) -> None:
    with _secure_channel(running_agent, pki, "coordinator") as channel:
        stub = pb_grpc.AgentStub(channel)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ProbeTransport(iter([pb.ProbeChunk(data=b"\0" * (17 * 1024 * 1024))]), timeout=10)
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.GetInfo(pb.GetInfoRequest(), timeout=5).agent_id == "hospital-test"


def test_client_deadline_is_honoured_on_a_stalled_stream(running_agent: RunningAgent, pki: Pki) -> None:
    release = threading.Event()

    def stalled() -> object:
        yield b"first"
        release.wait(10)

    with running_agent.client(pki) as client:
        with pytest.raises(AgentRpcError) as failure:
            client.probe_transport(stalled(), timeout=0.5)  # type: ignore[arg-type]
        release.set()
        assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The server is still healthy afterwards.
        assert client.get_info().agent_id == "hospital-test"


def test_two_agents_cannot_share_a_port(running_agent: RunningAgent, pki: Pki, tmp_path: Path) -> None:
    from agent.server.daemon import ListenError

    other = tmp_path / "second"
    other.mkdir()
    config = write_config(other, pki, listen=f"127.0.0.1:{running_agent.port}")
    with pytest.raises(ListenError, match=str(running_agent.port)):
        start_in_process(config)


@pytest.mark.parametrize(
    ("common_name", "extra_uris"),
    [(COORDINATOR_URI, ()), ("coordinator-eu-1", (COORDINATOR_URI, "spiffe://pharma.example/other"))],
    ids=["uri-in-cn", "two-san-uris"],
)
def test_a_certificate_that_could_impersonate_a_coordinator_is_refused(
    running_agent: RunningAgent, pki: Pki, tmp_path: Path, common_name: str, extra_uris: tuple[str, ...]
) -> None:
    """Signed by the trusted CA, but its identity is ambiguous: UNAUTHENTICATED, never the policy's coordinator."""
    from agent.identity.certificates import CertificateAuthority

    ca = CertificateAuthority.load(pki.path("ca.crt"), pki.path("ca.key"))
    ca.issue_client(common_name, extra_uris=extra_uris).write(tmp_path / "spoof.crt", tmp_path / "spoof.key")
    credentials = ClientCredentials.from_files(pki.path("ca.crt"), tmp_path / "spoof.crt", tmp_path / "spoof.key")
    with AgentClient(running_agent.address, credentials, server_name="localhost", timeout=5) as client:
        with pytest.raises(AgentRpcError) as failure:
            client.get_info()
        assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING"  # health carries no data and stays open to it
