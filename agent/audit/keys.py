"""Loading the public key(s) a log is verified against."""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.audit.errors import AuditKeyError


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM public key, an OpenSSH public key, or a PEM private key (its public half)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise AuditKeyError(f"{path}: public key not found") from None
    except OSError as exc:
        raise AuditKeyError(f"{path}: cannot read key: {exc.strerror}") from None
    key: object
    try:
        if data.startswith(b"ssh-ed25519 "):
            key = serialization.load_ssh_public_key(data)
        elif b"PRIVATE KEY" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise AuditKeyError(f"{path}: not a PEM or OpenSSH Ed25519 key ({exc})") from None
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key
