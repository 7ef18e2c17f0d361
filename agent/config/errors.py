"""The one error type configuration problems are reported with."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """A configuration problem, located by file and dotted key.

    The message is meant for the operator who edits the file, so it always
    says where the problem is and what would be accepted.
    """

    def __init__(self, source: Path | str | None, key: str | None, problem: str) -> None:
        self.source = str(source) if source is not None else None
        self.key = key
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [part for part in (self.source, self.key) if part]
        return f"{': '.join(where)}: {self.problem}" if where else self.problem
