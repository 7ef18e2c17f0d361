"""Attacks on a weighted plan's releases (inverse probability of treatment weighting).

The claim under attack (agent/statistics/weighting.py): a patient's weight depends on their
own row and the task's public propensity coefficients only, lies in ``[0, max_weight]`` (NaN:
no weight, left out), so removing one patient moves each weighted block by exactly their own
contribution, within the block's sensitivity, for EVERY coefficient vector a coordinator may
send (finite, within ±1e9: huge ones, ones that give a single patient the cap and everyone
else next to nothing) and every plan (any cap in [1, 1000], ATE or ATT).

Attacked here: the neighbouring-table property over random tables and weighted plans for
dp_describe, dp_survival, dp_glm and dp_propensity with hostile coefficients; one patient
singled out with the whole cap; huge coefficients (no NaN or infinity in any block); patients
without a weight; the sensitivities reached (not loose by accident); suppression of the
weighted twins of withheld counts; and inputs that must be refused.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.packages.manifest import TaskKind, served_kinds
from agent.packages.plan import AnalysisPlan
from agent.packages.release_layout import (
    GLM_COUNT,
    GLM_INFORMATION,
    GLM_SCORE,
    WEIGHT_COUNT,
    WEIGHT_SUM,
    WEIGHTED_EXITS,
    ReleaseLayout,
    Statistic,
    analysed,
    layout,
    product_up,
    root_up,
)
from agent.statistics.design import covariates_present
from agent.statistics.glm import exact_model_release, exact_propensity_release, upper_triangle
from agent.statistics.patients import PatientTable, patient_table, patient_table_keyed
from agent.statistics.tables import exact_release, noisy_release
from agent.statistics.weighting import plan_weights

from .helpers import plan_of
from .test_glm import coefficients
from .test_neighbours import FILTERS, SETTINGS, _bounds, tables

CATEGORIES: dict[str, list[Any]] = {"c": ["p", "q", "r", "z"], "s1": ["a", "b", "c", "zz"], "b": [True, False]}
WEIGHTED_STATISTICS = {
    Statistic.WEIGHT_SUM,
    Statistic.WEIGHTED_PRESENCE,
    Statistic.WEIGHTED_SUM,
    Statistic.WEIGHTED_COUNTS,
    Statistic.WEIGHTED_EXITS,
}


@st.composite
def weighted_plans(draw: st.DrawFn) -> dict[str, Any]:
    """Weighted plans over test_neighbours' tables: the treatment ``c``, ``s1`` or ``b`` (two of
    its values; the data hold others and nulls), propensity covariates among x, y and the other
    categorical, any cap and estimand, sometimes strata, filters, survival and a model (logistic
    on ``e``, or Cox on t/e with the treatment among its covariates)."""
    treatment = draw(st.sampled_from(sorted(CATEGORIES)))
    arms = draw(st.lists(st.sampled_from(CATEGORIES[treatment]), unique=True, min_size=2, max_size=2))
    variables: list[dict[str, Any]] = [{"column": treatment, "kind": "categorical", "categories": arms}]
    for column in ("x", "y"):
        if draw(st.booleans()):
            low, high, bins = _bounds(draw)
            variables.append({"column": column, "kind": "numeric", "bounds": [low, high]})
            if bins:
                variables[-1]["bins"] = bins
    for column in ("c", "s1"):
        if column != treatment and draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(CATEGORIES[column]), unique=True, min_size=1))
            variables.append({"column": column, "kind": "categorical", "categories": chosen})
    if len(variables) == 1:
        variables.append({"column": "x", "kind": "numeric", "bounds": [-10.0, 10.0]})
    others = draw(st.permutations([v["column"] for v in variables[1:]]))
    plan: dict[str, Any] = {
        "cohort": draw(st.lists(st.sampled_from(FILTERS), max_size=2)),
        "variables": variables,
        "weighting": {
            "treatment": treatment,
            "covariates": others[: draw(st.integers(1, len(others)))],
            "estimand": draw(st.sampled_from(["ate", "att"])),
            "max_weight": draw(st.one_of(st.sampled_from([1.0, 10.0, 1000.0]), st.floats(1.0, 1000.0))),
        },
    }
    if draw(st.booleans()):
        arms_by_site = draw(st.lists(st.sampled_from([0, 1, 2, 7]), unique=True, min_size=1))
        plan["strata"] = [{"column": "s2", "categories": arms_by_site}]
    covariates = [treatment, *draw(st.permutations(others))[: draw(st.integers(0, len(others)))]]
    if draw(st.booleans()):
        grid = sorted(draw(st.sets(st.floats(0.5, 35.0, allow_nan=False), min_size=1, max_size=6)))
        plan["survival"] = {"time_column": "t", "event_column": "e", "grid": grid}
        if draw(st.booleans()):
            hazard = draw(st.sampled_from([0.5, 1.0, 7.5]))
            plan["model"] = {"family": "cox", "covariates": covariates, "max_cumulative_hazard": hazard}
    elif draw(st.booleans()):
        plan["model"] = {"family": "logistic", "outcome": "e", "covariates": covariates}
    return plan


def release_of(
    plan: AnalysisPlan, kind: TaskKind, patients: PatientTable, propensity: np.ndarray, theta: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The exact blocks of a ``kind`` task as the agent computes them, at the task's coefficients."""
    if kind is TaskKind.DP_PROPENSITY:
        return exact_propensity_release(plan, patients, propensity)
    weights = plan_weights(plan, patients, propensity)
    if kind is TaskKind.DP_GLM:
        return exact_model_release(plan, patients, theta, weights)
    return exact_release(plan, layout(plan, kind), patients, weights)


