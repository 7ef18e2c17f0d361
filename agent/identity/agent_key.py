"""The agent's Ed25519 identity key: generation, loading, fingerprint."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.durable import write_private, write_public


class KeyFileError(Exception):
    """A key file is missing, unreadable or not the kind of key expected."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """OpenSSH-style fingerprint: SHA256 of the raw key, unpadded base64."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


@dataclass(frozen=True)
class AgentKey:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def public_bytes(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def public_key_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def generate_key_file(path: Path, overwrite: bool = False) -> AgentKey:
    """Writes a new key (PKCS#8 PEM, 0600) and its public half beside it (.pub)."""
    if path.exists() and not overwrite:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key")
    key = AgentKey(Ed25519PrivateKey.generate())
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(path, pem)
    public_pem = key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_public(public_key_path(path), public_pem)
    return key


def load_key_file(path: Path) -> AgentKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: identity key not found; create it with `edge-agent keys generate --out {path}`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read identity key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return AgentKey(key)


def load_or_generate_key_file(path: Path) -> tuple[AgentKey, bool]:
    """Development only: loads the key, creating it on first start. Returns (key, created)."""
    if path.exists():
        return load_key_file(path), False
    return generate_key_file(path), True
