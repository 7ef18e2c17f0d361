"""Packages over the wire: upload, list and get through a real agent with mutual TLS.

The verifier's attack catalogue (test_packages_attacks.py) is replayed here over
gRPC: each attack must come back with its documented status and code, leave
nothing in the store, and be audited.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from package_builders import assert_store_empty, good_package, new_key, trust_for
from test_packages_attacks import ATTACKS

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.identity.agent_key import AgentKey, generate_key_file
from agent.packages import PackageLimits, PackageStore, RejectionCode
from agent.server.status import status_code
from edge_sponsor.coordinator.client import AgentClient, AgentRpcError
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config

# Attacks that need no special trust store or limits replay as they are.
WIRE_ATTACKS = sorted(
    name for name, attack in ATTACKS.items() if attack.trust is trust_for and attack.limits == PackageLimits()
)


def policy_text(publisher: AgentKey, *, require_approval: bool = True, publisher_extra: str = "") -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["*"]
task_kinds = ["dp_gradient"]

[[coordinators]]
identity = "cn-only-coordinator"
datasets = ["*"]

[[datasets]]
id = "*"
epsilon_budget = 5.0

[[publishers]]
name = "Acme Pharma"
public_key = "{key}"
{publisher_extra}

[packages]
require_approval = {str(require_approval).lower()}
allowed_names = ["acme/cardio-*"]
"""


@dataclass
class Agent:
    directory: Path
    process: InProcessAgent
    address: str

    @property
    def store(self) -> PackageStore:
        return PackageStore(self.directory / "state" / "packages")

    def client(self, pki: Pki, who: str = "coordinator") -> AgentClient:
        return AgentClient(self.address, pki.credentials(who), server_name="localhost", timeout=30)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.directory / "state" / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["kind"] == kind]


def start(directory: Path, pki: Pki, policy: str) -> Agent:
    directory.mkdir(parents=True, exist_ok=True)
    config = write_config(directory, pki, policy=policy)
    process = start_in_process(config)
    return Agent(directory, process, f"127.0.0.1:{process.port}")


@pytest.fixture(scope="module")
def publisher() -> AgentKey:
    return new_key()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory: pytest.TempPathFactory, pki: Pki, publisher: AgentKey) -> Iterator[Agent]:
    agent = start(tmp_path_factory.mktemp("rpc-agent"), pki, policy_text(publisher))
    yield agent
    agent.process.stop()


def code_of(exc: pytest.ExceptionInfo[AgentRpcError]) -> tuple[grpc.StatusCode, str]:
    return exc.value.code, exc.value.details


# ---------------------------------------------------------------- round trip


