"""Publisher keys the agent trusts to sign packages.

Key ids are the OpenSSH-style fingerprint of the raw Ed25519 key
(``SHA256:<unpadded base64>``, :func:`agent.identity.agent_key.fingerprint`), the same
string publishers put in the envelope's ``keyid``. A key id is never trusted on its
own: the store derives it from the public key it holds.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.identity.agent_key import fingerprint
from agent.packages.errors import PackageError


class TrustStoreError(PackageError):
    """A trusted key cannot be parsed or the trust store is inconsistent."""


@dataclass(frozen=True)
class TrustedKey:
    """A publisher's signing key.

    ``publisher`` is a display name (e.g. the policy's ``[[publishers]] name``).
    ``namespaces``, when given, restricts the key to packages whose manifest
    ``publisher`` (the ``<publisher>/`` prefix of the name) is listed; ``None`` lets it
    sign any name. ``not_after`` must be timezone-aware.
    """

    key_id: str
    public_key: Ed25519PublicKey
    publisher: str
    not_after: datetime | None = None
    revoked: bool = False
    namespaces: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if self.key_id != fingerprint(self.public_key):
            raise TrustStoreError(f"key id {self.key_id} is not the fingerprint of its public key")
        if self.not_after is not None and self.not_after.tzinfo is None:
            raise TrustStoreError(f"key {self.key_id}: not_after must carry a time zone")

    @classmethod
    def create(
        cls,
        public_key: Ed25519PublicKey,
        publisher: str,
        *,
        not_after: datetime | None = None,
        revoked: bool = False,
        namespaces: Iterable[str] | None = None,
    ) -> TrustedKey:
        """A trusted key whose id is computed from ``public_key``."""
        return cls(
            fingerprint(public_key),
            public_key,
            publisher,
            not_after,
            revoked,
            None if namespaces is None else frozenset(namespaces),
        )

    def may_sign(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


class KeyStatus(StrEnum):
    TRUSTED = "trusted"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class KeyLookup:
    status: KeyStatus
    key: TrustedKey | None


class TrustStore:
    """An immutable set of trusted keys, looked up by key id."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        by_id: dict[str, TrustedKey] = {}
        for key in keys:
            if key.key_id in by_id:
                raise TrustStoreError(f"key {key.key_id} is listed twice")
            by_id[key.key_id] = key
        self._keys: Mapping[str, TrustedKey] = MappingProxyType(by_id)

    @property
    def keys(self) -> tuple[TrustedKey, ...]:
        return tuple(self._keys.values())

    def lookup(self, key_id: str, now: datetime) -> KeyLookup:
        """Whether ``key_id`` may sign at ``now``; revocation wins over expiry."""
        key = self._keys.get(key_id)
        if key is None:
            return KeyLookup(KeyStatus.UNKNOWN, None)
        if key.revoked:
            return KeyLookup(KeyStatus.REVOKED, key)
        if key.not_after is not None and now > key.not_after:
            return KeyLookup(KeyStatus.EXPIRED, key)
        return KeyLookup(KeyStatus.TRUSTED, key)


def parse_public_key(text: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM block (SubjectPublicKeyInfo) or raw base64 (32 bytes)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else text
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except (ValueError, TypeError) as exc:
            raise TrustStoreError(f"not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise TrustStoreError(f"expected an Ed25519 public key, got {type(key).__name__}")
        return key
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raise TrustStoreError("not a PEM block and not base64") from None
    if len(raw) != 32:
        raise TrustStoreError(f"an Ed25519 public key has 32 bytes, this has {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)
