"""The patients a plan analyses: one row each, their stratum and the plan's columns as numbers.

:func:`patient_table` turns a dataset's Arrow table into a :class:`PatientTable`:

1. **Types.** Every column the plan reads is checked against its role before any row is
   looked at (numbers for numeric variables, comparisons and survival times; strings,
   integers or booleans matching the declared categories for strata and categorical
   variables; ...). A mismatch is a :class:`StatisticsInputError` naming the column.
2. **Cohort.** A row is in the cohort when it meets every filter. A missing value (null,
   or NaN in a float column) meets no filter but ``not_null``, which is exactly "not
   missing": a plan cannot select patients by the absence of a value it cannot see.
3. **Strata.** A cohort row whose strata values are all present and declared gets the
   stratum index of :meth:`AnalysisPlan.stratum_labels` (mixed radix, the last strata
   column varying fastest); any other row leaves the analysis.
4. **One row per patient.** With a privacy-unit column, each unit keeps ONE of its
   remaining rows, chosen uniformly at random by the agent. This is what bounds a
   patient's contribution to every block to one row, whatever the table holds: the
   sensitivities of :mod:`agent.plans.release` assume it.

The choice is made with a key per row of the whole table, drawn before any filter (a
random permutation of the row indices): a unit keeps its remaining row of least key.
Removing every row of one patient (and their keys) then leaves every other patient's
choice unchanged, so neighbouring datasets differ in that patient's one row only, for
every draw of the keys. :func:`patient_table_keyed` takes the keys, so that tests can
hold them fixed; :func:`patient_table` draws them.

Everything is vectorised (Arrow compute and NumPy, no loop over rows): a million
patients take a fraction of a second (``bench/statistics_speed.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from agent.datasets.inspection import unit_type_supported
from agent.plans.model import (
    COMPARISONS,
    AnalysisPlan,
    CategoricalVariable,
    Category,
    CohortFilter,
    FilterOp,
    NumericVariable,
)
from agent.statistics.errors import StatisticsInputError

# Codes of a categorical column (see PatientTable.codes) before they are shifted to the
# release's cells: declared categories are 0..C-1.
_OTHER = -1
_MISSING = -2

_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True, eq=False)
class PatientTable:
    """One row per patient in the analysis (after cohort filters and strata), the plan's
    columns as NumPy data, and each patient's stratum index.

    Every array has ``size`` entries, one per patient, in the order of ``rows``; arrays
    are read-only.
    """

    size: int
    """Patients in the analysis."""
    strata: int
    """The plan's stratum count ``S``."""
    stratum: npt.NDArray[np.int64]
    """Each patient's stratum, in ``0..S-1``."""
    rows: npt.NDArray[np.int64]
    """The row of the input table kept for each patient (increasing)."""
    numbers: Mapping[str, npt.NDArray[np.float64]]
    """Each numeric variable's values as given (not clamped), NaN where missing."""
    codes: Mapping[str, npt.NDArray[np.int64]]
    """Each categorical variable's cell: ``k`` for the ``k``-th declared category, ``C``
    (the category count) for a present value not declared ("other"), ``C + 1`` for missing."""
    time: npt.NDArray[np.float64] | None
    """The survival time, NaN where missing (None without survival)."""
    event: npt.NDArray[np.float64] | None
    """1.0 for an event, 0.0 for censored, NaN where missing (None without survival)."""


def patient_table(
    plan: AnalysisPlan, table: pa.Table, *, unit_column: str | None, rng: np.random.Generator
) -> PatientTable:
    """The patients of ``table`` that ``plan`` analyses, one row each.

    ``table`` holds (at least) ``plan.columns`` and, when given, ``unit_column``; without a
    unit column each row is a patient. ``rng`` chooses the row kept for a patient with
    several remaining rows (see the module doc). Raises :class:`StatisticsInputError`
    when a column is missing or of the wrong type for its role, when a plan value does
    not match its column's type, when the plan reads the unit column, or when the unit
    column holds nulls.
    """
    keys = rng.permutation(table.num_rows).astype(np.int64) if unit_column is not None else None
    return patient_table_keyed(plan, table, unit_column=unit_column, keys=keys)


