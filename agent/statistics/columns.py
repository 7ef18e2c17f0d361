"""A plan's columns read from Arrow: checked against their roles, then as numbers or category codes.

:func:`check_columns` refuses a dataset whose columns do not fit the plan before any row
is read: numbers (integer, float or decimal; booleans as 0 and 1 where a numeric variable,
an event or a model's outcome allows them) for numeric variables, comparisons, survival
and the model's outcome; strings,
integers or booleans for strata and categorical variables, whose declared categories
must be of the column's JSON type (a string category never matches an integer column);
filter values of the column's family. Timestamps, dates, lists, structs and the like
are read by no plan.

:func:`as_floats` and :func:`category_codes` then read a column as float64 (NaN where
missing) or as each row's index among declared categories. Both accept every Arrow
encoding of their types: chunked, dictionary-encoded, large or view strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from agent.datasets.inspection import unit_type_supported
from agent.packages.plan import COMPARISONS, AnalysisPlan, CategoricalVariable, Category, FilterOp
from agent.statistics.errors import StatisticsInputError

OTHER = -1
"""The code of a present value that is not among the declared categories."""
MISSING = -2
"""The code of a missing value (null; a dictionary column's null entries included)."""


class Family(Enum):
    """The kind of values a column holds, whatever its Arrow encoding."""

    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "boolean"
    STRING = "string"


def family(arrow_type: pa.DataType) -> Family | None:
    """The family of a column's values (a dictionary's value type); None for a type no plan reads."""
    if pa.types.is_dictionary(arrow_type):
        return family(arrow_type.value_type)
    if pa.types.is_boolean(arrow_type):
        return Family.BOOL
    if pa.types.is_integer(arrow_type):
        return Family.INTEGER
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return Family.FLOAT
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return Family.STRING
    return None


NUMBERS = frozenset({Family.INTEGER, Family.FLOAT})
NUMBERS_OR_BOOL = frozenset({Family.INTEGER, Family.FLOAT, Family.BOOL})
CATEGORY_COLUMNS = frozenset({Family.STRING, Family.INTEGER, Family.BOOL})


def check_columns(plan: AnalysisPlan, table: pa.Table, unit_column: str | None) -> None:
    """Refuses a dataset whose columns do not fit the plan, before any row is read."""
    for name in plan.columns:
        # The unit column is not among the columns a plan sees: a plan naming it is told what
        # it is told of any column the dataset does not expose, and learns nothing (errors.py).
        if table.schema.get_field_index(name) < 0 or name == unit_column:
            raise StatisticsInputError(name, "is missing from the dataset")
    if unit_column is not None:
        if table.schema.get_field_index(unit_column) < 0:
            raise StatisticsInputError(None, "is missing from the dataset")
        if not unit_type_supported(table.schema.field(unit_column).type):
            raise StatisticsInputError(None, "must be an integer, string or binary column")
        # Logical nulls: a dictionary column may also hold a null in its dictionary.
        if pc.any(pc.is_null(table.column(unit_column))).as_py():
            raise StatisticsInputError(None, "holds nulls: every row must name its patient")

    def arrow_type(column: str) -> pa.DataType:
        found: pa.DataType = table.schema.field(column).type
        return found

    def need(column: str, families: frozenset[Family], role: str, wanted: str) -> None:
        if family(arrow_type(column)) not in families:
            raise StatisticsInputError(column, f"{role} needs {wanted} column, found {arrow_type(column)}")

    for item in plan.cohort:
        role = f"a cohort filter {item.op.value!r}"
        if item.op in COMPARISONS:
            need(item.column, NUMBERS, role, "a number")
        elif item.op is FilterOp.NOT_NULL:
            need(item.column, NUMBERS_OR_BOOL | CATEGORY_COLUMNS, role, "a number, string or boolean")
        else:
            # A JSON number matches any number column, a string a string column, a boolean a boolean one.
            value_kind = _value_family(item.values[0])
            if value_kind in NUMBERS:
                need(item.column, NUMBERS, f"{role} with a number value", "a number")
            else:
                noun = _NOUNS[value_kind]
                need(item.column, frozenset({value_kind}), f"{role} with {_article(noun)} value", _article(noun))
    for spec in plan.strata:
        _check_categories(spec.column, arrow_type(spec.column), spec.categories, "a stratum")
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            _check_categories(
                variable.column, arrow_type(variable.column), variable.categories, "a categorical variable"
            )
        else:
            need(variable.column, NUMBERS_OR_BOOL, "a numeric variable", "a number (or boolean)")
    if plan.survival is not None:
        need(plan.survival.time_column, NUMBERS, "the survival time", "a number")
        need(plan.survival.event_column, NUMBERS_OR_BOOL, "the survival event", "a boolean or number")
    if plan.model is not None and plan.model.outcome is not None:
        need(plan.model.outcome, NUMBERS_OR_BOOL, "the model's outcome", "a boolean or number")


def _value_family(value: float | str | bool | Category) -> Family:
    """The family of a plan value (a filter value or a category)."""
    if isinstance(value, bool):
        return Family.BOOL
    if isinstance(value, str):
        return Family.STRING
    if isinstance(value, int):
        return Family.INTEGER
    return Family.FLOAT


_NOUNS = {Family.INTEGER: "integer", Family.FLOAT: "number", Family.BOOL: "boolean", Family.STRING: "string"}


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _check_categories(column: str, arrow_type: pa.DataType, categories: Sequence[Category], role: str) -> None:
    found = family(arrow_type)
    if found not in CATEGORY_COLUMNS:
        raise StatisticsInputError(column, f"{role} needs a string, integer or boolean column, found {arrow_type}")
    declared = _value_family(categories[0])
    if declared is not found:
        noun = _NOUNS[declared]
        raise StatisticsInputError(
            column, f"{role} with {noun} categories needs {_article(noun)} column, found {arrow_type}"
        )


def decoded(column: pa.ChunkedArray[Any]) -> pa.ChunkedArray[Any]:
    """The column's values (a dictionary column decoded chunk by chunk)."""
    if not pa.types.is_dictionary(column.type):
        return column
    chunks: list[Any] = column.chunks
    return pa.chunked_array([c.dictionary_decode() for c in chunks], type=column.type.value_type)


def as_floats(column: pa.ChunkedArray[Any]) -> npt.NDArray[np.float64]:
    """A number or boolean column as float64 (booleans 0 and 1), NaN where null or NaN."""
    # Unsafe casts: integers beyond 2**53 and decimals round to the nearest float64, which
    # moves no comparison with a plan value (all within ±1e9) and no clamped value.
    floats: Any = pc.cast(decoded(column), pa.float64(), safe=False)
    floats = pc.fill_null(floats, np.nan)
    return np.asarray(floats, dtype=np.float64)


def category_codes(column: pa.ChunkedArray[Any], categories: Sequence[Category]) -> npt.NDArray[np.int64]:
    """Each row's index in ``categories``, ``OTHER`` for a present value not listed, ``MISSING`` for null.

    ``categories`` match the column's type (checked in :func:`check_columns`).
    """
    value_type: Any = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if pa.types.is_string_view(value_type):
        # index_in has no string_view kernel.
        column = pc.cast(column, pa.large_string())
        value_type = pa.large_string()
    positions = list(range(len(categories)))
    listed: list[Any] = list(categories)
    if pa.types.is_integer(value_type):
        # A category outside the column's integer range can match no row, and Arrow
        # refuses to cast it into the column's type: left out of the value set.
        limits: Any = np.iinfo(value_type.to_pandas_dtype())
        positions = [i for i, c in enumerate(categories) if limits.min <= int(c) <= limits.max]
        listed = [categories[i] for i in positions]
    value_set = pa.array(listed, type=value_type)
    found: Any = pc.index_in(column, value_set=value_set)
    index = np.asarray(pc.fill_null(found, -1), dtype=np.int64)
    # index -1 (not listed) picks the appended 0, replaced by OTHER.
    codes = np.where(index >= 0, np.asarray([*positions, 0], dtype=np.int64)[index], OTHER)
    # Logical nulls (a dictionary column's null entries included).
    codes[np.asarray(pc.is_null(column), dtype=np.bool_)] = MISSING
    return codes
