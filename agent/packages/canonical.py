"""Canonical JSON (RFC 8785, "JCS") for the signed manifest and the signature envelope.

Canonical bytes are UTF-8 JSON with object keys sorted, no insignificant whitespace,
strings escaped as ``JSON.stringify`` does and numbers written as ECMAScript writes
them (``1e-7``, ``0.25``, ``100`` for ``100.0``). Any RFC 8785 implementation (or
``JSON.stringify`` over key-sorted objects in JavaScript) produces identical bytes for
the documents this format allows: keys are ASCII, integers stay within +-2^53.

The verifier parses strictly (no duplicate keys, no NaN/Infinity) and requires that
re-serialising the parsed value gives back exactly the bytes it was given, so there is
one and only one byte string for each manifest.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalJsonError(ValueError):
    """The value cannot be written canonically, or the bytes are not valid strict JSON."""


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 bytes of ``value`` (dicts, lists, str, int, float, bool, None)."""
    parts: list[str] = []
    _write(value, parts, depth=0)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalJsonError("string holds a lone surrogate") from None


def parse_strict_json(data: bytes) -> Any:
    """Parses UTF-8 JSON, refusing duplicate keys, NaN/Infinity and deep nesting."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CanonicalJsonError("not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except CanonicalJsonError:
        raise
    except (ValueError, RecursionError) as exc:
        raise CanonicalJsonError(f"not valid JSON ({type(exc).__name__})") from None


def es_number(value: float) -> str:
    """ECMAScript Number::toString of a finite double (RFC 8785 section 3.2.2.3)."""
    if not math.isfinite(value):
        raise CanonicalJsonError("NaN and infinities have no JSON form")
    if value == 0.0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digit string that round-trips, which is what ES uses.
    digits_tuple = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(str(d) for d in digits_tuple.digits).lstrip("0")
    exponent = int(digits_tuple.exponent)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped
    k = len(digits)
    n = exponent + k
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"
    return sign + text


def _write(value: Any, parts: list[str], depth: int) -> None:
    if depth > 64:
        raise CanonicalJsonError("nested too deeply")
    if value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise CanonicalJsonError("integer beyond +-2^53")
        parts.append(str(value))
    elif isinstance(value, float):
        parts.append(es_number(value))
    elif isinstance(value, str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        keys = list(value)
        if not all(isinstance(key, str) for key in keys):
            raise CanonicalJsonError("object keys must be strings")
        # RFC 8785 sorts by UTF-16 code units; for the BMP this is code-point order.
        keys.sort(key=lambda key: key.encode("utf-16-be"))
        parts.append("{")
        for index, key in enumerate(keys):
            if index:
                parts.append(",")
            parts.append(json.dumps(key, ensure_ascii=False))
            parts.append(":")
            _write(value[key], parts, depth + 1)
        parts.append("}")
    elif isinstance(value, Sequence):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts, depth + 1)
        parts.append("]")
    else:
        raise CanonicalJsonError(f"cannot write {type(value).__name__} as JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in pairs:
        if key in result:
            raise CanonicalJsonError(f"duplicate key {key!r}")
        result[key] = item
    return result


def _no_constant(name: str) -> Any:
    raise CanonicalJsonError(f"{name} is not allowed")
