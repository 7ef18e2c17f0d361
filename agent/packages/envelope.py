"""DSSE signature envelope (https://github.com/secure-systems-lab/dsse, protocol v1).

The envelope is ``signatures.json`` in the archive::

    {"payload": "<base64 of the canonical manifest>",
     "payloadType": "application/vnd.edge-agent.manifest+json; version=1",
     "signatures": [{"keyid": "SHA256:<unpadded base64>", "sig": "<base64>"}, ...]}

Each signature is Ed25519 over the pre-authentication encoding (PAE)::

    "DSSEv1" SP LEN(type) SP type SP LEN(payload) SP payload

with LEN the ASCII decimal byte length, so the payload type is signed too. Base64 is
the standard alphabet with padding; the verifier refuses any other spelling (it
re-encodes and compares) and refuses an envelope that is not canonical JSON.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity.agent_key import AgentKey
from agent.packages.canonical import CanonicalJsonError, canonical_json, parse_strict_json
from agent.packages.errors import PackageRejected, RejectionCode

PAYLOAD_TYPE = "application/vnd.edge-agent.manifest+json; version=1"
MAX_SIGNATURES = 16
MAX_KEYID_LENGTH = 128


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes of the envelope (what ``signatures.json`` holds)."""
        return canonical_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": _b64(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": s.keyid, "sig": _b64(s.sig)} for s in self.signatures],
        }

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def with_signature(self, key: AgentKey) -> Envelope:
        """A copy signed by ``key`` too (replacing an earlier signature by the same key)."""
        kept = tuple(s for s in self.signatures if s.keyid != key.fingerprint)
        if len(kept) >= MAX_SIGNATURES:
            raise PackageRejected(
                RejectionCode.ENVELOPE_MALFORMED, f"an envelope holds at most {MAX_SIGNATURES} signatures"
            )
        return Envelope(self.payload_type, self.payload, (*kept, Signature(key.fingerprint, key.sign(self.pae()))))


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def signature_valid(public_key: Ed25519PublicKey, envelope: Envelope, sig: bytes) -> bool:
    try:
        public_key.verify(sig, envelope.pae())
    except InvalidSignature:
        return False
    return True


def unsigned_envelope(payload: bytes) -> Envelope:
    return Envelope(PAYLOAD_TYPE, payload, ())


def parse_envelope(data: bytes) -> Envelope:
    """Parses ``signatures.json`` strictly; raises ``PackageRejected``."""

    def bad(problem: str) -> PackageRejected:
        return PackageRejected(RejectionCode.ENVELOPE_MALFORMED, f"signatures.json: {problem}")

    try:
        value = parse_strict_json(data)
        canonical = canonical_json(value)
    except CanonicalJsonError as exc:
        raise bad(str(exc)) from None
    if canonical != data:
        raise bad("not in canonical JSON form (RFC 8785)")
    if not isinstance(value, dict) or set(value) != {"payload", "payloadType", "signatures"}:
        raise bad("must be an object with exactly payload, payloadType and signatures")
    payload_type = value["payloadType"]
    if payload_type != PAYLOAD_TYPE:
        raise PackageRejected(
            RejectionCode.UNSUPPORTED_PAYLOAD_TYPE,
            f"signatures.json: payloadType must be {PAYLOAD_TYPE!r}",
        )
    payload = _unb64(value["payload"], "payload", bad)
    raw_signatures = value["signatures"]
    if not isinstance(raw_signatures, list) or len(raw_signatures) > MAX_SIGNATURES:
        raise bad(f"signatures must be a list of at most {MAX_SIGNATURES} entries")
    signatures: list[Signature] = []
    for index, entry in enumerate(raw_signatures):
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise bad(f"signatures[{index}] must be an object with exactly keyid and sig")
        keyid = entry["keyid"]
        if not isinstance(keyid, str) or not 0 < len(keyid) <= MAX_KEYID_LENGTH or not keyid.isprintable():
            raise bad(f"signatures[{index}].keyid must be a printable string of 1-{MAX_KEYID_LENGTH} characters")
        signatures.append(Signature(keyid, _unb64(entry["sig"], f"signatures[{index}].sig", bad)))
    return Envelope(payload_type, payload, tuple(signatures))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, field: str, bad: Any) -> bytes:
    if not isinstance(value, str):
        raise bad(f"{field} must be a base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad(f"{field} is not valid base64") from None
    if _b64(decoded) != value:
        raise bad(f"{field} is not in canonical base64 (standard alphabet, padded)")
    return decoded