def check_weighted_neighbours(
    plan: AnalysisPlan, table: pa.Table, propensity: np.ndarray, theta: np.ndarray | None, data: st.DataObject
) -> None:
    """Removing one unit moves each block of every kind by that patient's own contribution
    (computed on their row alone), within the block's sensitivity, in one stratum at most."""
    assert plan.weighting is not None
    keys = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).permutation(table.num_rows)
    units = table.column("u").to_pylist()
    removed = data.draw(st.sampled_from(sorted(set(units), key=str)))
    stays = np.array([u != removed for u in units])
    for kind in served_kinds(plan):
        kind_plan = analysed(plan, kind)
        full = patient_table_keyed(kind_plan, table, unit_column="u", keys=keys)
        neighbour = patient_table_keyed(kind_plan, table.filter(pa.array(stays)), unit_column="u", keys=keys[stays])
        own = pa.array([int(r) for r in full.rows if units[r] == removed], pa.int64())
        alone = patient_table_keyed(kind_plan, table.take(own), unit_column=None, keys=None)
        # The weights: in [0, cap] or NaN (no weight), never infinite, whatever the coefficients.
        weights = plan_weights(plan, full, propensity)
        assert weights is not None
        given_weights = weights[~np.isnan(weights)]
        assert np.all((given_weights >= 0.0) & (given_weights <= plan.weighting.max_weight)), kind
        # ... and NaN only for a patient without a usable row (an arm and every covariate), never
        # because the coefficients overflowed. (In dp_describe and dp_survival the arm is a stratum.)
        codes = full.codes.get(plan.weighting.treatment.column)
        usable = np.ones(full.size, dtype=bool) if codes is None else codes < 2
        usable &= covariates_present(plan.weighting.propensity_model, full)
        np.testing.assert_array_equal(np.isnan(weights), ~usable, err_msg=str(kind))
        release = layout(plan, kind)
        before, after, added = (release_of(plan, kind, p, propensity, theta) for p in (full, neighbour, alone))
        for block in release.blocks:
            assert np.isfinite(before[block.name]).all(), (kind, block.name)
            moved = before[block.name] - after[block.name]
            scale = max(1.0, float(np.abs(before[block.name]).max()))
            np.testing.assert_allclose(moved, added[block.name], rtol=0, atol=1e-9 * scale, err_msg=block.name)
            norm = float(np.linalg.norm(added[block.name]))
            assert norm <= block.sensitivity * (1 + 1e-12), (kind, block.name, norm, block.sensitivity)
            assert np.count_nonzero(np.any(added[block.name] != 0.0, axis=1)) <= 1, (kind, block.name)


