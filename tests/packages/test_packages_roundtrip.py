"""Round trips: build -> sign -> verify -> store -> review, with real ONNX graphs."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import numpy as np
import onnxruntime as ort
import pytest
from package_builders import NOW, good_package, new_key, trust_for

from agent.identity.agent_key import AgentKey
from agent.packages import (
    DecisionError,
    PackageLimits,
    PackageRejected,
    PackageStatus,
    PackageStore,
    RejectionCode,
    TrustStore,
    UnknownPackageError,
    VerifiedPackage,
    verify_decision,
    verify_package,
)
from agent.packages.decisions import DecisionKind
from agent.packages.inspection import inspect_package
from agent.refusal import Refusal
from edge_sponsor.publisher.packaging import sign_package
from edge_sponsor.publisher.zoo import build_logistic_regression, build_mlp_classifier, build_weibull_survival

LIMITS = PackageLimits()
MODELS = {
    "logistic": (lambda: build_logistic_regression(4), ("outcome",)),
    "mlp": (lambda: build_mlp_classifier(4, (8, 8), 3), ("outcome",)),
    "weibull": (lambda: build_weibull_survival(4), ("time", "event")),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("require_approval", [True, False])
def test_build_sign_verify_store_review(
    kind: str,
    require_approval: bool,
    publisher_key: AgentKey,
    reviewer_key: AgentKey,
    trust: TrustStore,
    store: PackageStore,
) -> None:
    factory, labels = MODELS[kind]
    model = factory()
    unsigned = good_package(None, model=model, labels=labels)
    with pytest.raises(PackageRejected) as refused:
        verify_package(unsigned, trust, LIMITS, NOW)
    assert refused.value.code is RejectionCode.UNSIGNED

    archive = sign_package(unsigned, publisher_key)
    verified = verify_package(archive, trust, LIMITS, NOW)
    assert verified.signer_key_ids == (publisher_key.fingerprint,)
    assert verified.manifest.num_features == 4
    assert [p.name for p in verified.manifest.parameters] == [p.name for p in model.parameters]
    assert verified.graphs["grad"] == model.grad_graph.SerializeToString()
    assert inspect_package(archive).digest == verified.digest

    # The verified graph bytes load and run in onnxruntime.
    session = ort.InferenceSession(verified.graphs["grad"], providers=["CPUExecutionProvider"])
    feeds = {p.name: np.zeros(p.shape, np.float32) for p in model.parameters}
    feeds["x"] = np.ones(4, np.float32)
    feeds["y"] = np.asarray(
        1 if kind == "mlp" else ([2.0, 1.0] if kind == "weibull" else 1.0),
        dtype=np.int64 if kind == "mlp" else np.float32,
    )
    outputs = session.run(None, feeds)
    assert [o.shape for o in outputs[:-1]] == [p.shape for p in model.parameters]

    stored = store.add(archive, trust, LIMITS, NOW, require_approval=require_approval)
    expected = PackageStatus.PENDING if require_approval else PackageStatus.APPROVED
    assert stored.status is expected
    assert stored.digest == verified.digest
    assert [p.digest for p in store.list()] == [verified.digest]
    assert [p.digest for p in store.pending()] == ([verified.digest] if require_approval else [])
    assert store.read_bytes(verified.digest) == archive
    assert store.open_verified(verified.digest, trust, LIMITS, NOW).manifest == verified.manifest

    if require_approval:
        approval = store.approve(verified.digest, reviewer_key, "Dr. Erin Ward", NOW + timedelta(hours=1))
        verify_decision(approval)
        verify_decision(approval, reviewer_key.public_key)
        with pytest.raises(DecisionError):
            verify_decision(approval, new_key().public_key)
        forged = dataclasses.replace(approval, decision=DecisionKind.REJECT)
        with pytest.raises(DecisionError):
            verify_decision(forged)
        again = store.get(verified.digest)
        assert again is not None and again.status is PackageStatus.APPROVED
        assert again.decision == approval
        assert store.pending() == []
        with pytest.raises(DecisionError):
            store.approve(verified.digest, reviewer_key, "Dr. Erin Ward", NOW)


def test_commit_is_idempotent_and_rollback_protected(
    publisher_key: AgentKey, reviewer_key: AgentKey, trust: TrustStore, store: PackageStore
) -> None:
    v2 = good_package(publisher_key, version="2.0.0")
    first = store.add(v2, trust, LIMITS, NOW, require_approval=True)
    assert store.add(v2, trust, LIMITS, NOW, require_approval=True).digest == first.digest
    assert len(store.list()) == 1

    for older in ("1.9.9", "2.0.0-rc.1"):
        with pytest.raises(PackageRejected) as refused:
            store.add(good_package(publisher_key, version=older), trust, LIMITS, NOW, require_approval=True)
        assert refused.value.code is RejectionCode.ROLLBACK
        assert refused.value.code.refusal is Refusal.PRECONDITION

    # Same version, different bytes (here: build metadata only differs in precedence-neutral ways).
    with pytest.raises(PackageRejected) as conflict:
        store.add(good_package(publisher_key, version="2.0.0+rebuild"), trust, LIMITS, NOW, require_approval=True)
    assert conflict.value.code is RejectionCode.VERSION_CONFLICT

    newer = store.add(good_package(publisher_key, version="2.1.0"), trust, LIMITS, NOW, require_approval=False)
    assert newer.status is PackageStatus.APPROVED

    # A rejected version no longer blocks lower ones; the rejection is signed and kept.
    store.reject(newer.digest, "withdrawn: wrong cohort", reviewer_key, "Dr. Erin Ward", NOW)
    store.reject(first.digest, "superseded", reviewer_key, "Dr. Erin Ward", NOW)
    lower = store.add(good_package(publisher_key, version="1.5.0"), trust, LIMITS, NOW, require_approval=True)
    assert lower.status is PackageStatus.PENDING
    rejected = store.get(newer.digest)
    assert rejected is not None and rejected.status is PackageStatus.REJECTED
    assert rejected.decision is not None and rejected.decision.reason == "withdrawn: wrong cohort"
    verify_decision(rejected.decision, reviewer_key.public_key)
    with pytest.raises(UnknownPackageError):
        store.approve("sha256:" + "0" * 64, reviewer_key, "Dr. Erin Ward", NOW)
    with pytest.raises(DecisionError):
        store.reject(lower.digest, "  ", reviewer_key, "Dr. Erin Ward", NOW)


def test_revocation_after_upload_is_seen_by_open_verified(publisher_key: AgentKey, store: PackageStore) -> None:
    archive = good_package(publisher_key)
    stored = store.add(archive, trust_for(publisher_key), LIMITS, NOW, require_approval=False)
    with pytest.raises(PackageRejected) as refused:
        store.open_verified(stored.digest, trust_for(publisher_key, revoked=True), LIMITS, NOW)
    assert refused.value.code is RejectionCode.KEY_REVOKED


def test_several_signatures_unknown_ones_are_listed(publisher_key: AgentKey, trust: TrustStore) -> None:
    stranger = new_key()
    archive = sign_package(sign_package(good_package(None), stranger), publisher_key)
    verified = verify_package(archive, trust, LIMITS, NOW)
    assert verified.signer_key_ids == (publisher_key.fingerprint,)
    assert [(s.key_id, s.reason) for s in verified.ignored_signatures] == [(stranger.fingerprint, "unknown")]
    # Signing again with the same key replaces its signature rather than adding one.
    assert len(inspect_package(sign_package(archive, publisher_key)).signature_key_ids) == 2


def test_key_namespaces_bind_publishers(publisher_key: AgentKey) -> None:
    archive = good_package(publisher_key)
    verify_package(archive, trust_for(publisher_key, namespaces={"acme"}), LIMITS, NOW)
    with pytest.raises(PackageRejected) as refused:
        verify_package(archive, trust_for(publisher_key, namespaces={"globex"}), LIMITS, NOW)
    assert refused.value.code is RejectionCode.KEY_NOT_AUTHORISED


def test_staging_and_orphans_are_swept_on_open(publisher_key: AgentKey, trust: TrustStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "packages"
    store = PackageStore(root)
    live = store.begin_upload(10, None)
    live.write(b"0123")
    (root / "staging" / "upload-crashed.part").write_bytes(b"half")
    (root / "blobs" / "sha256" / ("ab" * 32)).write_bytes(b"renamed but never indexed")
    PackageStore(root)  # e.g. the CLI opening the store while the daemon uploads
    assert sorted(p.name for p in (root / "staging").iterdir()) == [live._path.name]
    assert list((root / "blobs" / "sha256").iterdir()) == []
    live.abort()
    assert list((root / "staging").iterdir()) == []


def test_policy_check_runs_before_anything_is_stored(
    publisher_key: AgentKey, trust: TrustStore, store: PackageStore
) -> None:
    class NameNotAllowedError(Exception):
        pass

    def only_globex(package: VerifiedPackage) -> None:
        if not package.manifest.name.startswith("globex/"):
            raise NameNotAllowedError(package.manifest.name)

    with pytest.raises(NameNotAllowedError):
        store.add(good_package(publisher_key), trust, LIMITS, NOW, require_approval=True, check=only_globex)
    assert store.list() == []
    assert list((store.root / "blobs" / "sha256").iterdir()) == []
    assert list((store.root / "staging").iterdir()) == []