def patient_table_keyed(
    plan: AnalysisPlan,
    table: pa.Table,
    *,
    unit_column: str | None,
    keys: npt.NDArray[np.int64] | None,
) -> PatientTable:
    """:func:`patient_table` with the row keys given: each unit keeps its remaining row of least key.

    ``keys`` holds one distinct integer per row of ``table`` (required with ``unit_column``,
    ignored without). They must be drawn independently of the data, uniformly over orders
    (a random permutation), for the kept row to be uniform among a unit's rows. Raises
    ValueError when they are missing, of the wrong length or not distinct.
    """
    _check_columns(plan, table, unit_column)
    numbers = _NumberCache(table)
    keep = np.ones(table.num_rows, dtype=bool)
    for item in plan.cohort:
        keep &= _meets(item, table.column(item.column), numbers)
    stratum = np.zeros(table.num_rows, dtype=np.int64)
    for spec in plan.strata:
        codes = _category_codes(table.column(spec.column), spec.categories)
        keep &= codes >= 0
        # Mixed radix, last column fastest: the order of AnalysisPlan.stratum_labels().
        stratum = stratum * len(spec.categories) + np.maximum(codes, 0)
    rows = np.flatnonzero(keep).astype(np.int64)
    if unit_column is not None:
        rows = _one_row_per_unit(table.column(unit_column), rows, keys, table.num_rows)

    values = {
        v.column: _read_only(numbers.get(v.column)[rows]) for v in plan.variables if isinstance(v, NumericVariable)
    }
    codes_by_column: dict[str, npt.NDArray[np.int64]] = {}
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            raw = _category_codes(table.column(variable.column), variable.categories)[rows]
            count = len(variable.categories)
            cells = np.where(raw == _OTHER, count, np.where(raw == _MISSING, count + 1, raw))
            codes_by_column[variable.column] = _read_only(cells.astype(np.int64))
    time: npt.NDArray[np.float64] | None = None
    event: npt.NDArray[np.float64] | None = None
    if plan.survival is not None:
        time = _read_only(numbers.get(plan.survival.time_column)[rows])
        flags = numbers.get(plan.survival.event_column)[rows]
        # Any non-zero value is an event; NaN stays missing (NaN != 0 would say "event").
        event = _read_only(np.where(np.isnan(flags), np.nan, (flags != 0).astype(np.float64)))
    return PatientTable(
        size=int(rows.size),
        strata=plan.stratum_count,
        stratum=_read_only(stratum[rows]),
        rows=_read_only(rows),
        numbers=MappingProxyType(values),
        codes=MappingProxyType(codes_by_column),
        time=time,
        event=event,
    )


# -- one row per patient -----------------------------------------------------------------


