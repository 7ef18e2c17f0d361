"""Column types, missing values and hostile inputs of patient_table and exact_release."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from agent.packages.manifest import TaskKind
from agent.packages.release_layout import SURVIVAL_EXITS, layout
from agent.statistics.errors import StatisticsInputError
from agent.statistics.patients import patient_table
from agent.statistics.tables import exact_release

from .helpers import assert_blocks_equal, exact_blocks, oracle, plan_of

SECRET = "SECRET-VALUE-4711"


def numeric(column: str, low: float = 0, high: float = 10, **extra: Any) -> dict[str, Any]:
    return {"column": column, "kind": "numeric", "bounds": [low, high], **extra}


def categorical(column: str, categories: list[Any]) -> dict[str, Any]:
    return {"column": column, "kind": "categorical", "categories": categories}


def refused(plan_json: dict[str, Any], table: pa.Table, unit_column: str | None = None) -> StatisticsInputError:
    with pytest.raises(StatisticsInputError) as caught:
        patient_table(plan_of(plan_json), table, unit_column=unit_column, rng=np.random.default_rng(0))
    message = str(caught.value)
    assert SECRET not in message and "4711" not in message
    return caught.value


# -- refusals --------------------------------------------------------------------------------

BASE = pa.table(
    {
        "age": [50.0, 60.0],
        "name": [SECRET, "x"],
        "flag": [True, False],
        "code": pa.array([4711, 2], pa.int64()),
        "when": pa.array([dt.datetime(2020, 1, 1), None], pa.timestamp("us")),
        "day": pa.array([dt.date(2020, 1, 1), None], pa.date32()),
        "items": pa.array([[1], [2]]),
        "record": pa.array([{"a": 1}, {"a": 2}]),
        "ratio": [0.5, 0.25],
        "pid": ["p1", "p2"],
    }
)

REFUSALS = [
    ({"variables": [numeric("missing_column")]}, "missing_column", "missing from the dataset"),
    ({"variables": [numeric("name")]}, "name", "a numeric variable needs a number (or boolean) column, found string"),
    ({"variables": [numeric("when")]}, "when", "found timestamp[us]"),
    ({"variables": [numeric("items")]}, "items", "found list<item: int64>"),
    ({"variables": [categorical("record", ["a"])]}, "record", "a categorical variable needs a string, integer"),
    ({"variables": [categorical("ratio", [1])]}, "ratio", "needs a string, integer or boolean column, found double"),
    (
        {"variables": [categorical("code", ["4711"])]},
        "code",
        "with string categories needs a string column, found int64",
    ),
    (
        {"variables": [categorical("name", [1])]},
        "name",
        "with integer categories needs an integer column, found string",
    ),
    ({"variables": [categorical("code", [True])]}, "code", "with boolean categories needs a boolean column"),
    ({"variables": [categorical("flag", [1])]}, "flag", "with integer categories needs an integer column, found bool"),
    ({"strata": [{"column": "name", "categories": [1, 2]}]}, "name", "a stratum with integer categories"),
    ({"strata": [{"column": "ratio", "categories": [1]}]}, "ratio", "a stratum needs a string, integer or boolean"),
    ({"strata": [{"column": "day", "categories": ["2020-01-01"]}]}, "day", "found date32[day]"),
    ({"strata": [{"column": "age", "categories": [50]}]}, "age", "found double"),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "name", "op": "<", "value": 3}]},
        "name",
        "a cohort filter '<' needs a number column, found string",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "flag", "op": ">=", "value": 1}]},
        "flag",
        "a cohort filter '>=' needs a number column, found bool",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "age", "op": "==", "value": "50"}]},
        "age",
        "a cohort filter '==' with a string value needs a string column, found double",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "name", "op": "!=", "value": 4711}]},
        "name",
        "a cohort filter '!=' with a number value needs a number column, found string",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "code", "op": "==", "value": True}]},
        "code",
        "with a boolean value needs a boolean column, found int64",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "flag", "op": "in", "values": [0, 1]}]},
        "flag",
        "a cohort filter 'in' with a number value needs a number column, found bool",
    ),
    (
        {"variables": [numeric("age")], "cohort": [{"column": "when", "op": "not_null"}]},
        "when",
        "a cohort filter 'not_null' needs a number, string or boolean column, found timestamp[us]",
    ),
    (
        {"survival": {"time_column": "name", "event_column": "flag", "grid": [1]}},
        "name",
        "the survival time needs a number column, found string",
    ),
    (
        {"survival": {"time_column": "flag", "event_column": "code", "grid": [1]}},
        "flag",
        "the survival time needs a number column, found bool",
    ),
    (
        {"survival": {"time_column": "age", "event_column": "name", "grid": [1]}},
        "name",
        "the survival event needs a boolean or number column, found string",
    ),
]


@pytest.mark.parametrize(("plan_json", "column", "problem"), REFUSALS)
def test_a_column_that_does_not_fit_its_role_is_refused_by_name(
    plan_json: dict[str, Any], column: str, problem: str
) -> None:
    error = refused(plan_json, BASE)
    assert error.column == column
    assert str(error).startswith(f"column {column!r}: ")
    assert problem in str(error)


def test_a_null_unit_is_refused_without_naming_the_unit_column_or_values() -> None:
    table = pa.table({"age": [1.0, 2.0, 3.0], "pid": [SECRET, None, "p3"]})
    error = refused({"variables": [numeric("age")]}, table, unit_column="pid")
    assert str(error) == "the privacy-unit column: holds nulls: every row must name its patient"
    assert "pid" not in str(error)
    # A null hiding in a dictionary's values counts too.
    units = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["p1", None]))
    error = refused(
        {"variables": [numeric("age")]}, pa.table({"age": [1.0, 2.0, 3.0], "pid": units}), unit_column="pid"
    )
    assert "holds nulls" in str(error)


def test_other_unit_column_problems_are_refused_without_its_name() -> None:
    table = pa.table({"age": [1.0, 2.0], "pid": [1.5, 2.5]})
    error = refused({"variables": [numeric("age")]}, table, unit_column="pid")
    assert "integer, string or binary" in str(error) and "pid" not in str(error)
    error = refused({"variables": [numeric("age")]}, table, unit_column="patient")
    assert "missing" in str(error) and "patient" not in str(error)
    # A plan may not read the column that identifies patients, and is told what it is told of
    # a column the dataset does not have: the refusal does not single the unit column out.
    error = refused({"variables": [categorical("pid", ["p1"])]}, BASE, unit_column="pid")
    unexposed = refused({"variables": [categorical("nope", ["p1"])]}, BASE, unit_column="pid")
    assert str(error) == str(unexposed).replace("nope", "pid") == "column 'pid': is missing from the dataset"


def test_the_error_survives_pickling() -> None:
    import pickle

    error = StatisticsInputError("age", "is missing from the dataset")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.column == "age"


# -- accepted types ------------------------------------------------------------------------------


def test_integer_float_decimal_and_boolean_numbers_agree() -> None:
    values = [1, 0, 3, None, 7]
    plan = {"variables": [numeric("v", 0, 5, bins=[0, 1, 2, 5])]}
    expected = exact_blocks(plan_of(plan), pa.table({"v": pa.array(values, pa.float64())}))
    for arrow_type in (pa.int8(), pa.uint64(), pa.int64(), pa.float32(), pa.decimal128(10, 2)):
        typed = [decimal.Decimal(v) if v is not None and pa.types.is_decimal(arrow_type) else v for v in values]
        table = pa.table({"v": pa.array(typed, arrow_type)})
        assert_blocks_equal(exact_blocks(plan_of(plan), table), expected)
    # Booleans are 0 and 1.
    flags = exact_blocks(plan_of(plan), pa.table({"v": [True, False, None, True]}))
    assert flags["v.n"].tolist() == [[3.0, 1.0]]
    assert flags["v.histogram"].tolist() == [[1.0, 2.0, 0.0]]


@pytest.mark.parametrize(
    "make",
    [
        lambda values: pa.array(values, pa.string()),
        lambda values: pa.array(values, pa.large_string()),
        lambda values: pa.array(values, pa.string_view()),
        lambda values: pa.array(values, pa.string()).dictionary_encode(),
        lambda values: pa.chunked_array([pa.array(values[:2]), pa.array(values[2:])]),
        lambda values: pa.chunked_array(
            [pa.array(values[:2]).dictionary_encode(), pa.array(values[2:]).dictionary_encode()]
        ),
    ],
)
def test_string_columns_of_every_encoding(make: Any) -> None:
    values = ["b", None, "a", "c", "a", "b"]
    table = pa.table({"s": make(values), "g": make(values)})
    plan = plan_of(
        {
            "cohort": [{"column": "g", "op": "!=", "value": "c"}],
            "strata": [{"column": "s", "categories": ["a", "b"]}],
        }
    )
    # The stratum of "a" holds 2 patients, "b" 2; the null and "c" leave.
    assert exact_blocks(plan, table)["count"].tolist() == [[2.0], [2.0]]
    counts = exact_blocks(plan_of({"variables": [categorical("s", ["b", "zz"])]}), table)["s.counts"]
    assert counts.tolist() == [[2.0, 0.0, 3.0, 1.0]]


def test_integer_categories_outside_the_columns_range_match_nothing() -> None:
    table = pa.table(
        {"u8": pa.array([0, 1, 255, None], pa.uint8()), "u64": pa.array([2**64 - 1, 0, 5, 5], pa.uint64())}
    )
    counts = exact_blocks(plan_of({"variables": [categorical("u8", [-1, 255, 300])]}), table)["u8.counts"]
    assert counts.tolist() == [[0.0, 1.0, 0.0, 2.0, 1.0]]
    counts = exact_blocks(plan_of({"variables": [categorical("u64", [-5, 5, 0])]}), table)["u64.counts"]
    assert counts.tolist() == [[0.0, 2.0, 1.0, 1.0, 0.0]]


def test_boolean_categories_and_filters() -> None:
    table = pa.table({"b": [True, False, None, True], "v": [1.0, 2.0, 3.0, 4.0]})
    blocks = exact_blocks(
        plan_of(
            {
                "cohort": [{"column": "b", "op": "in", "values": [True, False]}],
                "strata": [{"column": "b", "categories": [False, True]}],
                "variables": [numeric("v")],
            }
        ),
        table,
    )
    assert blocks["count"].tolist() == [[1.0], [2.0]]
    assert blocks["v.sum"].tolist() == [[2.0 - 5], [1.0 + 4.0 - 10]]


def test_a_dictionary_unit_column_with_different_dictionaries_per_chunk() -> None:
    first = pa.array(["p1", "p2", "p1"]).dictionary_encode()
    second = pa.array(["p2", "p3", "p3", "p1"]).dictionary_encode()  # other dictionary order
    table = pa.table({"pid": pa.chunked_array([first, second]), "v": list(range(7))})
    plan = plan_of({"variables": [numeric("v", 0, 10)]})
    for seed in range(5):
        patients = patient_table(plan, table, unit_column="pid", rng=np.random.default_rng(seed))
        assert patients.size == 3
        kept = [table.column("pid")[int(r)].as_py() for r in patients.rows]
        assert sorted(kept) == ["p1", "p2", "p3"]


def test_binary_and_integer_unit_columns() -> None:
    for units in (pa.array([b"a", b"b", b"a"]), pa.array([3, 9, 3], pa.int32())):
        table = pa.table({"pid": units, "v": [1.0, 2.0, 3.0]})
        blocks = exact_blocks(plan_of({"variables": [numeric("v")]}), table, unit_column="pid")
        assert blocks["count"].tolist() == [[2.0]]


# -- missing values ----------------------------------------------------------------------------------


def test_null_and_nan_are_both_missing() -> None:
    table = pa.table(
        {
            "x": pa.array([1.0, math.nan, None, 4.0, -math.inf, math.inf]),
            "t": pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        }
    )
    plan = plan_of({"variables": [numeric("x", 0, 10, bins=[0, 5, 10])]})
    blocks = exact_blocks(plan, table)
    assert blocks["x.n"].tolist() == [[4.0, 2.0]]
    # -inf clamps to 0, inf to 10 (centre 5): present and clamped like any other value.
    assert blocks["x.sum"].tolist() == [[(1 - 5) + (4 - 5) + (0 - 5) + (10 - 5)]]
    assert blocks["x.histogram"].tolist() == [[3.0, 1.0]]


@pytest.mark.parametrize(
    ("condition", "kept"),
    [
        ({"op": "<", "value": 3}, [0]),
        ({"op": ">=", "value": 0}, [0, 3]),
        ({"op": "==", "value": 1}, [0]),
        ({"op": "!=", "value": 1}, [3]),  # NaN and null are not "different from 1": missing
        ({"op": "in", "values": [1, 7]}, [0, 3]),
        ({"op": "not_null"}, [0, 3]),
    ],
)
def test_a_filter_on_a_missing_value_is_false(condition: dict[str, Any], kept: list[int]) -> None:
    table = pa.table({"x": pa.array([1.0, math.nan, None, 7.0]), "v": [0.0, 1.0, 2.0, 3.0]})
    plan = plan_of({"cohort": [{"column": "x", **condition}], "variables": [numeric("v")]})
    patients = patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0))
    assert patients.rows.tolist() == kept


@pytest.mark.parametrize(
    ("condition", "kept"),
    [
        ({"op": "==", "value": "a"}, [0]),
        ({"op": "!=", "value": "a"}, [3]),
        ({"op": "in", "values": ["a", "b"]}, [0, 3]),
        ({"op": "not_null"}, [0, 1, 3]),  # the empty string is a value
    ],
)
def test_a_string_filter_on_a_null_is_false(condition: dict[str, Any], kept: list[int]) -> None:
    table = pa.table({"s": ["a", "", None, "b"], "v": [0.0, 1.0, 2.0, 3.0]})
    plan = plan_of({"cohort": [{"column": "s", **condition}], "variables": [numeric("v")]})
    patients = patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0))
    expected = kept if condition["op"] != "!=" else [1, 3]
    assert patients.rows.tolist() == expected


def test_null_strata_and_unlisted_strata_leave_the_analysis() -> None:
    table = pa.table({"arm": ["a", None, "b", "c", "a"], "sex": ["F", "M", None, "M", "M"]})
    plan = plan_of(
        {"strata": [{"column": "arm", "categories": ["a", "b"]}, {"column": "sex", "categories": ["F", "M"]}]}
    )
    patients = patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0))
    assert patients.rows.tolist() == [0, 4]
    # Last column fastest: (a, F) = 0, (a, M) = 1, as in stratum_labels().
    assert patients.stratum.tolist() == [0, 1]
    assert plan.stratum_labels()[1] == "arm=a, sex=M"


def test_survival_missing_negative_and_infinite_times() -> None:
    table = pa.table(
        {
            "t": pa.array([0.0, 1.0, 1.5, 2.0, -0.5, None, math.nan, 3.0, math.inf, 2.0]),
            "e": pa.array([1.0, 0.0, 2.0, -1.0, 1.0, 1.0, 1.0, 0.0, 1.0, math.nan]),
        }
    )
    plan = plan_of({"survival": {"time_column": "t", "event_column": "e", "grid": [1, 2]}})
    exits = exact_blocks(plan, table)[SURVIVAL_EXITS]
    # [0,1]: t=0 event, t=1 censored; (1,2]: 1.5 event (2 is non-zero), 2.0 event (-1);
    # (2,inf): 3 censored, inf event; missing: -0.5, null, NaN, and the NaN event.
    assert exits.tolist() == [[1.0, 1.0, 2.0, 0.0, 1.0, 1.0, 4.0]]


def test_a_numeric_column_may_be_a_filter_and_a_variable() -> None:
    frame = pd.DataFrame({"age": [30.0, 50.0, None, 70.0, 90.0], "g": ["x", "y", "x", "y", "x"]})
    plan = plan_of(
        {
            "cohort": [{"column": "age", "op": ">", "value": 40}],
            "variables": [numeric("age", 40, 80, bins=[40, 60, 80]), categorical("g", ["x"])],
        }
    )
    assert_blocks_equal(exact_blocks(plan, pa.Table.from_pandas(frame)), oracle(plan, frame))


# -- hostile inputs ----------------------------------------------------------------------------------


def test_a_filter_selecting_one_patient_still_computes() -> None:
    # DP protects the one patient; the cohort minimum is enforced by the task, not here.
    table = pa.table({"id_like": list(range(1000)), "v": np.linspace(0, 10, 1000)})
    plan = plan_of({"cohort": [{"column": "id_like", "op": "==", "value": 417}], "variables": [numeric("v")]})
    patients = patient_table(plan, table, unit_column=None, rng=np.random.default_rng(0))
    assert patients.size == 1
    blocks = exact_release(plan, layout(plan, TaskKind.DP_DESCRIBE), patients)
    assert blocks["count"].tolist() == [[1.0]]


def test_the_largest_bounds_do_not_overflow() -> None:
    rows = 200_000
    values = np.full(rows, 1e300)
    values[::2] = -1e300
    table = pa.table({"v": values})
    plan = plan_of({"variables": [numeric("v", -1e9, 1e9, bins=[-1e9, 0, 1e9])]})
    blocks = exact_blocks(plan, table)
    assert blocks["v.sum"].tolist() == [[0.0]]
    # bincount adds in order: rounding of 2e5 additions of 1e18, far below any noise.
    assert blocks["v.sumsq"][0, 0] == pytest.approx(rows * 1e18, rel=1e-12)
    assert all(np.isfinite(b).all() for b in blocks.values())
    assert blocks["v.histogram"].tolist() == [[rows / 2, rows / 2]]


def test_a_grid_of_1000_points_finer_than_the_data() -> None:
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"t": rng.uniform(0, 2, 500), "e": rng.random(500) < 0.5})
    grid = [round(0.001 * (i + 1), 3) for i in range(1000)]
    plan = plan_of({"survival": {"time_column": "t", "event_column": "e", "grid": grid}})
    ours = exact_blocks(plan, pa.Table.from_pandas(frame))
    assert ours[SURVIVAL_EXITS].shape == (1, 2 * 1001 + 1)
    assert_blocks_equal(ours, oracle(plan, frame))
    assert ours[SURVIVAL_EXITS][0, 2000:2002].sum() == (frame["t"] > 1.0).sum()


def test_an_empty_table_and_an_empty_cohort() -> None:
    plan = plan_of(
        {
            "strata": [{"column": "s", "categories": ["a"]}],
            "variables": [numeric("v", bins=[0, 5, 10]), categorical("s2", ["x"])],
            "survival": {"time_column": "t", "event_column": "e", "grid": [1]},
        }
    )
    empty = pa.table(
        {
            "s": pa.array([], pa.string()),
            "v": pa.array([], pa.float64()),
            "s2": pa.array([], pa.string()),
            "t": pa.array([], pa.float64()),
            "e": pa.array([], pa.bool_()),
            "pid": pa.array([], pa.int64()),
        }
    )
    for unit in (None, "pid"):
        blocks = exact_blocks(plan, empty, unit_column=unit)
        assert all(values.sum() == 0 for values in blocks.values())


def test_a_layout_of_another_plan_is_refused() -> None:
    plan = plan_of({"variables": [numeric("v")]})
    other = plan_of({"variables": [numeric("v", 0, 20)]})
    patients = patient_table(plan, pa.table({"v": [1.0]}), unit_column=None, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="layout"):
        exact_release(plan, layout(other, TaskKind.DP_DESCRIBE), patients)


def test_patient_arrays_are_read_only() -> None:
    plan = plan_of({"variables": [numeric("v")]})
    patients = patient_table(plan, pa.table({"v": [1.0, 2.0]}), unit_column=None, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="read-only"):
        patients.numbers["v"][0] = 5.0
    with pytest.raises(TypeError):
        patients.numbers["w"] = patients.numbers["v"]
