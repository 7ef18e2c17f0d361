"""Approvals are reviewers' signatures checked when a task runs, not the store's status column.

Each attack is performed against a real `edge-agent serve` process (mTLS, worker
processes, SQLite ledger and package store, signed audit log): the attacker writes
the package store's SQLite directly, as anyone who can write the state directory
can. The defended outcome: RunTask is refused with FAILED_PRECONDITION and the rule
`package.approval_missing` (or `package.rejected`), nothing is charged, and
`task.refused` is audited. A listed reviewer's approval runs, and is audited the
first time the agent honours it.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from package_builders import NOW, good_package, new_key, trust_for

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.api.edge_agent.v1 import agent_pb2_grpc as pb_grpc
from agent.governance.approvals import MISSING_RULE, REJECTED_RULE, Review, review
from agent.governance.model import ReviewerRule
from agent.identity.agent_key import AgentKey, generate_key_file, load_key_file
from agent.packages import PackageLimits, PackageStatus, PackageStore
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.tasks import run_task
from tests.conftest import Pki, RunningAgent, spawn_agent, stop_agent
from tests.tasks.test_run_task_rpc import PARAMETERS, cohort_config, secure_channel

REVIEWER = "Dr. Compliance"


@dataclass
class Hospital:
    """A spawned agent, its files, the listed reviewer's key file and an unlisted one."""

    directory: Path
    agent: RunningAgent
    pki: Pki
    publisher: AgentKey
    reviewer_key: Path
    stranger_key: Path
    channel: grpc.Channel

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def store(self) -> PackageStore:
        return PackageStore(self.state / "packages")

    def upload(self, version: str) -> str:
        with AgentClient(self.agent.address, self.pki.credentials(), server_name="localhost", timeout=30) as client:
            return client.upload_package(good_package(self.publisher, version=version)).digest

    def run(self, digest: str) -> float:
        """Runs a dp_gradient task; the ε it was charged."""
        hyperparameters = pb.DPHyperparameters(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5)
        spec = pb.TaskSpec(kind=pb.TASK_KIND_DP_GRADIENT, package_digest=digest, dataset_id="cohort",
                           hyperparameters=hyperparameters, purpose="research")
        return run_task(pb_grpc.AgentStub(self.channel), spec, PARAMETERS, timeout=60).epsilon_charged

    def refused(self, digest: str) -> tuple[grpc.StatusCode, str]:
        """Runs a task that must be refused; its status and message. Nothing may be charged."""
        before = self.budget()
        with pytest.raises(grpc.RpcError) as refusal:
            self.run(digest)
        assert self.budget() == before
        return refusal.value.code(), refusal.value.details() or ""

    def budget(self) -> pb.Budget:
        return pb_grpc.AgentStub(self.channel).GetBudget(pb.GetBudgetRequest(dataset_id="cohort"), timeout=30)

    def review(self, command: str, digest: str, key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        """`edge-agent package approve|reject` as the compliance officer runs it."""
        env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
        return subprocess.run(
            [sys.executable, "-m", "agent", "package", command, digest, "--config", str(self.directory / "agent.toml"),
             "--reviewer-key", str(key), "--reviewer", REVIEWER, *extra],
            capture_output=True, text=True, env=env, timeout=60,
        )

    def audit(self, kind: str, digest: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for path in sorted((self.state / "audit").glob("*.jsonl")):
            entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in entries if e["kind"] == kind and e.get("package_digest") == digest]

    def sql(self, statement: str, *values: object) -> None:
        """The attacker: writes the package store's SQLite directly."""
        with sqlite3.connect(self.state / "packages" / "index.sqlite") as conn:
            conn.execute(statement, values)


def prepare(directory: Path, pki: Pki, publisher: AgentKey) -> tuple[Path, Path]:
    """The agent of tests/tasks/test_run_task_rpc.py (dataset "cohort"), with approval required and
    one listed reviewer; the listed reviewer's key file, then an unlisted one."""
    directory.mkdir(parents=True, exist_ok=True)
    reviewer_key, stranger_key = directory / "reviewer.key", directory / "stranger.key"
    reviewer = generate_key_file(reviewer_key)
    generate_key_file(stranger_key)
    cohort_config(directory, pki, publisher)
    policy = directory / "policy.toml"
    text = policy.read_text()
    assert "require_approval = false" in text
    listed = base64.b64encode(reviewer.public_bytes).decode()
    policy.write_text(
        text.replace("require_approval = false", "require_approval = true")
        + f'\n[[reviewers]]\nname = "{REVIEWER}"\npublic_key = "{listed}"\n'
    )
    (directory / "state").mkdir(exist_ok=True)
    return reviewer_key, stranger_key


def serve(directory: Path, pki: Pki, publisher: AgentKey, keys: tuple[Path, Path]) -> Hospital:
    agent = spawn_agent(["--config", str(directory / "agent.toml")], directory)
    return Hospital(directory, agent, pki, publisher, *keys, secure_channel(pki, agent.address))


def close(hospital: Hospital) -> None:
    hospital.channel.close()
    stop_agent(hospital.agent)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Hospital]:
    directory = tmp_path_factory.mktemp("approvals")
    publisher = new_key()
    started = serve(directory, pki, publisher, prepare(directory, pki, publisher))
    yield started
    close(started)


