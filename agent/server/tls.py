"""Loads and checks the server's TLS material before gRPC ever sees it.

gRPC reports a bad certificate as a bare "failed to bind" or, worse, as
handshake failures at the first client. Checking here lets the operator see
which file is wrong and why, before anything starts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from agent.config import ConfigError, TlsConfig


@dataclass(frozen=True)
class ServerTlsMaterial:
    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes
    not_after: dt.datetime


def _read(source: Path | None, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, key, f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(source, key, f"{path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(source, key, f"{path}: cannot read: {exc.strerror}") from None


def load_server_tls(tls: TlsConfig, source: Path | None) -> ServerTlsMaterial:
    cert_pem = _read(source, "tls.cert_file", tls.cert_file)
    key_pem = _read(source, "tls.key_file", tls.key_file)
    ca_pem = _read(source, "tls.client_ca_file", tls.client_ca_file)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise ConfigError(source, "tls.cert_file", f"{tls.cert_file}: not a PEM certificate ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            source, "tls.key_file", f"{tls.key_file}: not an unencrypted PEM private key ({exc})"
        ) from None
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise ConfigError(
            source, "tls.client_ca_file", f"{tls.client_ca_file}: not a PEM certificate ({exc})"
        ) from None
    if not cas:
        raise ConfigError(source, "tls.client_ca_file", f"{tls.client_ca_file}: no certificate in file")
    leaf = chain[0]
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError(source, "tls.key_file", f"{tls.key_file}: unsupported key type {type(key).__name__}")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ConfigError(source, "tls.key_file", f"{tls.key_file}: does not match the certificate in {tls.cert_file}")
    now = dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc < now:
        raise ConfigError(
            source,
            "tls.cert_file",
            f"{tls.cert_file}: certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}",
        )
    return ServerTlsMaterial(cert_pem, key_pem, ca_pem, leaf.not_valid_after_utc)
