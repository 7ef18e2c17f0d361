"""What a package says about itself, read without any trust decision.

`edge-agent package inspect` shows it to a reviewer before any key is trusted,
and the sponsor's coordinator reads a study package's manifest with it.
Nothing here checks a signature or a graph: :func:`verify_package` does that.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.packages.archive import read_archive
from agent.packages.canonical import CanonicalJsonError, parse_strict_json
from agent.packages.envelope import parse_envelope
from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, parse_manifest
from agent.packages.verification import package_digest


@dataclass(frozen=True)
class PackageSummary:
    """What a package claims, read without any trust decision."""

    digest: str
    size: int
    manifest: Manifest
    signature_key_ids: tuple[str, ...]


def inspect_package(archive: bytes, limits: PackageLimits | None = None) -> PackageSummary:
    """Reads the archive and the manifest (format, schema); checks no signature or graph.

    Raises :class:`PackageRejected` when the archive, the envelope or the manifest
    cannot be read.
    """
    contents = read_archive(archive, limits or PackageLimits())
    envelope = parse_envelope(contents.envelope)
    try:
        manifest = parse_manifest(parse_strict_json(contents.manifest))
    except CanonicalJsonError as exc:
        raise PackageRejected(RejectionCode.MANIFEST_INVALID, f"manifest.json is not valid JSON: {exc}") from None
    return PackageSummary(
        digest=package_digest(archive),
        size=len(archive),
        manifest=manifest,
        signature_key_ids=tuple(s.keyid for s in envelope.signatures),
    )
