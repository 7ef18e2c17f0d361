"""The one error of the statistics computations: the dataset does not fit the plan.

A :class:`StatisticsInputError` says which column is at fault and what is wrong with it
("column 'age': a numeric variable needs a number column, found string"). Messages may
reach the coordinator, so they name columns and Arrow types only: never a row value, a
count or anything else computed from the data. The privacy-unit column is never named
(coordinators are not told which column identifies patients; the operator finds it in
the dataset's own checks).
"""

from __future__ import annotations


class StatisticsInputError(ValueError):
    """The dataset cannot be analysed with this plan: a column is missing or of the wrong type,
    a plan value does not match its column, or the privacy-unit column holds nulls.

    ``column`` is the plan column at fault (None for the privacy-unit column); ``problem``
    what is wrong with it.
    """

    def __init__(self, column: str | None, problem: str) -> None:
        where = "the privacy-unit column" if column is None else f"column {column!r}"
        super().__init__(f"{where}: {problem}")
        self.column = column
        self.problem = problem

    def __reduce__(self) -> tuple[type[StatisticsInputError], tuple[str | None, str]]:
        # Raised in the worker process and re-raised in the daemon: pickled by its fields.
        return (type(self), (self.column, self.problem))
