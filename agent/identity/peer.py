"""The coordinator's identity, derived from its (already verified) client certificate."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID


class PeerIdentityError(Exception):
    """The certificate carries nothing usable as an identity."""


def identity_from_certificate(pem: bytes) -> str:
    """The first SAN URI (e.g. spiffe://pharma.example/coordinator), else the subject CN.

    A URI is preferred because it is namespaced and meant for machines; the
    CN fallback keeps certificates from simpler hospital PKIs usable.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PeerIdentityError(f"unparseable client certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common_names:
        value = common_names[0].value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text:
            return text
    raise PeerIdentityError("client certificate has neither a SAN URI nor a common name")
