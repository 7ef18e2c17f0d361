"""Errors of the DP runtime (isolation wrapper, data path, task computations).

Every error derives from :class:`RuntimeTaskError`. Messages are written for the remote
coordinator: they name a parameter, column or hyperparameter and never quote a row
value, a local path or anything computed from the data. Where the underlying cause may
depend on row values (an onnxruntime failure inside the package graph), the cause is
kept in :attr:`GraphExecutionError.detail` for the local log only.
"""

from __future__ import annotations


class RuntimeTaskError(Exception):
    """Base of every error raised by :mod:`agent.runtime` and the DP helpers it uses."""


class WrapperBuildError(RuntimeTaskError):
    """The package graph cannot be embedded in the agent's isolation wrapper."""


class GraphExecutionError(RuntimeTaskError):
    """onnxruntime failed while running the wrapper (for example a gradient whose size
    differs from its parameter's). ``detail`` holds onnxruntime's message for the local
    log: it may depend on row values and must not be sent to the coordinator."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    def __reduce__(self) -> tuple[type[GraphExecutionError], tuple[str, str]]:
        return (type(self), (str(self), self.detail))


class ParameterError(RuntimeTaskError):
    """A parameter tensor of the request is missing, unexpected or malformed."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"parameter {name!r}: {problem}")
        self.name = name
        self.problem = problem

    def __reduce__(self) -> tuple[type[ParameterError], tuple[str, str]]:
        return (type(self), (self.name, self.problem))


class HyperparameterError(RuntimeTaskError):
    """A hyperparameter is not a usable number or lies outside the declared bounds."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"hyperparameter {name}: {problem}")
        self.name = name
        self.problem = problem

    def __reduce__(self) -> tuple[type[HyperparameterError], tuple[str, str]]:
        return (type(self), (self.name, self.problem))


class ColumnError(RuntimeTaskError):
    """A column the package reads is missing from the dataset or has an unusable type."""

    def __init__(self, column: str, problem: str) -> None:
        super().__init__(f"column {column!r}: {problem}")
        self.column = column
        self.problem = problem

    def __reduce__(self) -> tuple[type[ColumnError], tuple[str, str]]:
        return (type(self), (self.column, self.problem))


class ColumnMissingError(ColumnError):
    """The dataset (as exposed by its allow-list) has no such column."""


class ColumnTypeError(ColumnError):
    """The column's Arrow type cannot feed the declared dtype or preprocessing."""


class PrivacyUnitError(RuntimeTaskError):
    """The dataset's privacy-unit column cannot group its rows (missing, null, or of a type without exact equality)."""


class NoUsableRowsError(RuntimeTaskError):
    """A training step saw no row without nulls: the update cannot be normalised."""


class CohortTooSmallError(RuntimeTaskError):
    """A pass over the dataset found fewer usable rows than the policy's minimum cohort size."""


class TaskCancelledError(RuntimeTaskError):
    """The cancellation callback asked the task to stop; nothing is released."""
