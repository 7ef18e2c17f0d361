"""A strict reader over one TOML table: typed getters, located errors, no unknown keys.

Shared by agent.toml and policy.toml so both report problems the same way:
file, dotted key, what was wrong and what would be accepted.
"""

from __future__ import annotations

import datetime as dt
import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.config.errors import ConfigError


def read_toml_file(path: Path, missing: str = "file not found") -> bytes:
    """The bytes of a TOML file; every failure is a ConfigError naming the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, None, missing) from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None


def decode_utf8(data: bytes, source: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, None, "not UTF-8 text") from None


class TomlTable:
    """A TOML table being read; remembers which keys were used and where it is."""

    def __init__(self, source: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    @classmethod
    def parse(cls, text: str, source: Path) -> TomlTable:
        """The root table of a TOML document; a syntax error is a ConfigError naming ``source``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, None, f"not valid TOML: {exc}") from None
        return cls(source, "", data)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def _get(self, name: str, kinds: tuple[type, ...], kind_name: str) -> Any:
        self.used.add(name)
        if name not in self.data:
            return None
        value = self.data[name]
        # bool is an int in Python; a number field given `true` is a mistake.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(name, f"expected {kind_name}, got a boolean")
        if not isinstance(value, kinds):
            raise self.error(name, f"expected {kind_name}, got {type(value).__name__} {value!r}")
        return value

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self._get(name, (str,), "a string")
        return default if value is None else str(value)

    def required_string(self, name: str) -> str:
        value = self.string(name)
        if value is None:
            raise self.error(name, "is required")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self._get(name, (int,), "an integer")
        if value is None:
            return default
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {value}")
        return int(value)

    def number(self, name: str, default: float, minimum: float, maximum: float) -> float:
        value = self._get(name, (int, float), "a number")
        if value is None:
            return default
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be between {minimum} and {maximum}, got {value}")
        return float(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}; got {value!r}")
        return str(value)

    def path(self, name: str, base: Path, default: Path | None = None) -> Path:
        value = self.string(name)
        if value is None:
            if default is None:
                raise self.error(name, "is required")
            return default
        if not value.strip():
            raise self.error(name, "must not be empty")
        # Relative paths are relative to the config file, not to whatever
        # directory the service manager happened to start us in.
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()

    def string_list(self, name: str) -> tuple[str, ...] | None:
        value = self._get(name, (list,), "a list of strings")
        if value is None:
            return None
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.error(f"{name}[{index}]", f"expected a non-empty string, got {item!r}")
        if len(set(value)) != len(value):
            raise self.error(name, "lists a value more than once")
        return tuple(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, (bool,), "true or false")
        return default if value is None else bool(value)

    def optional_integer(self, name: str, minimum: int, maximum: int) -> int | None:
        if name not in self.data:
            self.used.add(name)
            return None
        return self.integer(name, 0, minimum, maximum)

    def optional_number(self, name: str, minimum: float, maximum: float) -> float | None:
        if name not in self.data:
            self.used.add(name)
            return None
        return self.number(name, 0.0, minimum, maximum)

    def instant(self, name: str, end_of_day: bool = False) -> dt.datetime | None:
        """A TOML date or offset date-time, as an aware UTC datetime.

        A bare date means the start of that day (UTC), or with `end_of_day`
        the start of the next day, so `valid_until = 2027-06-30` includes
        the whole of 30 June.
        """
        value = self._get(name, (dt.date, dt.datetime), "a date (2027-06-30) or date-time with offset")
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                raise self.error(name, "a date-time needs a UTC offset, e.g. 2027-06-30T00:00:00Z")
            return value.astimezone(dt.UTC)
        start = dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return start + dt.timedelta(days=1) if end_of_day else start

    def date(self, name: str) -> dt.date | None:
        value = self._get(name, (dt.date,), "a date such as 2027-06-30")
        if value is None:
            return None
        if isinstance(value, dt.datetime):
            raise self.error(name, "expected a date without a time, e.g. 2027-06-30")
        return dt.date(value.year, value.month, value.day)

    def table(self, name: str) -> TomlTable:
        value = self._get(name, (dict,), "a table")
        return TomlTable(self.source, self.key(name), value or {})

    def tables(self, name: str) -> list[TomlTable]:
        value = self._get(name, (list,), "an array of tables ([[...]])")
        tables = []
        for index, item in enumerate(value or []):
            if not isinstance(item, dict):
                raise self.error(f"{name}[{index}]", "expected a table")
            tables.append(TomlTable(self.source, f"{self.key(name)}[{index}]", item))
        return tables

    def finish(self) -> None:
        """Rejects keys nobody asked for, suggesting the likely intended one."""
        for name in self.data:
            if name not in self.used:
                close = difflib.get_close_matches(name, sorted(self.used), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                known = ", ".join(sorted(self.used))
                raise self.error(name, f"unknown key{hint} (known keys: {known})")
