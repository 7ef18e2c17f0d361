"""Canonical bytes of entries and signed statements, and field validation.

One serialisation is used for everything that is hashed or signed: JSON with
sorted keys, no whitespace, ASCII only (non-ASCII escaped as \\uXXXX), no NaN
or infinities. Lines on disk are a second, equally deterministic layout (the
header keys first, for people reading the file); the verifier re-serialises
every parsed line and requires the bytes to be identical, so an edit that
JSON would parse to the same value (``1e-05`` → ``1E-05``, ``\\u00e9`` →
``\\u00E9``) is still caught.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

GENESIS_HASH = "0" * 64
HEADER_KEYS = ("seq", "time", "kind")
TRAILER_KEYS = ("prev", "hash")
RESERVED_KEYS = frozenset(HEADER_KEYS + TRAILER_KEYS)

CHECKPOINT_STATEMENT_PREFIX = b"edge-agent audit checkpoint v1\n"
HEAD_STATEMENT_PREFIX = b"edge-agent audit head v1\n"
KEY_ROTATION_STATEMENT_PREFIX = b"edge-agent audit key rotation v1\n"


def canonical_bytes(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the entry without its `hash`."""
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_bytes(body)).hexdigest()


def line_bytes(entry: Mapping[str, Any]) -> bytes:
    """The on-disk line (with its newline): seq, time, kind, sorted fields, prev, hash."""
    ordered: dict[str, Any] = {key: entry[key] for key in HEADER_KEYS}
    for key in sorted(entry):
        if key not in RESERVED_KEYS:
            ordered[key] = entry[key]
    for key in TRAILER_KEYS:
        ordered[key] = entry[key]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii") + b"\n"


def checkpoint_statement(*, seq: int, covers_seq: int, covers_hash: str, time: str, signer: str) -> bytes:
    """What a checkpoint signs: the chain up to and including entry `covers_seq`."""
    return CHECKPOINT_STATEMENT_PREFIX + canonical_bytes(
        {"checkpoint_seq": seq, "covers_hash": covers_hash, "covers_seq": covers_seq, "signer": signer, "time": time}
    )


def head_statement(*, seq: int, hash: str, file: str, last_checkpoint_seq: int, time: str, signer: str) -> bytes:
    """What the head record signs: the last entry written and where it is."""
    return HEAD_STATEMENT_PREFIX + canonical_bytes(
        {
            "file": file,
            "hash": hash,
            "last_checkpoint_seq": last_checkpoint_seq,
            "seq": seq,
            "signer": signer,
            "time": time,
        }
    )


def key_rotation_statement(
    *, seq: int, covers_seq: int, covers_hash: str, time: str, signer: str, new_signer: str
) -> bytes:
    """What the old key signs when it hands the log over: the chain up to `covers_seq`, and its successor."""
    return KEY_ROTATION_STATEMENT_PREFIX + canonical_bytes(
        {
            "covers_hash": covers_hash,
            "covers_seq": covers_seq,
            "new_signer": new_signer,
            "rotation_seq": seq,
            "signer": signer,
            "time": time,
        }
    )


def normalise_field(name: str, value: Any) -> Any:
    """Returns the JSON value stored for `value`, or raises TypeError.

    Accepted: None, bool, int, finite float, str, lists/tuples of those and
    dicts with str keys. Tuples become lists (that is what reading gives back).
    """
    return _normalise(value, name)


def _normalise(value: Any, path: str) -> Any:
    if value is None or type(value) in (bool, int, str):
        return value
    # Subclasses (enums, mostly) are stored as the plain value they stand for.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"audit field {path}: {value!r} is not representable in JSON")
        return value
    if isinstance(value, list | tuple):
        return [_normalise(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if isinstance(value, dict):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit field {path}: key {key!r} is not a string")
            result[key] = _normalise(item, f"{path}.{key}")
        return result
    raise TypeError(f"audit field {path}: {type(value).__name__} is not JSON-serialisable")
