"""CPU time of a plan's whole computation against plain pandas computing the same statistics.

    .venv/bin/python bench/statistics_speed.py [--patients 1000000] [--rows-per-patient 1]
        [--repeats 3] [--seed 0]

A synthetic table of ``--patients`` patients (each on ``--rows-per-patient`` rows, the
rows shuffled) with an int64 ``patient_id``, three strata columns (``arm`` string 2
categories, ``sex`` dictionary-encoded string 2, ``site`` int64 4: 16 strata), ten
variables (six float64 numeric with about 2% nulls, five of them with 10 to 40 bins;
``smoker`` string, ``ecog`` int64, ``region`` string and ``diabetic`` bool categorical)
and a survival outcome (``time`` float64 on a grid of 20 points, ``event`` bool). The
plan keeps patients with ``age >= 18`` whose ``bmi`` is not null.

Timed (CPU seconds, ``time.process_time``: all threads of this process, so Arrow's
thread pool counts; wall seconds beside it), each the median of ``--repeats`` runs,
the two taking turns:

* agent: ``patient_table`` (types, filters, strata, one random row per patient by
  ``patient_id``) + ``exact_release`` of the describe and the survival layouts +
  ``noisy_release`` of both (noise multiplier 1, minimum cell size 10), from the Arrow
  table;
* pandas: the same non-private statistics from a DataFrame of the same rows (built
  before timing): the filters, one random row per patient (shuffle, drop_duplicates),
  groupby counts, present/missing counts, sums and sums of squares of clipped centred
  values, histograms (pd.cut), value_counts per stratum, exits per interval and event.

The agent's exact blocks are checked against pandas' figures once, before timing (a
speed comparison of different computations would mean nothing; with one row per
patient both keep the same rows).

Measured on 2 shared cores (load average about 2 from other jobs), medians of 5 runs:
1,000,000 patients on 1,000,000 rows: agent 0.60-0.80 CPU s (patient_table 0.36,
exact_release of both layouts 0.25, noisy_release 0.003), pandas 2.0-2.8 CPU s: ratio
0.26-0.31. On 3,000,000 rows (3 per patient, --rows-per-patient 3): agent 1.4 CPU s,
pandas 5.3 (0.27).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.packages.manifest import PLAN_KINDS
from agent.packages.plan import AnalysisPlan, NumericVariable, parse_plan
from agent.packages.release_layout import layout
from agent.statistics.patients import patient_table
from agent.statistics.tables import exact_release, noisy_release

STRATA = {"arm": ["control", "treated"], "sex": ["F", "M"], "site": [1, 2, 3, 4]}
NUMERIC = {  # column: (low, high, bins, mean, sd)
    "age": (18.0, 90.0, 36, 60.0, 12.0),
    "bmi": (15.0, 50.0, 35, 27.0, 5.0),
    "sbp": (80.0, 200.0, 24, 130.0, 18.0),
    "dbp": (40.0, 120.0, 16, 80.0, 10.0),
    "ldl": (0.5, 8.0, 10, 3.2, 1.0),
    "hba1c": (3.0, 15.0, 0, 6.0, 1.2),
}
CATEGORICAL: dict[str, list[Any]] = {
    "smoker": ["never", "former", "current"],
    "ecog": [0, 1, 2, 3],
    "region": ["north", "south", "east", "west", "centre"],
    "diabetic": [False, True],
}
GRID = [float(t) for t in range(90, 1801, 90)]


def plan_json() -> dict[str, Any]:
    variables: list[dict[str, Any]] = []
    for column, (low, high, bins, _, _) in NUMERIC.items():
        variable: dict[str, Any] = {"column": column, "kind": "numeric", "bounds": [low, high]}
        if bins:
            variable["bins"] = [float(e) for e in np.linspace(low, high, bins + 1)]
        variables.append(variable)
    variables += [{"column": c, "kind": "categorical", "categories": cats} for c, cats in CATEGORICAL.items()]
    return {
        "cohort": [{"column": "age", "op": ">=", "value": 18}, {"column": "bmi", "op": "not_null"}],
        "strata": [{"column": c, "categories": cats} for c, cats in STRATA.items()],
        "variables": variables,
        "survival": {"time_column": "time", "event_column": "event", "grid": GRID},
    }


def synthetic(patients: int, rows_per_patient: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = patients * rows_per_patient
    columns: dict[str, Any] = {"patient_id": rng.permutation(np.repeat(np.arange(patients), rows_per_patient))}
    columns["arm"] = pa.array(rng.choice(STRATA["arm"], rows))
    columns["sex"] = pa.array(rng.choice(STRATA["sex"], rows)).dictionary_encode()
    columns["site"] = rng.integers(1, 6, rows)  # 5: outside the declared sites
    for column, (_, _, _, mean, sd) in NUMERIC.items():
        values = rng.normal(mean, sd, rows)
        columns[column] = pa.array(values, mask=rng.random(rows) < 0.02)
    columns["smoker"] = pa.array(rng.choice([*CATEGORICAL["smoker"], "unknown"], rows))
    columns["ecog"] = rng.integers(0, 5, rows)
    columns["region"] = pa.array(rng.choice(CATEGORICAL["region"], rows), mask=rng.random(rows) < 0.01)
    columns["diabetic"] = rng.random(rows) < 0.2
    columns["time"] = pa.array(rng.exponential(700.0, rows), mask=rng.random(rows) < 0.01)
    columns["event"] = rng.random(rows) < 0.6
    return pa.table(columns)


def agent_run(plan: AnalysisPlan, table: pa.Table, seed: int, stages: dict[str, float] | None = None) -> dict[str, Any]:
    """The agent's computation; ``stages`` (when given) accumulates CPU seconds per step."""
    stages = {} if stages is None else stages
    rng = np.random.default_rng(seed)
    start = time.process_time()
    patients = patient_table(plan, table, unit_column="patient_id", rng=rng)
    stages["patient_table"] = stages.get("patient_table", 0.0) + time.process_time() - start
    out: dict[str, Any] = {}
    for kind in PLAN_KINDS:
        release = layout(plan, kind)
        start = time.process_time()
        exact = exact_release(plan, release, patients)
        stages["exact_release"] = stages.get("exact_release", 0.0) + time.process_time() - start
        out.update(exact)
        start = time.process_time()
        noisy_release(exact, release, noise_multiplier=1.0, min_cell_size=10, rng=rng)
        stages["noisy_release"] = stages.get("noisy_release", 0.0) + time.process_time() - start
    return out


