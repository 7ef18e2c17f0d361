"""The patients a plan analyses: one row each, their stratum and the plan's columns as numbers.

:func:`patient_table` turns a dataset's Arrow table into a :class:`PatientTable`:

1. **Types.** Every column the plan reads is checked against its role before any row is
   looked at (:func:`agent.statistics.columns.check_columns`). A mismatch is a
   :class:`~agent.statistics.errors.StatisticsInputError` naming the column.
2. **Cohort.** A row is in the cohort when it meets every filter. A missing value (null,
   or NaN in a float column) meets no filter but ``not_null``, which is exactly "not
   missing": a plan cannot select patients by the absence of a value it cannot see.
3. **Strata.** A cohort row whose strata values are all present and declared gets the
   stratum index of :meth:`AnalysisPlan.stratum_labels` (mixed radix, the last strata
   column varying fastest); any other row leaves the analysis.
4. **One row per patient.** With a privacy-unit column, each unit keeps ONE of its
   remaining rows, chosen uniformly at random by the agent. This is what bounds a
   patient's contribution to every block to one row, whatever the table holds: the
   sensitivities of :mod:`agent.packages.release_layout` assume it.

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

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from agent.packages.plan import AnalysisPlan, CategoricalVariable, CohortFilter, FilterOp, NumericVariable
from agent.statistics.columns import MISSING, NUMBERS, OTHER, as_floats, category_codes, check_columns, decoded, family

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
    outcome: npt.NDArray[np.float64] | None = None
    """The model's outcome as given (booleans 0 and 1), NaN where missing (None without a model)."""


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
    check_columns(plan, table, unit_column)
    numbers = _NumberCache(table)
    keep = np.ones(table.num_rows, dtype=bool)
    for item in plan.cohort:
        keep &= _meets(item, table.column(item.column), numbers)
    stratum = np.zeros(table.num_rows, dtype=np.int64)
    for spec in plan.strata:
        codes = category_codes(table.column(spec.column), spec.categories)
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
            # Coded on the kept rows only (the cohort may be a small part of the table).
            column = table.column(variable.column)
            raw = category_codes(column.take(rows) if rows.size < table.num_rows else column, variable.categories)
            count = len(variable.categories)
            cells = np.where(raw == OTHER, count, np.where(raw == MISSING, count + 1, raw))
            codes_by_column[variable.column] = _read_only(cells.astype(np.int64))
    time: npt.NDArray[np.float64] | None = None
    event: npt.NDArray[np.float64] | None = None
    if plan.survival is not None:
        time = _read_only(numbers.get(plan.survival.time_column)[rows])
        flags = numbers.get(plan.survival.event_column)[rows]
        # Any non-zero value is an event; NaN stays missing (NaN != 0 would say "event").
        event = _read_only(np.where(np.isnan(flags), np.nan, (flags != 0).astype(np.float64)))
    # As given: which values make a usable outcome is the model's to say (agent.statistics.glm).
    outcome_column = None if plan.model is None else plan.model.outcome
    outcome = None if outcome_column is None else _read_only(numbers.get(outcome_column)[rows])
    return PatientTable(
        size=int(rows.size),
        strata=plan.stratum_count,
        stratum=_read_only(stratum[rows]),
        rows=_read_only(rows),
        numbers=MappingProxyType(values),
        codes=MappingProxyType(codes_by_column),
        time=time,
        event=event,
        outcome=outcome,
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
    units = decoded(units)
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
            self._done[column] = as_floats(self._table.column(column))
        return self._done[column]


def _meets(item: CohortFilter, column: pa.ChunkedArray[Any], numbers: _NumberCache) -> npt.NDArray[np.bool_]:
    """Whether each row meets ``item``: a missing value meets none but ``not_null``'s negation."""
    kind = family(column.type)
    if kind in NUMBERS:
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
    codes = category_codes(column, tuple(v for v in item.values if isinstance(v, str | bool)))
    if item.op is FilterOp.NOT_NULL:
        met = codes != MISSING
    elif item.op is FilterOp.EQ:
        met = codes == 0
    elif item.op is FilterOp.NE:
        met = codes == OTHER
    else:
        met = codes >= 0
    return np.asarray(met, dtype=np.bool_)


def _read_only(array: npt.NDArray[_T]) -> npt.NDArray[_T]:
    array.flags.writeable = False
    return array
