"""Exact blocks on real clinical data (lifelines' gbsg2, rossi, lung) against pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from lifelines.datasets import load_gbsg2, load_lung, load_rossi

from agent.packages.release_layout import SURVIVAL_EXITS
from agent.statistics.patients import patient_table

from .helpers import assert_blocks_equal, exact_blocks, oracle, plan_of

GBSG2_PLAN = {
    "cohort": [{"column": "age", "op": ">=", "value": 35}, {"column": "tgrade", "op": "!=", "value": "I"}],
    "strata": [
        {"column": "horTh", "categories": ["no", "yes"]},
        {"column": "menostat", "categories": ["Pre", "Post"]},
    ],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [20, 80], "bins": [20, 40, 50, 60, 70, 80]},
        # tsize reaches 120 and pnodes 51: their bounds clamp.
        {"column": "tsize", "kind": "numeric", "bounds": [0, 60], "bins": [0, 20, 50, 60]},
        {"column": "pnodes", "kind": "numeric", "bounds": [0, 20]},
        {"column": "progrec", "kind": "numeric", "bounds": [0, 1000]},
        {"column": "tgrade", "kind": "categorical", "categories": ["II"]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": [365, 730, 1095, 1460, 1825]},
}


def gbsg2() -> pd.DataFrame:
    return load_gbsg2()


def test_gbsg2_matches_pandas() -> None:
    plan = plan_of(GBSG2_PLAN)
    frame = gbsg2()
    ours = exact_blocks(plan, pa.Table.from_pandas(frame, preserve_index=False))
    theirs = oracle(plan, frame)
    assert_blocks_equal(ours, theirs)
    # Sanity of the oracle itself: the filters keep a real cohort in all four strata.
    assert theirs["count"].sum() > 400
    assert (theirs["count"] > 0).all()


def test_rossi_matches_pandas() -> None:
    plan = plan_of(
        {
            "cohort": [{"column": "paro", "op": "in", "values": [1]}, {"column": "prio", "op": "<", "value": 15}],
            "strata": [{"column": "fin", "categories": [0, 1]}, {"column": "race", "categories": [1, 0]}],
            "variables": [
                {"column": "age", "kind": "numeric", "bounds": [17, 45], "bins": [17, 20, 25, 30, 45]},
                {"column": "prio", "kind": "numeric", "bounds": [0, 10], "bins": [0, 1, 2, 5, 10]},
                {"column": "wexp", "kind": "categorical", "categories": [1]},
                {"column": "mar", "kind": "categorical", "categories": [0, 1]},
            ],
            # Weeks are 1..52: the grid's last point is the end of follow-up (t == t_J is in (48, 52]).
            "survival": {"time_column": "week", "event_column": "arrest", "grid": [4, 8, 13, 26, 39, 48, 52]},
        }
    )
    frame = load_rossi()
    ours = exact_blocks(plan, pa.Table.from_pandas(frame, preserve_index=False))
    assert_blocks_equal(ours, oracle(plan, frame))
    # Censored at week 52 lands in the last interval of the grid, not after it.
    assert ours[SURVIVAL_EXITS][:, 2 * 6 + 1].sum() > 0
    assert ours[SURVIVAL_EXITS][:, 2 * 7 : 2 * 7 + 2].sum() == 0


def lung() -> pd.DataFrame:
    frame = load_lung()
    # lifelines ships status as 0 (censored) / 1 (dead); a boolean copy to read it as such too.
    frame["dead"] = frame["status"] == 1
    # ECOG is a score: an integer column with nulls (Arrow int64 with nulls, not NaN floats).
    frame["ecog"] = frame["ph.ecog"].astype("Int64")
    return frame


LUNG_PLAN = {
    "cohort": [{"column": "ph.karno", "op": ">=", "value": 60}, {"column": "inst", "op": "not_null"}],
    "strata": [{"column": "sex", "categories": [1, 2]}],
    "variables": [
        {"column": "wt.loss", "kind": "numeric", "bounds": [-10, 40], "bins": [-10, 0, 10, 20, 40]},
        {"column": "meal.cal", "kind": "numeric", "bounds": [0, 2000], "bins": [0, 500, 1000, 1500, 2000]},
        {"column": "age", "kind": "numeric", "bounds": [40, 80]},
        {"column": "ecog", "kind": "categorical", "categories": [0, 1, 2]},
    ],
    "survival": {"time_column": "time", "event_column": "dead", "grid": [90, 180, 365, 730]},
}


def test_lung_with_missing_values_matches_pandas() -> None:
    plan = plan_of(LUNG_PLAN)
    frame = lung()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    assert table.schema.field("ecog").type == pa.int64()
    ours = exact_blocks(plan, table)
    theirs = oracle(plan, frame)
    assert_blocks_equal(ours, theirs)
    # The data's missing values are counted as missing, not dropped and not as zero.
    assert ours["meal.cal.n"][:, 1].sum() > 0
    assert ours["wt.loss.n"][:, 1].sum() > 0
    assert ours["ecog.counts"][:, 4].sum() == 1  # lung's one null ECOG, in the cohort
    assert ours["ecog.counts"][:, 3].sum() > 0  # ECOG 3 is "other"


def test_lung_event_as_number_or_boolean_gives_the_same_exits() -> None:
    table = pa.Table.from_pandas(lung(), preserve_index=False)
    as_bool = exact_blocks(plan_of(LUNG_PLAN), table)
    numeric = {**LUNG_PLAN, "survival": {**LUNG_PLAN["survival"], "event_column": "status"}}
    as_number = exact_blocks(plan_of(numeric), table)
    np.testing.assert_array_equal(as_bool[SURVIVAL_EXITS], as_number[SURVIVAL_EXITS])
    assert as_bool[SURVIVAL_EXITS][:, 0::2].sum() > 0 and as_bool[SURVIVAL_EXITS][:, 1::2].sum() > 0


def duplicated(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each patient's row repeated 1 to 5 times, with a patient id, the rows shuffled."""
    rng = np.random.default_rng(seed)
    repeats = rng.integers(1, 6, len(frame))
    copies = frame.loc[frame.index.repeat(repeats)].copy()
    copies.insert(0, "patient_id", [f"P{i:04d}" for i in np.repeat(np.arange(len(frame)), repeats)])
    return copies.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeated_rows_of_a_patient_count_once(seed: int) -> None:
    plan = plan_of(GBSG2_PLAN)
    frame = gbsg2()
    copies = duplicated(frame, seed)
    assert len(copies) > 2 * len(frame)
    table = pa.Table.from_pandas(copies, preserve_index=False)
    ours = exact_blocks(plan, table, unit_column="patient_id", seed=seed)
    assert_blocks_equal(ours, oracle(plan, frame))
    # Without the unit column every copy would count: the release would not be the patients'.
    per_row = exact_blocks(plan, table)
    assert per_row["count"].sum() > ours["count"].sum()


def test_kept_rows_are_one_per_patient_and_in_the_cohort() -> None:
    plan = plan_of(GBSG2_PLAN)
    frame = gbsg2()
    copies = duplicated(frame, 7)
    # Copies of one patient differ in their age here: which row is kept matters to the cohort.
    copies["age"] = copies["age"] + np.random.default_rng(7).integers(-20, 21, len(copies))
    table = pa.Table.from_pandas(copies, preserve_index=False)
    patients = patient_table(plan, table, unit_column="patient_id", rng=np.random.default_rng(7))
    kept = copies.iloc[patients.rows]
    assert kept["patient_id"].is_unique
    assert (kept["age"] >= 35).all() and (kept["tgrade"] != "I").all()
    # Every patient with at least one row in the cohort is kept (choice after the filters).
    eligible = copies[(copies["age"] >= 35) & (copies["tgrade"] != "I")]
    assert set(kept["patient_id"]) == set(eligible["patient_id"])
    assert patients.size == eligible["patient_id"].nunique()
    assert_blocks_equal(
        {k: v for k, v in exact_blocks(plan, table, unit_column="patient_id", seed=7).items()},
        oracle(plan, kept),
    )
