"""The coordinator's identity, derived from its (already verified) client certificate."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID


class PeerIdentityError(Exception):
    """The certificate carries nothing usable as an identity, or something ambiguous."""


def identity_from_certificate(pem: bytes) -> str:
    """The SAN URI (e.g. spiffe://pharma.example/coordinator), else the subject CN.

    A URI is preferred because it is namespaced and meant for machines; the
    CN fallback keeps certificates from simpler hospital PKIs usable.

    Two things are refused because they would let one certificate pass for
    another coordinator: more than one SAN URI (which one is "the" identity
    would depend on ordering, and policies are written against one), and a
    CN fallback whose CN contains ':' (a CN of "spiffe://pharma.example/c1"
    on a certificate without SAN URIs would otherwise be indistinguishable
    from the real SAN-URI identity; CNs of simple PKIs never need a colon).
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PeerIdentityError(f"unparseable client certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError as exc:  # a malformed extension
        raise PeerIdentityError(f"unparseable subject alternative name: {exc}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san is not None else []
    if len(uris) > 1:
        raise PeerIdentityError(f"client certificate has {len(uris)} SAN URIs; exactly one is allowed")
    if uris:
        return str(uris[0])
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) > 1:
        raise PeerIdentityError("client certificate has more than one common name")
    if common_names:
        value = common_names[0].value
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if ":" in text:
            raise PeerIdentityError(
                f"client certificate has no SAN URI and its common name {text!r} looks like a URI; "
                "a URI identity must be a SAN URI"
            )
        if text:
            return text
    raise PeerIdentityError("client certificate has neither a SAN URI nor a common name")
