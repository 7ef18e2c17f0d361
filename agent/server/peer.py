"""Reads the authenticated caller out of a gRPC call's TLS auth context."""

from __future__ import annotations

import grpc

from agent.identity.peer import PeerIdentityError, identity_from_certificate


def caller_identity(context: grpc.ServicerContext) -> str | None:
    """The identity in the verified client certificate, or None if there is none.

    gRPC has already checked the chain against the coordinator CA during the
    handshake; this only reads the name out of the leaf it accepted.
    """
    pems = list(context.auth_context().get("x509_pem_cert") or [])
    if not pems or not isinstance(pems[0], bytes):
        return None
    try:
        return identity_from_certificate(pems[0])
    except PeerIdentityError:
        return None
