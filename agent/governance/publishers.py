"""The policy's [[publishers]] as the trust store the package verifier uses, and its
[packages] allowed_names as the check every stored package passes."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.governance.decisions import package_name_allowed
from agent.governance.model import Policy
from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.trust import TrustedKey, TrustStore
from agent.packages.verification import VerifiedPackage


def trust_store(policy: Policy) -> TrustStore:
    return TrustStore(
        TrustedKey.create(
            Ed25519PublicKey.from_public_bytes(rule.public_key),
            rule.name,
            not_after=rule.expires,
            revoked=rule.revoked,
            namespaces=rule.namespaces,
        )
        for rule in policy.publishers
    )


def check_package_name(verified: VerifiedPackage, policy: Policy) -> None:
    """PackageRejected (name_not_allowed) unless the policy allows the package's name."""
    decision = package_name_allowed(verified.manifest.name, policy)
    if not decision.allowed:
        raise PackageRejected(RejectionCode.NAME_NOT_ALLOWED, decision.reason)
