"""Everything the agent checks before it stores or runs a package.

:func:`verify_package` runs, in order (the first failure decides the code):

1. size limit of the archive, then the archive checks of :func:`read_archive`;
2. the DSSE envelope (strict, canonical) and ``manifest.json`` == the signed payload;
3. signatures: at least one valid signature by a trusted, unexpired, unrevoked key
   (others are ignored and listed) -- checked *before* the manifest is parsed;
4. the manifest: canonical bytes, schema; the signer may sign the manifest's publisher;
5. every graph file's sha256 against the manifest, and no undeclared graph files (a plan
   package declares none);
6. ONNX validation of every graph (:mod:`agent.packages.onnx_validation`); for a plan
   package, that each task's release fits (:func:`agent.packages.release_layout.check_release_size`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from agent.packages.archive import read_archive
from agent.packages.canonical import CanonicalJsonError, canonical_json, parse_strict_json
from agent.packages.envelope import Envelope, parse_envelope, signature_valid
from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.limits import PackageLimits
from agent.packages.manifest import GRAPH_FILES, Manifest, parse_manifest
from agent.packages.onnx_validation import validate_graphs
from agent.packages.release_layout import check_release_size
from agent.packages.trust import KeyStatus, TrustedKey, TrustStore


def package_digest(data: bytes) -> str:
    """``sha256:<hex>`` of the archive bytes: the package's identity in the store."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class IgnoredSignature:
    """A signature that did not count, and why (``unknown``, ``expired``, ``revoked``,
    ``invalid``, ``not_authorised``)."""

    key_id: str
    reason: str


@dataclass(frozen=True, eq=False)
class VerifiedPackage:
    digest: str
    size: int
    manifest: Manifest
    manifest_bytes: bytes
    """The canonical manifest JSON (the signed DSSE payload)."""
    signer_key_ids: tuple[str, ...]
    """Trusted keys whose valid signatures made the package acceptable."""
    ignored_signatures: tuple[IgnoredSignature, ...]
    graphs: Mapping[str, bytes]
    """Graph role (``grad``, ``eval``, ``model``) -> ONNX bytes."""


def read_package_bytes(path: Path, limits: PackageLimits) -> bytes:
    """Reads at most the archive limit from ``path`` (``OSError`` if unreadable)."""
    with path.open("rb") as handle:
        data = handle.read(limits.max_archive_bytes + 1)
    if len(data) > limits.max_archive_bytes:
        raise PackageRejected(
            RejectionCode.ARCHIVE_TOO_LARGE, f"the archive is larger than the limit of {limits.max_archive_bytes} bytes"
        )
    return data