# Every test uploads its own version of the package (versions only go up: rollback protection).
_VERSIONS = (f"1.{minor}.0" for minor in itertools.count())


def pending_package(hospital: Hospital) -> str:
    digest = hospital.upload(next(_VERSIONS))
    stored = hospital.store.get(digest)
    assert stored is not None and stored.status is PackageStatus.PENDING
    return digest


def assert_missing_approval(hospital: Hospital, digest: str) -> None:
    code, message = hospital.refused(digest)
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert "awaits approval by a reviewer" in message
    [refused] = hospital.audit("task.refused", digest)[-1:]
    assert (refused["rule"], refused["outcome"]) == ("package.approval_missing", "precondition")


def test_status_update_does_not_approve(hospital: Hospital) -> None:
    digest = pending_package(hospital)
    hospital.sql("UPDATE packages SET status = 'approved' WHERE digest = ?", digest)
    assert_missing_approval(hospital, digest)
    # The column is a cache that follows the signatures: back to pending, for listings too.
    stored = hospital.store.get(digest)
    assert stored is not None and stored.status is PackageStatus.PENDING
    assert hospital.audit("package.approval_honoured", digest) == []


def test_approval_by_a_key_the_policy_does_not_list_is_refused(hospital: Hospital) -> None:
    digest = pending_package(hospital)
    # The command refuses an unlisted key, and records nothing.
    result = hospital.review("approve", digest, hospital.stranger_key)
    assert result.returncode == 1 and "is not listed in the policy" in result.stderr, result.stderr
    assert hospital.store.decisions(digest) == []
    # Written to the store without the command (a valid signature, by an unlisted key): ignored.
    hospital.store.approve(digest, load_key_file(hospital.stranger_key), "Mallory", datetime.now(UTC))
    assert_missing_approval(hospital, digest)


def test_forged_decision_is_refused(hospital: Hospital) -> None:
    digest = pending_package(hospital)
    listed = load_key_file(hospital.reviewer_key)
    # A decision that claims the listed reviewer's key, signed by another key.
    signed = hospital.store.approve(digest, load_key_file(hospital.stranger_key), REVIEWER, datetime.now(UTC))
    forged = dataclasses.replace(signed, reviewer_public_key=listed.public_bytes, reviewer_key_id=listed.fingerprint)
    hospital.sql("DELETE FROM decisions WHERE digest = ?", digest)
    hospital.sql("INSERT INTO decisions (digest, decision) VALUES (?, ?)", digest, json.dumps(forged.to_json()))
    assert_missing_approval(hospital, digest)


def test_listed_reviewer_approval_runs_and_is_audited_once(hospital: Hospital) -> None:
    digest = pending_package(hospital)
    approved = hospital.review("approve", digest, hospital.reviewer_key)
    assert approved.returncode == 0, approved.stderr
    charged = hospital.budget().tasks_charged
    assert hospital.run(digest) > 0
    assert hospital.run(digest) > 0
    assert hospital.budget().tasks_charged == charged + 2
    [honoured] = hospital.audit("package.approval_honoured", digest)
    reviewer = load_key_file(hospital.reviewer_key)
    assert (honoured["reviewer"], honoured["reviewer_key_id"]) == (REVIEWER, reviewer.fingerprint)
    assert len(hospital.audit("package.approved", digest)) == 1


def test_rejection_by_a_listed_reviewer_wins(hospital: Hospital) -> None:
    digest = pending_package(hospital)
    assert hospital.review("approve", digest, hospital.reviewer_key).returncode == 0
    rejected = hospital.review("reject", digest, hospital.reviewer_key, "--reason", "withdrawn")
    assert rejected.returncode == 0, rejected.stderr
    # The attacker marks it approved again; the signed approval is still stored, the rejection wins.
    hospital.sql("UPDATE packages SET status = 'approved' WHERE digest = ?", digest)
    code, message = hospital.refused(digest)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "was rejected" in message
    assert hospital.audit("task.refused", digest)[-1]["rule"] == "package.rejected"


