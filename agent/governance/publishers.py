"""The policy's [[publishers]] as the trust store the package verifier uses."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.governance.model import Policy
from agent.packages.trust import TrustedKey, TrustStore


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
