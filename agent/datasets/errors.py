"""Exceptions raised by the dataset catalog.

Everything derives from DatasetError so that the CLI and the gRPC layer can map
the whole family to user-facing messages with one ``except`` clause, while the
builtin bases (ValueError, KeyError) keep generic callers working.
"""

from __future__ import annotations


class DatasetError(Exception):
    """Base class of every error raised by ``agent.datasets``."""


class DatasetSpecError(DatasetError, ValueError):
    """A dataset declaration is invalid (bad id, format, path or column list)."""


class UnknownDatasetError(DatasetError, KeyError):
    """No dataset with the given id is declared or registered."""

    def __init__(self, dataset_id: str, message: str | None = None) -> None:
        self.dataset_id = dataset_id
        self.message = message if message is not None else f"unknown dataset {dataset_id!r}"
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[UnknownDatasetError], tuple[str, str]]:
        # The default pickling replays ``args`` (the message alone) into
        # __init__, which would turn the message into the id when the error
        # crosses a process boundary (worker processes).
        return (type(self), (self.dataset_id, self.message))

    def __str__(self) -> str:
        # KeyError.__str__ returns repr(arg), which would print the message in
        # quotes; operators read these messages directly.
        return self.message


class DuplicateDatasetError(DatasetError):
    """A dataset id is declared or registered more than once."""

    def __init__(self, dataset_id: str, message: str | None = None) -> None:
        self.dataset_id = dataset_id
        self.message = message if message is not None else f"dataset {dataset_id!r} already exists"
        super().__init__(self.message)

    def __reduce__(self) -> tuple[type[DuplicateDatasetError], tuple[str, str]]:
        # See UnknownDatasetError.__reduce__.
        return (type(self), (self.dataset_id, self.message))


class DatasetRegistryError(DatasetError):
    """The registry file cannot be opened, read or written."""


class DatasetUnavailableError(DatasetError):
    """A declared dataset cannot be opened right now (missing, unreadable, corrupt).

    ``reason`` is worded for an operator and never quotes row values.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