def _one_row_per_unit(
    units: pa.ChunkedArray[Any],
    rows: npt.NDArray[np.int64],
    keys: npt.NDArray[np.int64] | None,
    row_count: int,
) -> npt.NDArray[np.int64]:
    """The remaining row of least key of each unit among ``rows``, in increasing row order."""
    if keys is None or keys.shape != (row_count,):
        raise ValueError("a table with a privacy-unit column needs one key per row")
    if rows.size == 0:
        return rows
    # Dictionaries may differ between chunks; their values identify the units.
    units = _decoded(units)
    if rows.size < row_count:
        units = units.take(rows)
    # One hash pass gives each distinct unit a dense id (no sort of the unit values).
    encoded: Any = pc.dictionary_encode(units.combine_chunks())
    ids = np.asarray(encoded.indices, dtype=np.intp)
    row_keys = keys[rows]
    least = np.full(len(encoded.dictionary), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(least, ids, row_keys)
    chosen = row_keys == least[ids]
    kept: npt.NDArray[np.int64] = rows[chosen]
    # Equal keys would keep two rows of one unit: two rows of one patient in the release,
    # more than the sensitivities allow. Refused rather than released.
    if kept.size != least.size:
        raise ValueError("the row keys must be distinct")
    return kept


# -- cohort filters -----------------------------------------------------------------------


class _NumberCache:
    """Number columns as float64 (NaN where missing), each converted once per table."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table
        self._done: dict[str, npt.NDArray[np.float64]] = {}

    def get(self, column: str) -> npt.NDArray[np.float64]:
        if column not in self._done:
            self._done[column] = _as_floats(self._table.column(column))
        return self._done[column]


def _decoded(column: pa.ChunkedArray[Any]) -> pa.ChunkedArray[Any]:
    """The column's values (a dictionary column decoded chunk by chunk)."""
    if not pa.types.is_dictionary(column.type):
        return column
    chunks: list[Any] = column.chunks
    return pa.chunked_array([c.dictionary_decode() for c in chunks], type=column.type.value_type)


def _as_floats(column: pa.ChunkedArray[Any]) -> npt.NDArray[np.float64]:
    # Unsafe casts: integers beyond 2**53 and decimals round to the nearest float64, which
    # moves no comparison with a plan value (all within ±1e9) and no clamped value.
    floats: Any = pc.cast(_decoded(column), pa.float64(), safe=False)
    floats = pc.fill_null(floats, np.nan)
    return np.asarray(floats, dtype=np.float64)


def _meets(item: CohortFilter, column: pa.ChunkedArray[Any], numbers: _NumberCache) -> npt.NDArray[np.bool_]:
    """Whether each row meets ``item``: a missing value meets none but ``not_null``'s negation."""
    family = _family(column.type)
    if family in _NUMBERS:
        x = numbers.get(item.column)
        value = float(item.values[0]) if item.values else 0.0
        # NumPy's comparisons with NaN are false, as a missing value's must be (!= excepted).
        if item.op is FilterOp.NOT_NULL:
            met = ~np.isnan(x)
        elif item.op is FilterOp.LT:
            met = x < value
        elif item.op is FilterOp.LE:
            met = x <= value
        elif item.op is FilterOp.GT:
            met = x > value
        elif item.op is FilterOp.GE:
            met = x >= value
        elif item.op is FilterOp.EQ:
            met = x == value
        elif item.op is FilterOp.NE:
            met = (x != value) & ~np.isnan(x)
        else:
            met = np.isin(x, [float(v) for v in item.values])
        return np.asarray(met, dtype=np.bool_)
    # Strings and booleans: codes against the filter's values (checked to be of the column's type).
    codes = _category_codes(column, tuple(v for v in item.values if isinstance(v, str | bool)))
    if item.op is FilterOp.NOT_NULL:
        met = codes != _MISSING
    elif item.op is FilterOp.EQ:
        met = codes == 0
    elif item.op is FilterOp.NE:
        met = codes == _OTHER
    else:
        met = codes >= 0
    return np.asarray(met, dtype=np.bool_)


# -- categories ---------------------------------------------------------------------------


def _category_codes(column: pa.ChunkedArray[Any], categories: Sequence[Category]) -> npt.NDArray[np.int64]:
    """Each row's index in ``categories``, ``_OTHER`` for a present value not listed, ``_MISSING`` for null.

    ``categories`` match the column's type (checked in :func:`_check_columns`).
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
    # index -1 (not listed) picks the appended 0, replaced by _OTHER.
    codes = np.where(index >= 0, np.asarray([*positions, 0], dtype=np.int64)[index], _OTHER)
    # Logical nulls (a dictionary column's null entries included).
    codes[np.asarray(pc.is_null(column), dtype=np.bool_)] = _MISSING
    return codes


# -- types --------------------------------------------------------------------------------


class _Family(Enum):
    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "boolean"
    STRING = "string"


def _family(arrow_type: pa.DataType) -> _Family | None:
    """The family of a column's values (a dictionary's value type); None for a type no plan reads."""
    if pa.types.is_dictionary(arrow_type):
        return _family(arrow_type.value_type)
    if pa.types.is_boolean(arrow_type):
        return _Family.BOOL
    if pa.types.is_integer(arrow_type):
        return _Family.INTEGER
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return _Family.FLOAT
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return _Family.STRING
    return None


_NUMBERS = frozenset({_Family.INTEGER, _Family.FLOAT})
_NUMBERS_OR_BOOL = frozenset({_Family.INTEGER, _Family.FLOAT, _Family.BOOL})
_CATEGORY_COLUMNS = frozenset({_Family.STRING, _Family.INTEGER, _Family.BOOL})


def _check_columns(plan: AnalysisPlan, table: pa.Table, unit_column: str | None) -> None:
    """Refuses a dataset whose columns do not fit the plan, before any row is read."""
    for name in plan.columns:
        if table.schema.get_field_index(name) < 0:
            raise StatisticsInputError(name, "is missing from the dataset")
    if unit_column is not None:
        # The unit column is never named in a message (see errors.py).
        if unit_column in plan.columns:
            raise StatisticsInputError(None, "is read by the plan; a plan may not read the column identifying patients")
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

    def need(column: str, families: frozenset[_Family], role: str, wanted: str) -> None:
        if _family(arrow_type(column)) not in families:
            raise StatisticsInputError(column, f"{role} needs {wanted} column, found {arrow_type(column)}")

    for item in plan.cohort:
        role = f"a cohort filter {item.op.value!r}"
        if item.op in COMPARISONS:
            need(item.column, _NUMBERS, role, "a number")
        elif item.op is FilterOp.NOT_NULL:
            need(item.column, _NUMBERS_OR_BOOL | _CATEGORY_COLUMNS, role, "a number, string or boolean")
        else:
            # A JSON number matches any number column, a string a string column, a boolean a boolean one.
            family = _value_family(item.values[0])
            if family in _NUMBERS:
                need(item.column, _NUMBERS, f"{role} with a number value", "a number")
            else:
                noun = _NOUNS[family]
                need(item.column, frozenset({family}), f"{role} with {_article(noun)} value", _article(noun))
    for spec in plan.strata:
        _check_categories(spec.column, arrow_type(spec.column), spec.categories, "a stratum")
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            _check_categories(
                variable.column, arrow_type(variable.column), variable.categories, "a categorical variable"
            )
        else:
            need(variable.column, _NUMBERS_OR_BOOL, "a numeric variable", "a number (or boolean)")
    if plan.survival is not None:
        need(plan.survival.time_column, _NUMBERS, "the survival time", "a number")
        need(plan.survival.event_column, _NUMBERS_OR_BOOL, "the survival event", "a boolean or number")


def _value_family(value: float | str | bool | Category) -> _Family:
    """The family of a plan value (a filter value or a category)."""
    if isinstance(value, bool):
        return _Family.BOOL
    if isinstance(value, str):
        return _Family.STRING
    if isinstance(value, int):
        return _Family.INTEGER
    return _Family.FLOAT


_NOUNS = {_Family.INTEGER: "integer", _Family.FLOAT: "number", _Family.BOOL: "boolean", _Family.STRING: "string"}


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _check_categories(column: str, arrow_type: pa.DataType, categories: Sequence[Category], role: str) -> None:
    family = _family(arrow_type)
    if family not in _CATEGORY_COLUMNS:
        raise StatisticsInputError(column, f"{role} needs a string, integer or boolean column, found {arrow_type}")
    declared = _value_family(categories[0])
    if declared is not family:
        noun = _NOUNS[declared]
        raise StatisticsInputError(
            column, f"{role} with {noun} categories needs {_article(noun)} column, found {arrow_type}"
        )


def _read_only(array: npt.NDArray[_T]) -> npt.NDArray[_T]:
    array.flags.writeable = False
    return array