def pandas_run(plan: AnalysisPlan, frame: pd.DataFrame, seed: int) -> dict[str, Any]:
    """The same statistics as plain pandas (no noise): per stratum, indexed by the full product."""
    df = frame[(frame["age"] >= 18) & frame["bmi"].notna()]
    for column, cats in STRATA.items():
        df = df[df[column].isin(cats)]
    df = df.sample(frac=1.0, random_state=seed).drop_duplicates("patient_id")
    keys = [pd.Categorical(df[c], categories=cats) for c, cats in STRATA.items()]
    full = pd.MultiIndex.from_product(list(STRATA.values()))
    out: dict[str, Any] = {"count": df.groupby(keys, observed=False).size().reindex(full).to_numpy()}
    for variable in plan.variables:
        column = variable.column
        if isinstance(variable, NumericVariable):
            present = df[column].notna()
            out[f"{column}.n"] = table_of(keys, full, (~present).astype(int), 2)
            centred = df[column].clip(variable.low, variable.high) - variable.centre
            grouped = pd.DataFrame({"c": centred, "c2": centred**2}).groupby(keys, observed=False)
            sums = grouped.sum().reindex(full)
            out[f"{column}.sum"] = sums["c"].to_numpy()
            out[f"{column}.sumsq"] = sums["c2"].to_numpy()
            if variable.bins:
                binned = pd.cut(
                    df[column].clip(variable.low, variable.high), list(variable.bins), right=False, include_lowest=True
                )
                # pd.cut with right=False leaves v == high out: it joins the last bin.
                codes = binned.cat.codes.where(
                    df[column].clip(upper=variable.high) < variable.high, len(variable.bins) - 2
                )
                codes = codes.where(present, -1)
                out[f"{column}.histogram"] = table_of(keys, full, codes, len(variable.bins) - 1)
        else:
            cats = list(variable.categories)
            codes = pd.Series(pd.Categorical(df[column], categories=cats).codes, index=df.index)
            codes = codes.where(codes >= 0, len(cats)).where(df[column].notna(), len(cats) + 1)
            out[f"{column}.counts"] = table_of(keys, full, codes, len(cats) + 2)
    time_ = df["time"]
    usable = time_.notna() & (time_ >= 0)
    interval = pd.cut(time_, [-0.0, *GRID, np.inf], right=True, include_lowest=True, labels=False)
    cell = (2 * interval + (~df["event"]).astype(int)).where(usable, 2 * (len(GRID) + 1))
    out["survival.exits"] = table_of(keys, full, cell.astype(int), 2 * len(GRID) + 3)
    return out