def test_build_sign_upload_approve_round_trip(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    reviewer = tmp_path / "reviewer.key"
    listed = base64.b64encode(generate_key_file(reviewer).public_bytes).decode()
    reviewers = f'[[reviewers]]\nname = "Compliance"\npublic_key = "{listed}"\n'
    agent = start(tmp_path / "agent", pki, policy_text(publisher, publisher_extra=reviewers))
    try:
        archive = good_package(publisher)
        with agent.client(pki) as client:
            uploaded = client.upload_package(archive, chunk_bytes=4096)
            assert uploaded.digest == "sha256:" + hashlib.sha256(archive).hexdigest()
            assert uploaded.status == pb.PACKAGE_STATUS_PENDING
            assert uploaded.name == "acme/cardio-risk" and uploaded.version == "1.0.0"
            assert [p.name for p in uploaded.parameters] and all(p.byte_length > 0 for p in uploaded.parameters)
            # The same bytes again: idempotent, still one package.
            assert client.upload_package(archive).digest == uploaded.digest
            assert [p.digest for p in client.list_packages()] == [uploaded.digest]

            env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
            approved = subprocess.run(
                [sys.executable, "-m", "agent", "package", "approve", uploaded.digest, "--config",
                 str(agent.directory / "agent.toml"), "--reviewer-key", str(reviewer), "--reviewer", "Dr. Compliance"],
                capture_output=True, text=True, env=env, timeout=60,
            )
            assert approved.returncode == 0, approved.stderr
            fetched = client.get_package(uploaded.digest)
            assert fetched.status == pb.PACKAGE_STATUS_APPROVED
            assert "Dr. Compliance" in fetched.status_reason
        uploads = agent.audit("package.uploaded")
        assert (uploads[0]["package_digest"], uploads[0]["package_status"], uploads[0]["coordinator"]) == (
            uploaded.digest, "pending", COORDINATOR_URI
        )
        assert [e["package_digest"] for e in agent.audit("package.approved")] == [uploaded.digest]
    finally:
        agent.process.stop()


def test_policy_without_review_stores_approved(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    agent = start(tmp_path, pki, policy_text(publisher, require_approval=False))
    try:
        with agent.client(pki) as client:
            assert client.upload_package(good_package(publisher)).status == pb.PACKAGE_STATUS_APPROVED
    finally:
        agent.process.stop()


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("name", WIRE_ATTACKS)
def test_attack_over_grpc_is_refused_audited_and_leaves_nothing(
    name: str, shared_agent: Agent, pki: Pki, publisher: AgentKey
) -> None:
    attack = ATTACKS[name]
    with shared_agent.client(pki) as client, pytest.raises(AgentRpcError) as refused:
        client.upload_package(attack.build(publisher))
    status, details = code_of(refused)
    assert status == status_code(attack.code.refusal)
    assert details.startswith(f"{attack.code.value}: ")
    assert str(shared_agent.directory) not in details and "/tmp" not in details  # no agent paths leak
    assert_store_empty(shared_agent.store)
    assert shared_agent.audit("package.refused")[-1]["rule"] == attack.code.value


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ("expires = 2020-01-01", RejectionCode.KEY_EXPIRED),
        ("revoked = true", RejectionCode.KEY_REVOKED),
        ('namespaces = ["someone-else"]', RejectionCode.KEY_NOT_AUTHORISED),
    ],
)
def test_publisher_key_state_comes_from_policy(
    extra: str, code: RejectionCode, tmp_path: Path, pki: Pki, publisher: AgentKey
) -> None:
    agent = start(tmp_path, pki, policy_text(publisher, publisher_extra=extra))
    try:
        with agent.client(pki) as client, pytest.raises(AgentRpcError) as refused:
            client.upload_package(good_package(publisher))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.details.startswith(code.value)
        assert_store_empty(agent.store)
    finally:
        agent.process.stop()


def test_name_outside_allowed_names_is_refused(shared_agent: Agent, pki: Pki, publisher: AgentKey) -> None:
    from package_builders import manifest_and_graphs

    from edge_sponsor.publisher.packaging import assemble_package

    manifest, graphs = manifest_and_graphs(name="acme/oncology-model")
    with shared_agent.client(pki) as client, pytest.raises(AgentRpcError) as refused:
        client.upload_package(assemble_package(manifest, graphs, [publisher]))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert refused.value.details.startswith("name_not_allowed: ")
    assert_store_empty(shared_agent.store)


def test_lower_version_than_accepted_is_refused(tmp_path: Path, pki: Pki, publisher: AgentKey) -> None:
    agent = start(tmp_path, pki, policy_text(publisher, require_approval=False))
    try:
        with agent.client(pki) as client:
            client.upload_package(good_package(publisher, version="2.0.0"))
            with pytest.raises(AgentRpcError) as refused:
                client.upload_package(good_package(publisher, version="1.9.0"))
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details.startswith("rollback: ")
        assert [p.version for p in agent.store.list()] == ["2.0.0"]
    finally:
        agent.process.stop()


def test_coordinator_without_task_kinds_may_not_upload(shared_agent: Agent, pki: Pki, publisher: AgentKey) -> None:
    with shared_agent.client(pki, "cn-only") as client, pytest.raises(AgentRpcError) as refused:
        client.upload_package(good_package(publisher))
    assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
    denial = [e for e in shared_agent.audit("rpc.decision") if e["method"] == "UploadPackage" and not e["allowed"]]
    assert denial[-1]["rule"] == "coordinator.no_tasks"
    assert_store_empty(shared_agent.store)


