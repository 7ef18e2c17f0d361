"""X.509 material for mutual TLS: a small CA that issues server and client certificates.

Used for the development PKI (`edge-agent dev-certs`) and by tests, which need
real certificates that are expired or come from a foreign CA. Production
deployments bring certificates from the hospital's own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.durable import write_private, write_public


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    def write(self, cert_path: Path, key_path: Path) -> None:
        write_public(cert_path, self.cert_pem)
        write_private(key_path, self.key_pem)


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls,
        common_name: str,
        organization: str = "Edge Agent development",
        valid_days: int = 730,
    ) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(common_name, organization)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: expected an EC private key")
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, cert_path: Path, key_path: Path) -> None:
        write_public(cert_path, self.cert_pem)
        write_private(key_path, _key_pem(self.private_key))

    def _issue(
        self,
        common_name: str,
        sans: Sequence[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, "Edge Agent"))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return IssuedCertificate(builder.sign(self.private_key, hashes.SHA256()), key)

    def issue_server(
        self,
        hostnames: Sequence[str] = ("localhost",),
        addresses: Sequence[str] = ("127.0.0.1", "::1"),
        valid_days: int = 365,
    ) -> IssuedCertificate:
        sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        now = _now()
        return self._issue(
            hostnames[0] if hostnames else addresses[0],
            sans,
            ExtendedKeyUsageOID.SERVER_AUTH,
            now - dt.timedelta(minutes=5),
            now + dt.timedelta(days=valid_days),
        )

    def issue_client(
        self,
        common_name: str,
        uri: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        extra_uris: Sequence[str] = (),
    ) -> IssuedCertificate:
        """A coordinator certificate; its identity is the SAN URI, else the CN.

        `extra_uris` exists for tests: the agent refuses certificates with
        more than one SAN URI.
        """
        now = _now()
        sans: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(u) for u in ([uri] if uri else []) + list(extra_uris)
        ]
        return self._issue(
            common_name,
            sans,
            ExtendedKeyUsageOID.CLIENT_AUTH,
            not_before or now - dt.timedelta(minutes=5),
            not_after or now + dt.timedelta(days=365),
        )
