"""Signed review decisions: a compliance officer approves or rejects a package.

A decision signs, with the reviewer's Ed25519 key, the statement::

    b"edge-agent package decision v1\\n" + canonical_json({
        "decision": "approve" | "reject", "digest": "sha256:<hex>", "reason": "...",
        "reviewer": "<name>", "reviewer_key_id": "SHA256:...", "time": "<UTC ISO 8601>"})

The decision keeps the reviewer's raw public key, so it can be checked later for
integrity alone (``verify_decision(d)``) or against a known reviewer key
(``verify_decision(d, public_key)``), which is what proves who decided.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity.agent_key import AgentKey, fingerprint
from agent.packages.canonical import canonical_json
from agent.packages.errors import DecisionError

STATEMENT_PREFIX = b"edge-agent package decision v1\n"
MAX_REASON = 2000
MAX_REVIEWER = 200


class DecisionKind(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class Decision:
    digest: str
    decision: DecisionKind
    reviewer: str
    reviewer_key_id: str
    reviewer_public_key: bytes
    time: str
    reason: str
    signature: bytes

    def statement(self) -> bytes:
        return decision_statement(
            self.digest,
            decision=self.decision,
            reviewer=self.reviewer,
            reviewer_key_id=self.reviewer_key_id,
            time=self.time,
            reason=self.reason,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "decision": self.decision.value,
            "reviewer": self.reviewer,
            "reviewer_key_id": self.reviewer_key_id,
            "reviewer_public_key": base64.b64encode(self.reviewer_public_key).decode("ascii"),
            "time": self.time,
            "reason": self.reason,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Decision:
        try:
            return cls(
                digest=str(value["digest"]),
                decision=DecisionKind(value["decision"]),
                reviewer=str(value["reviewer"]),
                reviewer_key_id=str(value["reviewer_key_id"]),
                reviewer_public_key=base64.b64decode(value["reviewer_public_key"], validate=True),
                time=str(value["time"]),
                reason=str(value["reason"]),
                signature=base64.b64decode(value["signature"], validate=True),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise DecisionError(f"a stored decision is malformed ({type(exc).__name__}: {exc})") from None


Approval = Decision


def decision_statement(
    digest: str, *, decision: DecisionKind, reviewer: str, reviewer_key_id: str, time: str, reason: str
) -> bytes:
    return STATEMENT_PREFIX + canonical_json(
        {
            "decision": decision.value,
            "digest": digest,
            "reason": reason,
            "reviewer": reviewer,
            "reviewer_key_id": reviewer_key_id,
            "time": time,
        }
    )


def format_time(now: datetime) -> str:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC).isoformat(timespec="microseconds")


def sign_decision(
    digest: str, *, decision: DecisionKind, reviewer: AgentKey, reviewer_name: str, now: datetime, reason: str
) -> Decision:
    name = reviewer_name.strip()
    if not name or len(name) > MAX_REVIEWER or not name.isprintable():
        raise DecisionError(f"the reviewer name must be 1-{MAX_REVIEWER} printable characters")
    if len(reason) > MAX_REASON:
        raise DecisionError(f"the reason has at most {MAX_REASON} characters")
    time = format_time(now)
    statement = decision_statement(
        digest, decision=decision, reviewer=name, reviewer_key_id=reviewer.fingerprint, time=time, reason=reason
    )
    return Decision(
        digest, decision, name, reviewer.fingerprint, reviewer.public_bytes, time, reason, reviewer.sign(statement)
    )


def verify_decision(decision: Decision, public_key: Ed25519PublicKey | None = None) -> None:
    """Raises ``DecisionError`` unless ``decision`` is intact and, when ``public_key`` is
    given, signed by that key."""
    try:
        embedded = Ed25519PublicKey.from_public_bytes(decision.reviewer_public_key)
    except ValueError:
        raise DecisionError("the decision's reviewer public key is malformed") from None
    if fingerprint(embedded) != decision.reviewer_key_id:
        raise DecisionError("the decision's reviewer key id does not match its public key")
    if public_key is not None:
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if raw != decision.reviewer_public_key:
            raise DecisionError(
                f"the decision was signed by {decision.reviewer_key_id}, not by {fingerprint(public_key)}"
            )
    try:
        embedded.verify(decision.signature, decision.statement())
    except InvalidSignature:
        raise DecisionError(f"the {decision.decision.value} decision on {decision.digest} does not verify") from None