def verify_package(source: bytes | Path, trust: TrustStore, limits: PackageLimits, now: datetime) -> VerifiedPackage:
    """Verifies a package completely; raises ``PackageRejected`` naming the first problem."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    data = read_package_bytes(source, limits) if isinstance(source, Path) else bytes(source)
    contents = read_archive(data, limits)
    if len(contents.envelope) > limits.max_envelope_bytes:
        raise PackageRejected(RejectionCode.ENVELOPE_MALFORMED, "signatures.json is over the size limit")
    if len(contents.manifest) > limits.max_manifest_bytes:
        raise PackageRejected(RejectionCode.MANIFEST_INVALID, "manifest.json is over the size limit")
    envelope = parse_envelope(contents.envelope)
    if envelope.payload != contents.manifest:
        raise PackageRejected(
            RejectionCode.MANIFEST_MISMATCH, "manifest.json differs from the signed payload in signatures.json"
        )
    signers, ignored = _check_signatures(envelope, trust, now)
    manifest = _parse_manifest_bytes(contents.manifest)
    authorised = tuple(key for key in signers if key.may_sign(manifest.publisher))
    if not authorised:
        raise PackageRejected(
            RejectionCode.KEY_NOT_AUTHORISED,
            f"no signing key is authorised for publisher {manifest.publisher!r} "
            f"(keys: {', '.join(key.key_id for key in signers)})",
        )
    ignored += [IgnoredSignature(key.key_id, "not_authorised") for key in signers if key not in authorised]
    _check_graph_files(manifest, contents.graphs)
    if manifest.plan is None:
        validate_graphs(manifest, contents.graphs, limits)
    else:  # a plan package has no graph (_check_graph_files refused any); its release must fit
        check_release_size(manifest.plan, manifest.task_kinds)
    return VerifiedPackage(
        digest=package_digest(data),
        size=len(data),
        manifest=manifest,
        manifest_bytes=contents.manifest,
        signer_key_ids=tuple(key.key_id for key in authorised),
        ignored_signatures=tuple(ignored),
        graphs=MappingProxyType(dict(contents.graphs)),
    )


_PROBLEM_ORDER = (
    (KeyStatus.REVOKED, RejectionCode.KEY_REVOKED, "revoked"),
    (KeyStatus.EXPIRED, RejectionCode.KEY_EXPIRED, "expired"),
    (KeyStatus.UNKNOWN, RejectionCode.UNKNOWN_KEY, "not trusted here"),
)


def _check_signatures(
    envelope: Envelope, trust: TrustStore, now: datetime
) -> tuple[list[TrustedKey], list[IgnoredSignature]]:
    if not envelope.signatures:
        raise PackageRejected(RejectionCode.UNSIGNED, "the package carries no signature")
    signers: list[TrustedKey] = []
    ignored: list[IgnoredSignature] = []
    invalid: list[str] = []
    for signature in envelope.signatures:
        lookup = trust.lookup(signature.keyid, now)
        if lookup.key is None:
            ignored.append(IgnoredSignature(signature.keyid, KeyStatus.UNKNOWN.value))
        elif not signature_valid(lookup.key.public_key, envelope, signature.sig):
            invalid.append(signature.keyid)
            ignored.append(IgnoredSignature(signature.keyid, "invalid"))
        elif lookup.status is not KeyStatus.TRUSTED:
            ignored.append(IgnoredSignature(signature.keyid, lookup.status.value))
        elif lookup.key not in signers:
            signers.append(lookup.key)
    if signers:
        return signers, ignored
    if invalid:
        raise PackageRejected(
            RejectionCode.SIGNATURE_INVALID,
            f"the signature by trusted key {invalid[0]} does not match the manifest (changed after signing?)",
        )
    for status, code, words in _PROBLEM_ORDER:
        keys = [item.key_id for item in ignored if item.reason == status.value]
        if keys:
            raise PackageRejected(code, f"signing key {keys[0]} is {words}")
    raise PackageRejected(RejectionCode.UNSIGNED, "the package carries no usable signature")


def _parse_manifest_bytes(data: bytes) -> Manifest:
    try:
        value = parse_strict_json(data)
        canonical = canonical_json(value)
    except CanonicalJsonError as exc:
        raise PackageRejected(RejectionCode.MANIFEST_INVALID, f"manifest.json is not valid JSON: {exc}") from None
    if canonical != data:
        raise PackageRejected(
            RejectionCode.MANIFEST_NOT_CANONICAL, "manifest.json is not in canonical JSON form (RFC 8785)"
        )
    return parse_manifest(value)


def _check_graph_files(manifest: Manifest, graphs: Mapping[str, bytes]) -> None:
    for role in graphs:
        if role not in manifest.graphs:
            raise PackageRejected(
                RejectionCode.UNEXPECTED_MEMBER, f"{GRAPH_FILES[role]} is in the archive but not in the manifest"
            )
    for role, ref in manifest.graphs.items():
        if role not in graphs:
            raise PackageRejected(RejectionCode.MISSING_MEMBER, f"the archive lacks {ref.file}")
        if hashlib.sha256(graphs[role]).hexdigest() != ref.sha256:
            raise PackageRejected(
                RejectionCode.GRAPH_DIGEST_MISMATCH, f"{ref.file} does not match its sha256 in the manifest"
            )
