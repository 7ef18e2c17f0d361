"""Loads and checks the server's TLS material before gRPC ever sees it.

gRPC reports a bad certificate as a bare "failed to bind" or, worse, as
handshake failures at the first client. Checking here lets the operator see
which file is wrong and why, before anything starts.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import ConfigError, TlsConfig


@dataclass(frozen=True)
class ServerTlsMaterial:
    cert_chain_pem: bytes
    private_key_pem: bytes
    client_ca_pem: bytes
    not_after: dt.datetime
    # Problems worth an operator's attention that do not stop the agent
    # (for `serve` to log once logging is set up).
    warnings: tuple[str, ...] = ()


def _read(source: Path | None, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, key, f"{path}: file not found") from None
    except PermissionError:
        raise ConfigError(source, key, f"{path}: permission denied") from None
    except OSError as exc:
        raise ConfigError(source, key, f"{path}: cannot read: {exc.strerror}") from None


def _key_file_permissions(tls: TlsConfig, source: Path | None) -> tuple[str, ...]:
    """Refuses a world-readable TLS key in production; warns about a group-readable one.

    Development instances (source None) stay permissive: their keys are
    throw-away and may live in a checkout with a lax umask. Group access is
    only a warning because some sites give a dedicated group read access.
    """
    try:
        mode = tls.key_file.stat().st_mode
    except OSError:
        return ()  # the read below reports it
    if mode & stat.S_IROTH:
        problem = f"{tls.key_file}: private key is readable by every user (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        if source is not None:
            raise ConfigError(source, "tls.key_file", problem)
        return (problem,)
    if mode & (stat.S_IRGRP | stat.S_IWGRP):
        return (f"{tls.key_file}: private key is group-accessible (mode {stat.S_IMODE(mode):04o}); consider chmod 600",)
    return ()


def _check_server_certificate(leaf: x509.Certificate, tls: TlsConfig, source: Path | None) -> None:
    """A certificate without serverAuth or a SAN fails at every client's handshake, not here; say so now."""
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None  # no EKU extension: valid for any purpose (RFC 5280)
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise ConfigError(
            source,
            "tls.cert_file",
            f"{tls.cert_file}: certificate is not for servers (its extended key usage lacks serverAuth)",
        )
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    names = [] if sans is None else sans.get_values_for_type(x509.DNSName) + sans.get_values_for_type(x509.IPAddress)
    if not names:
        raise ConfigError(
            source,
            "tls.cert_file",
            f"{tls.cert_file}: certificate has no DNS or IP subject alternative name; "
            "clients check the agent's name against the SAN, not the CN",
        )


def load_server_tls(tls: TlsConfig, source: Path | None) -> ServerTlsMaterial:
    """Reads and checks the TLS files; `source` None means a development instance."""
    warnings = _key_file_permissions(tls, source)
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
    _check_server_certificate(leaf, tls, source)
    return ServerTlsMaterial(cert_pem, key_pem, ca_pem, leaf.not_valid_after_utc, warnings)
