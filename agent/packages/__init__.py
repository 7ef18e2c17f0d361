"""Signed packages (models, and analysis plans: agent.packages.plan): format, signatures, trust,
ONNX validation, store and review.

Public entry points (see ``docs/package-format.md``):

* :func:`verify_package` -> :class:`VerifiedPackage` or :class:`PackageRejected`;
* :class:`TrustStore` / :class:`TrustedKey` / :func:`parse_public_key`;
* :class:`PackageStore` (staged uploads, rollback protection, signed review decisions);
* :class:`PackageLimits`, :class:`RejectionCode`.

This package never imports grpc; ``RejectionCode.refusal`` says what the uploader is told
(agent.server.status maps it to a gRPC status).
"""

from agent.packages.decisions import Approval, Decision, DecisionKind, verify_decision
from agent.packages.errors import (
    DecisionError,
    PackageError,
    PackageInputError,
    PackageRejected,
    PackageStoreError,
    RejectionCode,
    UnknownPackageError,
)
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, TaskKind, parse_manifest
from agent.packages.store import PackageStatus, PackageStore, StagedUpload, StoredPackage
from agent.packages.trust import KeyStatus, TrustedKey, TrustStore, TrustStoreError, parse_public_key
from agent.packages.verification import IgnoredSignature, VerifiedPackage, package_digest, verify_package

__all__ = [
    "Approval",
    "Decision",
    "DecisionError",
    "DecisionKind",
    "IgnoredSignature",
    "KeyStatus",
    "Manifest",
    "PackageError",
    "PackageInputError",
    "PackageLimits",
    "PackageRejected",
    "PackageStatus",
    "PackageStore",
    "PackageStoreError",
    "RejectionCode",
    "StagedUpload",
    "StoredPackage",
    "TaskKind",
    "TrustStore",
    "TrustStoreError",
    "TrustedKey",
    "UnknownPackageError",
    "VerifiedPackage",
    "package_digest",
    "parse_manifest",
    "parse_public_key",
    "verify_decision",
    "verify_package",
]