def table_of(keys: list[pd.Categorical], full: pd.MultiIndex, cell: pd.Series, cells: int) -> Any:
    """Rows per (stratum, cell) for cells 0..cells-1, every stratum and cell present."""
    counts = pd.crosstab(keys, pd.Categorical(cell, categories=range(cells)), dropna=False)
    return counts.reindex(full, fill_value=0).to_numpy()


def timed(function: Callable[[], object]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument("--rows-per-patient", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    plan = parse_plan(plan_json())
    table = synthetic(args.patients, args.rows_per_patient, args.seed)
    frame = table.to_pandas()
    print(
        f"{args.patients:,} patients on {table.num_rows:,} rows, {len(plan.variables)} variables, "
        f"{plan.stratum_count} strata, survival grid of {len(GRID)}"
    )

    # Same statistics, or the comparison means nothing. With one row per patient both keep the same rows.
    if args.rows_per_patient == 1:
        ours, theirs = agent_run(plan, table, args.seed), pandas_run(plan, frame, args.seed)
        for name, values in theirs.items():
            np.testing.assert_allclose(ours[name].reshape(np.shape(values)), values.astype(float), rtol=1e-9, atol=1e-6)
        print(f"checked: the agent's {len(theirs)} exact blocks equal pandas'")

    agent_times, pandas_times = [], []
    stages: dict[str, float] = {}
    for repeat in range(args.repeats):
        agent_times.append(timed(lambda r=repeat: agent_run(plan, table, args.seed + r, stages)))
        pandas_times.append(timed(lambda r=repeat: pandas_run(plan, frame, args.seed + r)))
    agent_cpu = statistics.median(t[0] for t in agent_times)
    pandas_cpu = statistics.median(t[0] for t in pandas_times)
    agent_wall = statistics.median(t[1] for t in agent_times)
    pandas_wall = statistics.median(t[1] for t in pandas_times)
    print(f"{'':<8} {'CPU s':>8} {'wall s':>8}")
    print(f"{'agent':<8} {agent_cpu:>8.3f} {agent_wall:>8.3f}")
    print(f"{'pandas':<8} {pandas_cpu:>8.3f} {pandas_wall:>8.3f}")
    print("agent CPU s per step (mean): " + ", ".join(f"{k} {v / args.repeats:.3f}" for k, v in stages.items()))
    print(
        f"agent / pandas CPU: {agent_cpu / pandas_cpu:.2f}  (runs: agent {[round(t[0], 3) for t in agent_times]}, "
        f"pandas {[round(t[0], 3) for t in pandas_times]})"
    )


if __name__ == "__main__":
    main()
