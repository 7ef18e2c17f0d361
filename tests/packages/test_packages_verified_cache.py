"""The task path's kept verifications: hits, and every change that must verify again."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from package_builders import NOW, good_package, new_key, trust_for

from agent.identity.agent_key import AgentKey
from agent.packages import PackageLimits, PackageRejected, PackageStore, RejectionCode, TrustStore, VerifiedPackage
from agent.packages.verified_cache import VerificationCache

LIMITS = PackageLimits()


class CountingStore(PackageStore):
    """A real store that counts full verifications."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.verifications = 0

    def open_verified(self, digest: str, trust: TrustStore, limits: PackageLimits, now: datetime) -> VerifiedPackage:
        self.verifications += 1
        return super().open_verified(digest, trust, limits, now)


@pytest.fixture
def counting(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "packages")


def added(store: PackageStore, key: AgentKey, trust: TrustStore, version: str = "1.0.0") -> str:
    return store.add(good_package(key, version=version), trust, LIMITS, NOW, require_approval=False).digest


def test_a_second_task_reuses_the_verification(publisher_key: AgentKey, counting: CountingStore) -> None:
    trust = trust_for(publisher_key)
    digest = added(counting, publisher_key, trust)
    cache = VerificationCache()
    first = cache.open_verified(counting, digest, trust, LIMITS, NOW, policy_digest="p1")
    again = cache.open_verified(counting, digest, trust_for(publisher_key), LIMITS, NOW, policy_digest="p1")
    assert again is first and counting.verifications == 1
    # Another policy (a reload), or other limits: verified again.
    cache.open_verified(counting, digest, trust, LIMITS, NOW, policy_digest="p2")
    cache.open_verified(counting, digest, trust, PackageLimits(max_nodes=10_000), NOW, policy_digest="p2")
    assert counting.verifications == 3


def test_a_revocation_in_the_trust_store_is_seen_at_once(publisher_key: AgentKey, counting: CountingStore) -> None:
    digest = added(counting, publisher_key, trust_for(publisher_key))
    cache = VerificationCache()
    cache.open_verified(counting, digest, trust_for(publisher_key), LIMITS, NOW, policy_digest="p")
    # Even under the same policy digest (say, a policy without one), the trust store differs.
    with pytest.raises(PackageRejected) as refused:
        cache.open_verified(counting, digest, trust_for(publisher_key, revoked=True), LIMITS, NOW, policy_digest="p")
    assert refused.value.code is RejectionCode.KEY_REVOKED


def test_a_kept_verification_ends_when_a_key_expires(publisher_key: AgentKey, counting: CountingStore) -> None:
    expiry = NOW + timedelta(hours=1)
    trust = trust_for(publisher_key, not_after=expiry)
    digest = added(counting, publisher_key, trust)
    cache = VerificationCache()
    cache.open_verified(counting, digest, trust, LIMITS, NOW, policy_digest="p")
    cache.open_verified(counting, digest, trust, LIMITS, expiry - timedelta(seconds=1), policy_digest="p")
    assert counting.verifications == 1
    with pytest.raises(PackageRejected) as refused:
        cache.open_verified(counting, digest, trust, LIMITS, expiry + timedelta(seconds=1), policy_digest="p")
    assert refused.value.code is RejectionCode.KEY_EXPIRED
    # A clock that went back verifies again too.
    cache.open_verified(counting, digest, trust, LIMITS, NOW - timedelta(seconds=1), policy_digest="p")
    assert counting.verifications == 3


def test_refusals_are_not_kept(publisher_key: AgentKey, counting: CountingStore) -> None:
    digest = added(counting, publisher_key, trust_for(publisher_key))
    cache = VerificationCache()
    stranger = trust_for(new_key())
    for _ in range(2):
        with pytest.raises(PackageRejected):
            cache.open_verified(counting, digest, stranger, LIMITS, NOW, policy_digest="p")
    assert counting.verifications == 2


def test_the_cache_is_bounded_and_drops_other_policies(publisher_key: AgentKey, counting: CountingStore) -> None:
    trust = trust_for(publisher_key)
    digests = [added(counting, publisher_key, trust, version=f"1.0.{i}") for i in range(3)]
    cache = VerificationCache(max_entries=2)
    for digest in digests:
        cache.open_verified(counting, digest, trust, LIMITS, NOW, policy_digest="p")
    cache.open_verified(counting, digests[2], trust, LIMITS, NOW, policy_digest="p")
    cache.open_verified(counting, digests[0], trust, LIMITS, NOW, policy_digest="p")  # evicted: verified again
    assert counting.verifications == 4
    cache.open_verified(counting, digests[1], trust, LIMITS, NOW, policy_digest="new")
    cache.open_verified(counting, digests[0], trust, LIMITS, NOW, policy_digest="p")  # dropped with the reload
    assert counting.verifications == 6