@SETTINGS
@given(table=tables(), plan_json=weighted_plans(), data=st.data())
def test_removing_one_patient_moves_each_weighted_block_by_at_most_its_sensitivity(
    table: pa.Table, plan_json: dict[str, Any], data: st.DataObject
) -> None:
    plan = plan_of(plan_json)
    assert plan.weighting is not None
    propensity = data.draw(coefficients(plan.weighting.propensity_model.width))
    theta = None if plan.model is None else data.draw(coefficients(plan.model.width))
    check_weighted_neighbours(plan, table, propensity, theta, data)


# -- one patient singled out, huge coefficients, no weight -------------------------------------

ARM = {"column": "arm", "kind": "categorical", "categories": ["control", "treated"]}
X = {"column": "x", "kind": "numeric", "bounds": [0, 10]}
G = {"column": "g", "kind": "categorical", "categories": ["a", "b"]}
SURVIVAL = {"time_column": "t", "event_column": "e", "grid": [1, 2]}


def weighted_plan(estimand: str, cap: float, model: dict[str, Any] | None = None) -> AnalysisPlan:
    value: dict[str, Any] = {
        "strata": [{"column": "site", "categories": [1, 2]}],
        "variables": [ARM, X, G],
        "survival": SURVIVAL,
        "weighting": {"treatment": "arm", "covariates": ["x"], "estimand": estimand, "max_weight": cap},
    }
    if model is not None:
        value["model"] = model
    return plan_of(value)


