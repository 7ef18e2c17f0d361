"""Byte-wise mutations of valid packages never crash the verifier and are never accepted.

Why "never accepted" can be asserted outright: every byte of a v1 archive is either
authenticated or forced. The ZIP headers, directory and order must equal the canonical
layout written from the members (``ARCHIVE_NOT_CANONICAL`` otherwise); the manifest is
the signed DSSE payload; each graph's sha256 is in the manifest; ``signatures.json``
must be canonical JSON with canonical base64, and Ed25519 signatures are not malleable.

The one exception, documented in ``docs/package-format.md`` and tested below: bytes of a
signature by a key the verifier does not trust are not authenticated (such signatures
are ignored). A mutation there may be accepted -- with a different digest but exactly
the same manifest, graphs and trusted signers.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from package_builders import NOW, canonical_rezip, good_package, members_of, new_key, trust_for

from agent.packages import PackageLimits, PackageRejected, verify_package
from edge_sponsor.publisher.packaging import sign_package

KEY = new_key()
TRUST = trust_for(KEY)
LIMITS = PackageLimits()
VALID = good_package(KEY)
CO_SIGNED = sign_package(VALID, new_key())  # plus a signature by an untrusted key


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "flip":
        data[at] ^= draw(st.integers(1, 255))
    elif kind == "set":
        data[at : at + 4] = draw(st.binary(min_size=4, max_size=4))
    elif kind == "truncate":
        del data[at:]
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    else:
        del data[at : at + draw(st.integers(1, 64))]
    mutated = bytes(data)
    if mutated == original:  # e.g. "set" to the same bytes
        mutated += b"\0"
    return mutated


@st.composite
def member_mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """Mutates one member's bytes and re-writes a canonical archive (CRCs fixed), so the
    mutation reaches the envelope, signature, manifest and digest checks."""
    members = members_of(original)
    name = draw(st.sampled_from(sorted(members)))
    mutated_member = draw(mutations(members[name]))
    return canonical_rezip(original, {name: mutated_member})


def _verify_or_code(data: bytes) -> str | None:
    try:
        verify_package(data, TRUST, LIMITS, NOW)
    except PackageRejected as exc:
        return exc.code.value
    return None


def test_the_originals_verify() -> None:
    assert _verify_or_code(VALID) is None
    assert _verify_or_code(CO_SIGNED) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(VALID))
def test_mutated_package_is_never_accepted(mutated: bytes) -> None:
    # Any exception other than PackageRejected fails the test.
    assert _verify_or_code(mutated) is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations(CO_SIGNED))
def test_mutation_accepted_only_with_identical_content(mutated: bytes) -> None:
    try:
        verified = verify_package(mutated, TRUST, LIMITS, NOW)
    except PackageRejected:
        return
    original = verify_package(CO_SIGNED, TRUST, LIMITS, NOW)
    assert verified.digest != original.digest
    assert verified.manifest_bytes == original.manifest_bytes
    assert dict(verified.graphs) == dict(original.graphs)
    assert verified.signer_key_ids == original.signer_key_ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(member_mutations(VALID))
def test_mutated_member_is_never_accepted(mutated: bytes) -> None:
    assert _verify_or_code(mutated) is not None


@pytest.mark.parametrize("cut", [1, 22, 100, len(VALID) // 2, len(VALID) - 1])
def test_truncations(cut: int) -> None:
    assert _verify_or_code(VALID[:cut]) is not None
