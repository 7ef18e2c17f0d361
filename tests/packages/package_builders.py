"""Helpers for the package tests: keys, good packages and hostile archives."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.identity.agent_key import AgentKey
from agent.packages import PackageStore, TrustedKey, TrustStore
from agent.packages.archive import MANIFEST, SIGNATURES, write_archive
from edge_sponsor.publisher.packaging import (
    FeatureColumn,
    assemble_package,
    complete_manifest,
    zoo_graphs,
    zoo_manifest_fields,
)
from edge_sponsor.publisher.zoo import ZooModel, build_logistic_regression

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FEATURES = (
    FeatureColumn("age", "float64", "standardise", mean=61.5, std=12.25),
    FeatureColumn("sex", "string", "one_hot", categories=("F", "M")),
    FeatureColumn("bmi", "float32"),
)
NUM_FEATURES = 4


def new_key() -> AgentKey:
    return AgentKey(Ed25519PrivateKey.generate())


def trust_for(*keys: AgentKey, **options: Any) -> TrustStore:
    return TrustStore(TrustedKey.create(key.public_key, "Acme Pharma", **options) for key in keys)


def logistic() -> ZooModel:
    return build_logistic_regression(NUM_FEATURES)


def manifest_and_graphs(
    model: ZooModel | None = None,
    *,
    name: str = "acme/cardio-risk",
    version: str = "1.0.0",
    labels: Sequence[str] = ("outcome",),
    inference: bool = True,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    model = model or logistic()
    fields = zoo_manifest_fields(
        model, name=name, version=version, publisher="acme", features=FEATURES, label_columns=labels
    )
    graphs = zoo_graphs(model, inference_seed=0 if inference else None)
    return complete_manifest(fields, graphs), graphs


def good_package(
    key: AgentKey | None, *, version: str = "1.0.0", model: ZooModel | None = None, labels: Sequence[str] = ("outcome",)
) -> bytes:
    manifest, graphs = manifest_and_graphs(model, version=version, labels=labels)
    return assemble_package(manifest, graphs, [key] if key else [])


def with_grad(key: AgentKey, grad: onnx.ModelProto, **manifest_changes: Any) -> bytes:
    """A signed package whose grad graph is ``grad`` (manifest digests updated to match)."""
    manifest, graphs = manifest_and_graphs(inference=False)
    graphs["grad"] = grad.SerializeToString()
    manifest = complete_manifest({**manifest, **manifest_changes}, graphs)
    return assemble_package(manifest, graphs, [key])


def members_of(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def raw_zip(entries: Sequence[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A ZIP written by the standard library (not canonical) with arbitrary entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return out.getvalue()


def rezip(
    archive: bytes,
    *,
    replace: Mapping[str, bytes] | None = None,
    extra: Sequence[tuple[zipfile.ZipInfo | str, bytes]] = (),
) -> bytes:
    members = members_of(archive)
    members.update(replace or {})
    return raw_zip([*members.items(), *extra])


def canonical_rezip(archive: bytes, replace: Mapping[str, bytes]) -> bytes:
    members = members_of(archive)
    members.update(replace)
    return write_archive(members)


def assert_store_empty(store: PackageStore) -> None:
    assert store.list() == []
    root = store.root
    assert list((root / "blobs" / "sha256").iterdir()) == []
    assert list((root / "staging").iterdir()) == []


def store_at(tmp_path: Path) -> PackageStore:
    return PackageStore(tmp_path / "packages")


__all__ = ["MANIFEST", "SIGNATURES"]