# ---------------------------------------------------------------- malformed streams


def raw_upload(agent: Agent, pki: Pki, messages: list[pb.UploadPackageRequest]) -> grpc.RpcError:
    credentials = pki.credentials()
    channel = grpc.secure_channel(
        agent.address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    try:
        pb_grpc.AgentStub(channel).UploadPackage(iter(messages), timeout=30)
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()
    raise AssertionError("the upload was accepted")


def header_for(archive: bytes, size: int | None = None, sha: bytes | None = None) -> pb.UploadPackageRequest:
    return pb.UploadPackageRequest(
        header=pb.PackageUploadHeader(
            size_bytes=len(archive) if size is None else size,
            sha256=hashlib.sha256(archive).digest() if sha is None else sha,
        )
    )


def test_malformed_upload_streams(shared_agent: Agent, pki: Pki, publisher: AgentKey) -> None:
    archive = good_package(publisher)
    chunk = pb.UploadPackageRequest(chunk=archive)
    cases: list[tuple[list[pb.UploadPackageRequest], grpc.StatusCode, str]] = [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "the first message of an upload must be its header"),
        ([chunk], grpc.StatusCode.INVALID_ARGUMENT, "the first message of an upload must be its header"),
        ([header_for(archive), chunk, header_for(archive)], grpc.StatusCode.INVALID_ARGUMENT, "only chunks"),
        ([header_for(archive, sha=b"short"), chunk], grpc.StatusCode.INVALID_ARGUMENT, "header.sha256"),
        ([header_for(archive, size=0)], grpc.StatusCode.INVALID_ARGUMENT, "header.size_bytes"),
        ([header_for(archive, size=10**12), chunk], grpc.StatusCode.INVALID_ARGUMENT, "archive_too_large"),
        ([header_for(archive, size=len(archive) - 1), chunk], grpc.StatusCode.INVALID_ARGUMENT,
         "upload_exceeds_declared_size"),
        ([header_for(archive), pb.UploadPackageRequest(chunk=archive[:100])], grpc.StatusCode.INVALID_ARGUMENT,
         "upload_truncated"),
        ([header_for(archive, sha=hashlib.sha256(b"other").digest()), chunk], grpc.StatusCode.INVALID_ARGUMENT,
         "upload_digest_mismatch"),
    ]
    for messages, status, text in cases:
        error = raw_upload(shared_agent, pki, messages)
        assert isinstance(error, grpc.Call)
        assert error.code() == status, (text, error.details())
        assert text in (error.details() or ""), error.details()
        assert_store_empty(shared_agent.store)


def test_client_going_away_mid_upload_leaves_nothing(shared_agent: Agent, pki: Pki, publisher: AgentKey) -> None:
    archive = good_package(publisher)
    credentials = pki.credentials()
    channel = grpc.secure_channel(
        shared_agent.address,
        grpc.ssl_channel_credentials(credentials.ca_cert, credentials.key, credentials.cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )

    def messages() -> Iterator[pb.UploadPackageRequest]:
        yield header_for(archive)
        yield pb.UploadPackageRequest(chunk=archive[:1000])
        raise RuntimeError("the coordinator crashed")  # grpc cancels the call

    with pytest.raises(grpc.RpcError):
        pb_grpc.AgentStub(channel).UploadPackage(messages(), timeout=30)
    channel.close()
    # The handler notices the cancellation asynchronously.
    import time

    deadline = time.monotonic() + 10
    while any((shared_agent.store.root / "staging").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_store_empty(shared_agent.store)


def test_get_package_errors(shared_agent: Agent, pki: Pki) -> None:
    with shared_agent.client(pki) as client:
        with pytest.raises(AgentRpcError) as bad:
            client.get_package("md5:abc")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(AgentRpcError) as missing:
            client.get_package("sha256:" + "0" * 64)
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
