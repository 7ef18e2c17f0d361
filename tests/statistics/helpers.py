"""An independent pandas computation of a plan's exact blocks, and small builders for the tests.

The oracle reads the plan and the spec of the blocks (agent/packages/release_layout.py), not the
agent's code: filters with pandas comparisons, strata by their labels
(:meth:`AnalysisPlan.stratum_labels`), clamping with ``Series.clip``, bins with
``pd.cut``, categories with ``value_counts``-style mapping, survival intervals with
``pd.cut`` on ``[0, t_1, ..., t_J, inf]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from agent.packages.manifest import PLAN_KINDS, TaskKind, plan_lacks
from agent.packages.plan import AnalysisPlan, CategoricalVariable, FilterOp, parse_plan
from agent.packages.release_layout import COUNT, SURVIVAL_EXITS, layout
from agent.statistics.patients import PatientTable, patient_table
from agent.statistics.tables import exact_release

# The plan kinds whose exact blocks agent.statistics.tables computes (dp_glm's and dp_propensity's
# need coefficients: agent.statistics.glm, agent.statistics.weighting).
TABLE_KINDS = tuple(kind for kind in PLAN_KINDS if kind not in (TaskKind.DP_GLM, TaskKind.DP_PROPENSITY))


def plan_of(value: dict[str, Any]) -> AnalysisPlan:
    """A plan from its JSON, through the strict parser (as a package carries it)."""
    value = {"cohort": [], "strata": [], "variables": [], **value}
    return parse_plan(value)


def exact_blocks(
    plan: AnalysisPlan,
    table: pa.Table,
    *,
    unit_column: str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every exact block of the plan (describe and, with survival, survival) on ``table``."""
    patients = patient_table(plan, table, unit_column=unit_column, rng=np.random.default_rng(seed))
    return blocks_of(plan, patients)


def blocks_of(plan: AnalysisPlan, patients: PatientTable) -> dict[str, np.ndarray]:
    blocks: dict[str, np.ndarray] = {}
    for kind in TABLE_KINDS:
        if plan_lacks(plan, kind) is None:
            blocks.update(exact_release(plan, layout(plan, kind), patients))
    return blocks


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool | np.bool_) else str(value)


def _missing(series: pd.Series) -> pd.Series:
    return series.isna()


def oracle(plan: AnalysisPlan, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The exact blocks computed with pandas on ``frame`` (one row per patient)."""
    df = frame
    for item in plan.cohort:
        column = df[item.column]
        present = ~_missing(column)
        value = item.values[0] if item.values else None
        if item.op is FilterOp.NOT_NULL:
            met = present
        elif item.op is FilterOp.LT:
            met = present & (column < value)
        elif item.op is FilterOp.LE:
            met = present & (column <= value)
        elif item.op is FilterOp.GT:
            met = present & (column > value)
        elif item.op is FilterOp.GE:
            met = present & (column >= value)
        elif item.op is FilterOp.EQ:
            met = present & (column == value)
        elif item.op is FilterOp.NE:
            met = present & (column != value)
        else:
            met = present & column.isin(list(item.values))
        df = df[met.fillna(False).astype(bool)]

    labels = list(plan.stratum_labels())
    if plan.strata:
        text = None
        for spec in plan.strata:
            listed = df[spec.column].isin(list(spec.categories)) & ~_missing(df[spec.column])
            df = df[listed]
            part = df[spec.column].map(lambda v, c=spec.column: f"{c}={_label(v)}")
            text = part if text is None else text.loc[df.index] + ", " + part
        stratum = text.map(labels.index) if text is not None and len(df) else pd.Series([], dtype=int)
    else:
        stratum = pd.Series(0, index=df.index)
    strata = len(labels)

    def table(cell: pd.Series, cells: int) -> np.ndarray:
        counts = pd.crosstab(
            pd.Categorical(stratum.loc[cell.index], categories=range(strata)),
            pd.Categorical(cell, categories=range(cells)),
            dropna=False,
        )
        return counts.to_numpy().astype(float)

    def sums(values: pd.Series) -> np.ndarray:
        grouped = values.groupby(stratum.loc[values.index]).sum()
        return grouped.reindex(range(strata), fill_value=0.0).to_numpy(dtype=float).reshape(strata, 1)

    out: dict[str, np.ndarray] = {COUNT: table(pd.Series(0, index=df.index), 1)}
    for variable in plan.variables:
        column = df[variable.column]
        present = ~_missing(column)
        if isinstance(variable, CategoricalVariable):
            position = {c: i for i, c in enumerate(variable.categories)}
            count = len(variable.categories)
            cell = column.map(lambda v, p=position, n=count: p.get(v, n) if not pd.isna(v) else n + 1)
            out[f"{variable.column}.counts"] = table(cell.astype(int), count + 2)
            continue
        out[f"{variable.column}.n"] = table((~present).astype(int), 2)
        clamped = column[present].astype(float).clip(variable.low, variable.high)
        centred = clamped - variable.centre
        out[f"{variable.column}.sum"] = sums(centred)
        out[f"{variable.column}.sumsq"] = sums(centred**2)
        if variable.bins:
            bins = len(variable.bins) - 1
            binned = pd.cut(clamped, list(variable.bins), right=False, labels=False)
            # right=False leaves v == high outside every bin: the spec puts it in the last.
            binned = binned.where(clamped < variable.high, bins - 1)
            out[f"{variable.column}.histogram"] = table(binned.astype(int), bins)
    if plan.survival is not None:
        time = df[plan.survival.time_column].astype(float)
        event = df[plan.survival.event_column]
        usable = time.notna() & (time >= 0) & event.notna()
        grid = list(plan.survival.grid)
        interval = pd.cut(time[usable], [0.0, *grid, np.inf], right=True, include_lowest=True, labels=False)
        cell = pd.Series(2 * (len(grid) + 1), index=df.index)
        cell[usable] = 2 * interval.astype(int) + (event[usable].astype(float) == 0).astype(int)
        out[SURVIVAL_EXITS] = table(cell.astype(int), 2 * (len(grid) + 1) + 1)
    return out


def assert_blocks_equal(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for name, values in theirs.items():
        np.testing.assert_allclose(ours[name], values, rtol=1e-12, atol=1e-9, err_msg=name)