def cohort(n: int = 20) -> pa.Table:
    """``n`` patients (``n`` a multiple of 4): x in 0..8 (design values at most 0.6) but the last
    patient's, 50 (clamped to 10: the only design value 1), a control; the others alternate
    arms; site, arm and g vary so that each of the 4 strata holds about ``n / 4`` patients,
    half of them g = a."""
    i = np.arange(n)
    x = np.r_[i[:-1] % 9, 50.0]
    arm = ["treated" if k % 2 and k < n - 1 else "control" for k in i]
    return pa.table(
        {
            "site": pa.array((i // 2) % 2 + 1),
            "arm": pa.array(arm),
            "x": pa.array(x),
            "g": pa.array(np.where((i // 4) % 2 == 0, "a", "b")),
            "t": pa.array(np.linspace(0.2, 3.0, n)),
            "e": pa.array(np.arange(n) % 3 == 0),
            "y": pa.array(np.arange(n) % 2 == 0),
        }
    )


def blocks_per_kind(plan: AnalysisPlan, table: pa.Table, propensity: Any, theta: Any = None) -> dict[TaskKind, Any]:
    """Each served kind's layout and exact blocks on ``table`` (one row per patient)."""
    out: dict[TaskKind, Any] = {}
    for kind in served_kinds(plan):
        patients = patient_table(analysed(plan, kind), table, unit_column=None, rng=np.random.default_rng(0))
        out[kind] = (layout(plan, kind), release_of(plan, kind, patients, np.asarray(propensity), theta))
    return out


@pytest.mark.parametrize("cap", [1.0, 10.0, 1000.0])
def test_a_propensity_that_singles_out_one_patient_gives_them_the_cap_and_no_more(cap: float) -> None:
    """ATT: a control weighs exp(η). η = 1e9 (z - 0.9) on the design value z of x gives the one
    control at the upper bound (z = 1) η = 1e8, the cap; every other control η <= -1e8, weight 0."""
    logistic = {"family": "logistic", "outcome": "y", "covariates": ["arm", "x"]}
    plan = weighted_plan("att", cap, logistic)
    table = cohort()
    hostile = np.array([-0.9e9, 1e9])
    patients = patient_table(
        analysed(plan, TaskKind.DP_DESCRIBE), table, unit_column=None, rng=np.random.default_rng(0)
    )
    weights = plan_weights(plan, patients, hostile)
    assert weights is not None and np.isfinite(weights).all()
    control = (patients.stratum % 2) == 0
    target = patients.rows == table.num_rows - 1
    assert weights[target].tolist() == [cap]
    assert np.all(weights[control & ~target] == 0.0) and np.all(weights[~control] == 1.0)
    # The singled-out patient moves each weighted block by exactly the cap times what they move
    # its unweighted twin, within the sensitivity.
    without = table.slice(0, table.num_rows - 1)
    theta = np.array([3.0, -2.0, 1.0])
    for kind, (release, before) in blocks_per_kind(plan, table, hostile, theta).items():
        _, after = blocks_per_kind(plan, without, hostile, theta)[kind]
        for block in release.blocks:
            moved = before[block.name] - after[block.name]
            assert np.isfinite(before[block.name]).all()
            assert np.linalg.norm(moved) <= block.sensitivity * (1 + 1e-12), (kind, block.name)
        if kind is TaskKind.DP_DESCRIBE:
            twins = {"x.weighted.sum": "x.sum", "x.weighted.n": "x.n", "g.weighted.counts": "g.counts"}
            for weighted, plain in twins.items():
                moved_weighted = before[weighted] - after[weighted]
                np.testing.assert_allclose(moved_weighted, cap * (before[plain] - after[plain]), rtol=1e-12)
            assert (before[WEIGHT_SUM] - after[WEIGHT_SUM]).sum() == pytest.approx(cap, rel=1e-12)


@pytest.mark.parametrize("estimand", ["ate", "att"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_huge_coefficients_never_make_a_nan_or_an_infinity(estimand: str, sign: float) -> None:
    model = {"family": "cox", "covariates": ["arm", "g"], "max_cumulative_hazard": 2.0}
    plan = weighted_plan(estimand, 1000.0, model)
    table = cohort(30)
    assert plan.model is not None
    theta = [sign * 1e9] * plan.model.width
    for propensity in ([sign * 1e9, sign * 1e9], [sign * 1e9, -sign * 1e9], [0.0, sign * 1e9]):
        for kind, (release, blocks) in blocks_per_kind(plan, table, propensity, theta).items():
            for name, values in blocks.items():
                assert np.isfinite(values).all(), (kind, name, propensity)
            # And the noisy release takes them (it refuses any value that is not finite).
            noisy_release(blocks, release, noise_multiplier=1.0, min_cell_size=0, rng=np.random.default_rng(0))


def test_a_patient_without_a_weight_adds_nothing_weighted() -> None:
    """A missing propensity covariate: counted as unweighted (describe), excluded (glm,
    propensity). A treatment missing or neither category: in no arm (describe, survival),
    excluded from the regressions; nothing weighted moves for any of them."""
    logistic = {"family": "logistic", "outcome": "y", "covariates": ["g"]}
    plan = weighted_plan("ate", 10.0, logistic)
    base = cohort()
    extra = {
        "missing x": {"arm": "treated", "x": None},
        "other arm": {"arm": "placebo", "x": 3.0},
        "null arm": {"arm": None, "x": 3.0},
    }
    propensity = [0.3, -1.2]
    before = blocks_per_kind(plan, base, propensity, [0.1, 0.2])
    for case, row in extra.items():
        added = {**{c: base.column(c)[0].as_py() for c in base.column_names}, **row}
        table = pa.concat_tables([base, pa.table({c: pa.array([added[c]], base.schema.field(c).type) for c in added})])
        after = blocks_per_kind(plan, table, propensity, [0.1, 0.2])
        for kind, (release, blocks) in after.items():
            for block in release.blocks:
                moved = blocks[block.name] - before[kind][1][block.name]
                in_no_arm = case != "missing x" and kind in (TaskKind.DP_DESCRIBE, TaskKind.DP_SURVIVAL)
                if in_no_arm or block.statistic in WEIGHTED_STATISTICS or block.name in (GLM_SCORE, GLM_INFORMATION):
                    assert not moved.any(), (case, kind, block.name)
                elif block.name == WEIGHT_COUNT:
                    assert moved.sum(axis=0).tolist() == [0.0, 1.0], case  # one more unweighted
                elif block.name == GLM_COUNT:
                    assert moved[0].tolist() == [0.0, 1.0], (case, kind)  # one more excluded


def test_the_weighted_sensitivities_are_reached() -> None:
    """A treated patient at the bounds with η = -1e9 (ATE weight 1 + e^{1e9}, cut to the cap)
    moves every weighted block by its full sensitivity: the bounds are tight, not loose by accident."""
    cap = 7.5
    logistic = {"family": "logistic", "outcome": "y", "covariates": ["x", "g"]}
    plan = weighted_plan("ate", cap, logistic)
    row = {"site": [1], "arm": ["treated"], "x": [50.0], "g": ["b"], "t": [0.5], "e": [True], "y": [False]}
    one = pa.table(row)
    kinds = blocks_per_kind(plan, one, [-1e9, 0.0], [20.0, 20.0, 20.0])  # glm: μ ≈ 1, y = 0
    for kind in (TaskKind.DP_DESCRIBE, TaskKind.DP_SURVIVAL):
        release, blocks = kinds[kind]
        for block in release.blocks:
            if block.statistic in WEIGHTED_STATISTICS:
                norm = float(np.linalg.norm(blocks[block.name]))
                assert norm == pytest.approx(block.sensitivity, rel=1e-9), (kind, block.name)
    release, blocks = kinds[TaskKind.DP_GLM]
    score = float(np.linalg.norm(blocks[GLM_SCORE]))
    assert score == pytest.approx(release.block(GLM_SCORE).sensitivity, rel=1e-9)
    assert release.block(GLM_SCORE).sensitivity == pytest.approx(cap * math.sqrt(3.0))
    # At μ = 1/2 the information is cap · x xᵀ / 4 with x = (1, 1, 1): its whole matrix has the block's norm.
    _, even = blocks_per_kind(plan, one, [-1e9, 0.0], [0.0, 0.0, 0.0])[TaskKind.DP_GLM]
    full = np.full((3, 3), cap / 4.0)
    np.testing.assert_allclose(even[GLM_INFORMATION][0], upper_triangle(full), rtol=1e-12)
    assert np.linalg.norm(full) == pytest.approx(release.block(GLM_INFORMATION).sensitivity, rel=1e-12)
    assert kinds[TaskKind.DP_SURVIVAL][1][WEIGHTED_EXITS].max() == cap


# -- suppression ----------------------------------------------------------------------------


def check_withheld_together(release: ReleaseLayout, released: dict[str, float]) -> None:
    """A weighted count of a withheld cell is withheld; so are a numeric variable's weighted sums
    in a stratum whose present count is, and the sum of the weights where the weighted count is."""

    def withheld(name: str, stratum: int, cell: int) -> bool:
        return math.isnan(released[f"{name}[{stratum}][{cell}]"])

    for block in release.blocks:
        for stratum in range(release.strata):
            if block.statistic is Statistic.COUNTS:
                for cell in range(len(block.cells)):
                    if withheld(block.name, stratum, cell):
                        assert withheld(f"{block.column}.weighted.counts", stratum, cell), (block.name, stratum, cell)
            if block.statistic is Statistic.PRESENCE and withheld(block.name, stratum, 0):
                for statistic in ("weighted.n", "weighted.sum"):
                    assert withheld(f"{block.column}.{statistic}", stratum, 0), (block.column, statistic, stratum)
            if block.name == WEIGHT_COUNT and withheld(WEIGHT_COUNT, stratum, 0):
                assert withheld(WEIGHT_SUM, stratum, 0), stratum


@SETTINGS
@given(table=tables(), plan_json=weighted_plans(), data=st.data())
def test_weighted_twins_of_withheld_counts_are_withheld(
    table: pa.Table, plan_json: dict[str, Any], data: st.DataObject
) -> None:
    plan = plan_of(plan_json)
    assert plan.weighting is not None
    propensity = data.draw(coefficients(plan.weighting.propensity_model.width))
    describe = analysed(plan, TaskKind.DP_DESCRIBE)
    patients = patient_table(describe, table, unit_column="u", rng=np.random.default_rng(0))
    release = layout(plan, TaskKind.DP_DESCRIBE)
    blocks = release_of(plan, TaskKind.DP_DESCRIBE, patients, propensity, None)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    minimum = data.draw(st.integers(1, 20))
    released = noisy_release(blocks, release, noise_multiplier=0.01, min_cell_size=minimum, rng=rng)
    check_withheld_together(release, released)


def test_a_small_treated_arm_withholds_its_weighted_numbers() -> None:
    plan = weighted_plan("ate", 10.0)
    table = cohort(40)
    release, blocks = blocks_per_kind(plan, table, [0.5, 1.0])[TaskKind.DP_DESCRIBE]
    released = noisy_release(blocks, release, noise_multiplier=0.01, min_cell_size=6, rng=np.random.default_rng(7))
    check_withheld_together(release, released)
    # 4 strata (site x arm) of 9 to 11 patients: their g counts (about 5) and x's missing
    # counts (0) are withheld, and their weighted twins with them; x's weighted sums are not.
    for stratum in range(4):
        assert math.isnan(released[f"x.n[{stratum}][1]"]) and math.isnan(released[f"x.weighted.n[{stratum}][1]"])
        assert not math.isnan(released[f"x.weighted.sum[{stratum}][0]"])
    assert sum(math.isnan(v) for k, v in released.items() if k.startswith("g.weighted.counts")) >= 4


# -- wrong inputs ----------------------------------------------------------------------------


def test_wrong_weights_and_coefficients_are_refused() -> None:
    logistic = {"family": "logistic", "outcome": "y", "covariates": ["x"]}
    plan = weighted_plan("ate", 10.0, logistic)
    unweighted = plan_of({"variables": [X, G], "survival": SURVIVAL, "model": logistic})
    table = cohort()
    describe = patient_table(
        analysed(plan, TaskKind.DP_DESCRIBE), table, unit_column=None, rng=np.random.default_rng(0)
    )
    for bad in (None, np.zeros(3), np.zeros((2, 1)), [0.0, math.nan], [math.inf, 0.0], [0.0, -math.inf]):
        with pytest.raises(ValueError):
            plan_weights(plan, describe, bad)
    with pytest.raises(ValueError):
        plan_weights(unweighted, describe, [0.0, 0.0])
    weights = plan_weights(plan, describe, [0.0, 0.0])
    assert weights is not None
    with pytest.raises(ValueError):
        exact_release(plan, layout(plan, TaskKind.DP_DESCRIBE), describe, None)
    plain = patient_table(unweighted, table, unit_column=None, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        exact_release(unweighted, layout(unweighted, TaskKind.DP_DESCRIBE), plain, np.ones(plain.size))
    glm = patient_table(analysed(plan, TaskKind.DP_GLM), table, unit_column=None, rng=np.random.default_rng(0))
    with pytest.raises(ValueError):
        exact_model_release(plan, glm, [0.0, 0.0], None)
    plain_glm = patient_table(
        analysed(unweighted, TaskKind.DP_GLM), table, unit_column=None, rng=np.random.default_rng(0)
    )
    with pytest.raises(ValueError):
        exact_model_release(unweighted, plain_glm, [0.0, 0.0], np.ones(plain_glm.size))
    with pytest.raises(ValueError):
        exact_propensity_release(unweighted, plain_glm, [0.0, 0.0])
    # Weights that plan_weights would never make (above the cap, negative, the wrong length) are
    # refused by the sums themselves, whatever computed them.
    release = layout(plan, TaskKind.DP_DESCRIBE)
    for bad_weights, words in (
        (np.full(describe.size, 10.5), "outside"),
        (np.full(describe.size, -0.1), "outside"),
        (np.ones(describe.size + 1), "shape"),
    ):
        with pytest.raises(ValueError, match=words):
            exact_release(plan, release, describe, bad_weights)
    with pytest.raises(ValueError, match="outside"):
        exact_model_release(plan, glm, [0.0, 0.0], np.full(glm.size, 1e6))
    exact_release(plan, release, describe, np.where(np.arange(describe.size) % 2 == 0, 10.0, np.nan))


@given(st.integers(1, 64), st.floats(1.0, 1000.0), st.floats(0.001, 1000.0))
def test_the_sensitivities_never_round_below_the_exact_bounds(covariates: int, cap: float, hazard: float) -> None:
    """√R², √(1 + Λ²) and the products with the cap are declared at or above their exact real
    values (a float √3 is below √3: a patient at the bounds would move the score by an ulp more)."""
    root = root_up(covariates)
    assert Fraction(root) ** 2 >= covariates and Fraction(math.nextafter(root, 0.0)) ** 2 < covariates
    baseline = root_up(1 + Fraction(hazard) ** 2)
    assert Fraction(baseline) ** 2 >= 1 + Fraction(hazard) ** 2
    assert Fraction(product_up(root, cap)) >= Fraction(root) * Fraction(cap)
    assert product_up(2.0, 3.0) == 6.0 and root_up(4) == 2.0  # exact ones stay exact
