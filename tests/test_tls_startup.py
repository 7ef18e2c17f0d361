"""Server TLS material is checked at start-up: purpose, names, and who can read the key."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import ConfigError, TlsConfig
from agent.identity.certificates import CertificateAuthority, IssuedCertificate
from agent.server.tls import load_server_tls

SOURCE = Path("/etc/edge-agent/agent.toml")


def _write(tmp_path: Path, ca: CertificateAuthority, issued: IssuedCertificate) -> TlsConfig:
    issued.write(tmp_path / "agent.crt", tmp_path / "agent.key")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    return TlsConfig(tmp_path / "agent.crt", tmp_path / "agent.key", tmp_path / "ca.crt")


def _issue(ca: CertificateAuthority, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> IssuedCertificate:
    now = dt.datetime.now(dt.UTC)
    return ca._issue("agent.hospital.example", sans, usage, now - dt.timedelta(minutes=1), now + dt.timedelta(days=1))


def test_a_good_server_certificate_loads(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    material = load_server_tls(_write(tmp_path, ca, ca.issue_server()), SOURCE)
    assert material.warnings == ()


def test_a_client_certificate_is_refused_as_server_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    tls = _write(tmp_path, ca, _issue(ca, [x509.DNSName("localhost")], ExtendedKeyUsageOID.CLIENT_AUTH))
    with pytest.raises(ConfigError, match="lacks serverAuth") as failure:
        load_server_tls(tls, SOURCE)
    assert failure.value.key == "tls.cert_file"


def test_a_server_certificate_without_san_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    tls = _write(tmp_path, ca, _issue(ca, [], ExtendedKeyUsageOID.SERVER_AUTH))
    with pytest.raises(ConfigError, match="no DNS or IP subject alternative name") as failure:
        load_server_tls(tls, SOURCE)
    assert failure.value.key == "tls.cert_file"


def test_a_world_readable_key_is_refused_in_production_and_tolerated_in_development(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    tls = _write(tmp_path, ca, ca.issue_server())
    os.chmod(tls.key_file, 0o644)
    with pytest.raises(ConfigError, match="readable by every user") as failure:
        load_server_tls(tls, SOURCE)
    assert failure.value.key == "tls.key_file"
    development = load_server_tls(tls, None)
    assert len(development.warnings) == 1 and "readable by every user" in development.warnings[0]


def test_a_group_readable_key_is_a_warning(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("CA")
    tls = _write(tmp_path, ca, ca.issue_server())
    os.chmod(tls.key_file, 0o640)
    material = load_server_tls(tls, SOURCE)
    assert len(material.warnings) == 1 and "group-accessible" in material.warnings[0]
