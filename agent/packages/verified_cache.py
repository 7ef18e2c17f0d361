"""Verified packages kept for the task path, so that each RunTask need not re-verify its package.

Every task re-verifies its stored package against the trust store in force (a
key revoked since the upload must stop its packages): reading the archive,
checking the Ed25519 signatures and validating the ONNX graphs take 7-10 ms.
The outcome of that verification depends only on the package's bytes, the
trust store, the limits, and the time (a key expires). So a successful one is
kept under (package digest, policy digest, trust-store digest, limits) until
the first key expiry of that trust store after it was made. A new policy has
another digest: its first task verifies again, and entries of other policies
are dropped. Refusals are not kept.

The cached package's graphs are the bytes that were verified, held in memory:
a package file changed on disk afterwards is never used unverified.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from agent.packages.limits import PackageLimits
from agent.packages.store import PackageStore
from agent.packages.trust import TrustStore
from agent.packages.verification import VerifiedPackage


@dataclass(frozen=True)
class _Key:
    package: str
    policy: str
    trust: str
    limits: PackageLimits


@dataclass(frozen=True)
class _Entry:
    package: VerifiedPackage
    verified_at: datetime
    # The first key expiry after verified_at (None: no key of the trust store expires).
    valid_until: datetime | None

    def valid_at(self, now: datetime) -> bool:
        # A clock that went back is not trusted either.
        return self.verified_at <= now and (self.valid_until is None or now < self.valid_until)


def trust_digest(trust: TrustStore) -> str:
    """What of the trust store a verification depends on: key ids, expiries, revocations, namespaces."""
    lines = sorted(
        "|".join(
            (
                key.key_id,
                "" if key.not_after is None else key.not_after.isoformat(),
                "revoked" if key.revoked else "",
                "*" if key.namespaces is None else ",".join(sorted(key.namespaces)),
            )
        )
        for key in trust.keys
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class VerificationCache:
    """Thread-safe; at most ``max_entries`` packages and ``max_bytes`` of graphs are held."""

    def __init__(self, max_entries: int = 8, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a verification cache needs room for at least one package")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def open_verified(
        self,
        store: PackageStore,
        digest: str,
        trust: TrustStore,
        limits: PackageLimits,
        now: datetime,
        *,
        policy_digest: str,
    ) -> VerifiedPackage:
        """``store.open_verified(digest, trust, limits, now)``, or its kept result while that cannot differ."""
        key = _Key(digest, policy_digest, trust_digest(trust), limits)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.valid_at(now):
                self._entries.move_to_end(key)
                return entry.package
        package = store.open_verified(digest, trust, limits, now)  # raises PackageRejected: nothing kept
        expiries = [k.not_after for k in trust.keys if k.not_after is not None and k.not_after > now]
        entry = _Entry(package, now, min(expiries) if expiries else None)
        with self._lock:
            # Entries of another policy can no longer be hit: the policy in force changed.
            for stale in [k for k in self._entries if k.policy != policy_digest]:
                del self._entries[stale]
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and (
                len(self._entries) > self._max_entries or self._held_bytes() > self._max_bytes
            ):
                self._entries.popitem(last=False)
        return package

    def _held_bytes(self) -> int:
        return sum(sum(len(g) for g in e.package.graphs.values()) for e in self._entries.values())
