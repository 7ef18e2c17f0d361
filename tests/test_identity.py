"""The agent's identity key, certificate identities, and the development PKI."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity.agent_key import KeyFileError, generate_key_file, load_key_file, public_key_path
from agent.identity.certificates import CertificateAuthority
from agent.identity.development_pki import ensure_development_pki
from agent.identity.peer import PeerIdentityError, identity_from_certificate


def test_generated_key_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "agent.key"
    key = generate_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert public_key_path(path).exists()
    loaded = load_key_file(path)
    assert loaded.public_bytes == key.public_bytes
    expected = base64.b64encode(hashlib.sha256(key.public_bytes).digest()).decode().rstrip("=")
    assert loaded.fingerprint == f"SHA256:{expected}"
    signature = loaded.sign(b"checkpoint")
    key.public_key.verify(signature, b"checkpoint")


def test_existing_key_is_never_overwritten_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = generate_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_key_file(path)
    assert load_key_file(path).public_bytes == first.public_bytes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_wrong_key_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        load_key_file(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM"):
        load_key_file(garbage)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="expected an Ed25519 key"):
        load_key_file(ec_key)


def test_identity_prefers_san_uri_then_common_name() -> None:
    ca = CertificateAuthority.create("CA")
    with_uri = ca.issue_client("cn-name", uri="spiffe://pharma.example/c1")
    assert identity_from_certificate(with_uri.cert_pem) == "spiffe://pharma.example/c1"
    assert identity_from_certificate(ca.issue_client("cn-name").cert_pem) == "cn-name"
    with pytest.raises(PeerIdentityError):
        identity_from_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_development_pki_is_created_once_then_reused(tmp_path: Path) -> None:
    pki, created = ensure_development_pki(tmp_path / "pki")
    assert created
    cert = pki.agent_cert.read_bytes()
    again, created_again = ensure_development_pki(tmp_path / "pki")
    assert not created_again
    assert again.agent_cert.read_bytes() == cert
    for private in (pki.ca_key, pki.agent_key, pki.coordinator_key):
        assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert identity_from_certificate(pki.coordinator_cert.read_bytes()) == "urn:edge-agent:coordinator:dev"


def test_a_common_name_that_looks_like_a_uri_is_not_an_identity() -> None:
    """Before: CN="spiffe://..." without SAN URIs impersonated that SAN-URI identity."""
    ca = CertificateAuthority.create("CA")
    for cn in ("spiffe://pharma.example/coordinator/eu-1", "urn:edge-agent:coordinator:dev", "host:7443"):
        with pytest.raises(PeerIdentityError, match="looks like a URI"):
            identity_from_certificate(ca.issue_client(cn).cert_pem)


def test_more_than_one_san_uri_is_refused() -> None:
    ca = CertificateAuthority.create("CA")
    cert = ca.issue_client(
        "two-faced", uri="spiffe://pharma.example/c1", extra_uris=("spiffe://pharma.example/coordinator/eu-1",)
    )
    with pytest.raises(PeerIdentityError, match="2 SAN URIs"):
        identity_from_certificate(cert.cert_pem)
