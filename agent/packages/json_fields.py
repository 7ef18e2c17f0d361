"""Reading a signed JSON document field by field: every problem names the field at fault.

The manifest and the analysis plan it may carry are read with these: a wrong type, a
missing or unknown key is refused with ``RejectionCode.MANIFEST_INVALID`` and a message
such as ``manifest field plan.variables[2].bounds: must be a JSON array``.
"""

from __future__ import annotations

import math
import re
import unicodedata
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from agent.packages.errors import PackageRejected, RejectionCode

MAX_COLUMN_NAME = 256

_Choice = TypeVar("_Choice", bound=StrEnum)


def fail(field: str, problem: str) -> NoReturn:
    raise PackageRejected(RejectionCode.MANIFEST_INVALID, f"manifest field {field}: {problem}")


class JsonObject:
    """A JSON object being read: every key must be consumed, unknown keys are refused."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            fail(path or "(top level)", "must be a JSON object")
        self.value: dict[str, Any] = value
        self.path = path
        self.seen: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.value

    def get(self, key: str) -> Any:
        if key not in self.value:
            fail(self.field(key), "is required")
        self.seen.add(key)
        return self.value[key]

    def string(self, key: str, *, max_length: int = 256, pattern: re.Pattern[str] | None = None) -> str:
        value = self.get(key)
        return string_field(value, self.field(key), max_length=max_length, pattern=pattern)

    def number(self, key: str) -> float:
        return number_field(self.get(key), self.field(key))

    def finish(self) -> None:
        unknown = sorted(set(self.value) - self.seen)
        if unknown:
            fail(self.field(unknown[0]), "is not part of the format")


def string_field(value: Any, field: str, *, max_length: int = 256, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        fail(field, "must be a string")
    if not value or len(value) > max_length:
        fail(field, f"must have 1 to {max_length} characters")
    if pattern is not None and not pattern.match(value):
        fail(field, f"must match {pattern.pattern}")
    return value


def column_field(value: Any, field: str) -> str:
    return printable_field(value, field, max_length=MAX_COLUMN_NAME)


# Control (Cc), format (Cf: bidirectional overrides, zero-width characters) and line or
# paragraph separators (Zl, Zp): characters that can make a reviewer's terminal show other
# text than the signed document holds.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp"})


def printable_field(value: Any, field: str, *, max_length: int = 256) -> str:
    """A string shown to people (a column, a category, a filter value): no character that
    could rewrite what a terminal or a report displays."""
    text = string_field(value, field, max_length=max_length)
    if any(unicodedata.category(ch) in _UNPRINTABLE for ch in text):
        fail(field, "must not contain control, format or separator characters")
    return text


def number_field(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(field, "must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range (JSON allows 10**400)
        fail(field, "must be finite")
    if not math.isfinite(number):
        fail(field, "must be finite")
    return number


def integer_field(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(field, "must be an integer")
    if not low <= value <= high:
        fail(field, f"must be between {low} and {high}")
    return value


def array_field(value: Any, field: str, *, min_items: int, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        fail(field, "must be a JSON array")
    if not min_items <= len(value) <= max_items:
        fail(field, f"must have {min_items} to {max_items} items")
    return value


def enum_field(value: Any, field: str, choices: type[_Choice]) -> _Choice:
    """``value`` as a member of the string enum ``choices``; the refusal lists the values it takes."""
    try:
        return choices(value)
    except ValueError:
        fail(field, f"must be one of {[choice.value for choice in choices]}")