def test_upgrade_keeps_only_approvals_a_listed_reviewer_signed(tmp_path: Path, pki: Pki) -> None:
    """A store written before reviewers were listed (schema 1): its approval by a key the policy
    does not list returns to pending; one signed by a listed reviewer keeps working, and is
    audited the first time it is honoured (it was never audited: as if restored from a backup)."""
    publisher = new_key()
    keys = prepare(tmp_path, pki, publisher)
    store = PackageStore(tmp_path / "state" / "packages")
    trust = trust_for(publisher)
    unlisted = store.add(good_package(publisher, version="1.0.0"), trust, PackageLimits(), NOW, require_approval=True)
    listed = store.add(good_package(publisher, version="1.1.0"), trust, PackageLimits(), NOW, require_approval=True)
    store.approve(unlisted.digest, load_key_file(keys[1]), "Former Officer", NOW)
    store.approve(listed.digest, load_key_file(keys[0]), REVIEWER, NOW)
    with sqlite3.connect(tmp_path / "state" / "packages" / "index.sqlite") as conn:
        conn.execute("DROP TABLE honoured")
        conn.execute("PRAGMA user_version = 1")

    hospital = serve(tmp_path, pki, publisher, keys)
    try:
        assert hospital.run(listed.digest) > 0
        assert len(hospital.audit("package.approval_honoured", listed.digest)) == 1
        assert_missing_approval(hospital, unlisted.digest)
        env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
        pending = subprocess.run(
            [sys.executable, "-m", "agent", "package", "pending", "--json", "--config", str(tmp_path / "agent.toml")],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )
        [shown] = json.loads(pending.stdout)
        assert shown["digest"] == unlisted.digest and shown["status"] == "pending"
        assert "not list" in shown["ignored_decisions"][0]
        assert hospital.review("approve", unlisted.digest, hospital.reviewer_key).returncode == 0
        assert hospital.run(unlisted.digest) > 0
    finally:
        close(hospital)


def test_review_counts_only_valid_decisions_by_listed_keys_and_rejection_wins(
    store: PackageStore, publisher_key: AgentKey, reviewer_key: AgentKey
) -> None:
    """The rules of agent.governance.approvals.review, on real signatures in a real store."""
    listed = (ReviewerRule(REVIEWER, reviewer_key.fingerprint, reviewer_key.public_bytes),)
    first, second = (
        store.add(good_package(publisher_key, version=v), trust_for(publisher_key), PackageLimits(), NOW, True)
        for v in ("1.0.0", "1.1.0")
    )

    def review_of(digest: str) -> Review:
        stored = store.get(digest)
        assert stored is not None
        return review(stored, store.decisions(digest), listed)

    assert (review_of(first.digest).status, review_of(first.digest).rule) == (PackageStatus.PENDING, MISSING_RULE)
    approval = store.approve(first.digest, reviewer_key, REVIEWER, NOW)
    assert review_of(first.digest).approval == approval
    assert review_of(first.digest).ignored == ()
    # Another package's approval, copied into this package's decisions, does not count.
    store.cache_status(second.digest, PackageStatus.APPROVED)
    with sqlite3.connect(store.root / "index.sqlite") as conn:
        conn.execute(
            "INSERT INTO decisions (digest, decision) VALUES (?, ?)", (second.digest, json.dumps(approval.to_json()))
        )
    copied = review_of(second.digest)
    assert copied.status is PackageStatus.PENDING and "about another package" in copied.ignored[0]
    # Nobody is listed: the same valid approval no longer counts.
    stored = store.get(first.digest)
    assert stored is not None and review(stored, store.decisions(first.digest), ()).approval is None
    # A listed reviewer's rejection wins over the earlier approval, whatever the status column says.
    store.reject(first.digest, "withdrawn", reviewer_key, REVIEWER, NOW)
    with sqlite3.connect(store.root / "index.sqlite") as conn:
        conn.execute("UPDATE packages SET status = 'approved' WHERE digest = ?", (first.digest,))
    assert (review_of(first.digest).status, review_of(first.digest).rule) == (PackageStatus.REJECTED, REJECTED_RULE)
    # And the cache never undoes a rejection.
    store.cache_status(first.digest, PackageStatus.REJECTED)
    store.cache_status(first.digest, PackageStatus.APPROVED)
    stored = store.get(first.digest)
    assert stored is not None and stored.status is PackageStatus.REJECTED
