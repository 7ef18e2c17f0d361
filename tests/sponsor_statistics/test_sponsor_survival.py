"""Pooled grouped Kaplan-Meier and log-rank against lifelines on real data, noise calibration, suppression."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines import KaplanMeierFitter
from lifelines.datasets import load_gbsg2, load_lung, load_rossi
from lifelines.statistics import logrank_test, multivariate_logrank_test
from lifelines.utils import median_survival_times
from scipy import stats

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, Stratum, SurvivalSpec
from agent.packages.release_layout import layout
from edge_sponsor.statistics.releases import SiteRelease
from edge_sponsor.statistics.survival import (
    KmMethod,
    analyse_survival,
    chi_square_sf,
    grouped_kaplan_meier,
    log_log_band,
    log_rank,
)
from tests.sponsor_statistics.simulate import exact_blocks, noisy_release, releases, split_sites

TINY = 1e-6
# (loader, time, event, stratum column, its categories)
DATASETS = {
    "gbsg2": (load_gbsg2, "time", "cens", "horTh", ("no", "yes")),
    "rossi": (load_rossi, "week", "arrest", "fin", (0, 1)),
    "lung": (load_lung, "time", "status", "sex", (1, 2)),
}


def _plan(name: str, grid: tuple[float, ...]) -> tuple[pd.DataFrame, AnalysisPlan]:
    load, time, event, column, categories = DATASETS[name]
    plan = AnalysisPlan((), (Stratum(column, categories),), (), SurvivalSpec(time, event, grid))
    return load(), plan


def _distinct(name: str) -> tuple[float, ...]:
    load, time, *_ = DATASETS[name]
    return tuple(float(t) for t in sorted(load()[time].unique()))


def _fit(frame: pd.DataFrame, time: str, event: str, *, reverse: bool = False) -> KaplanMeierFitter:
    observed = 1 - frame[event] if reverse else frame[event]
    return KaplanMeierFitter().fit(frame[time], observed)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_grouped_km_on_a_fine_grid_is_lifelines_on_the_pooled_patients(name: str) -> None:
    _, time, event, column, categories = DATASETS[name]
    frame, plan = _plan(name, _distinct(name))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    result = analyse_survival(
        plan, releases(split_sites(frame, 3, 7), plan, shape, TINY, 1), method=KmMethod.PRODUCT_LIMIT
    )
    assert result.overall is not None
    groups = [(frame[frame[column] == c], result.strata[k]) for k, c in enumerate(categories)]
    for rows, ours in [*groups, (frame, result.overall)]:
        fitted = _fit(rows, time, event)
        grid = list(plan.survival.grid) if plan.survival else []
        expected = fitted.survival_function_at_times(grid).to_numpy()
        got = np.asarray(ours.curve.survival[1:])
        assert np.nanmax(np.abs(got - expected)) < 1e-5
        # Greenwood's band, where it is on the log(-log) scale (away from S = 1).
        band = fitted.confidence_interval_.reindex(grid, method="ffill").to_numpy()
        away = -np.log(got) >= 1.96 * np.sqrt(np.asarray(ours.curve.variance_sampling[1:])) + 1e-9
        assert np.abs(np.asarray(ours.curve.lower[1:])[away] - band[away, 0]).max() < 1e-4
        assert np.abs(np.asarray(ours.curve.upper[1:])[away] - band[away, 1]).max() < 1e-4
        assert ours.curve.median.estimate == pytest.approx(fitted.median_survival_time_) or (
            ours.curve.median.estimate is None and math.isinf(fitted.median_survival_time_)
        )
        interval = median_survival_times(fitted.confidence_interval_).to_numpy()[0]
        for mine, theirs in zip((ours.curve.median.lower, ours.curve.median.upper), interval, strict=True):
            assert (mine is None and math.isinf(theirs)) or mine == pytest.approx(theirs)
        follow_up = _fit(rows, time, event, reverse=True).median_survival_time_
        assert ours.median_follow_up.estimate == pytest.approx(follow_up)
        assert ours.patients == pytest.approx(len(rows), abs=1e-3)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_log_rank_on_a_fine_grid_is_lifelines(name: str) -> None:
    _, time, event, column, categories = DATASETS[name]
    frame, plan = _plan(name, _distinct(name))
    result = analyse_survival(
        plan, releases(split_sites(frame, 3, 3), plan, layout(plan, TaskKind.DP_SURVIVAL), TINY, 2)
    )
    a, b = (frame[frame[column] == c] for c in categories)
    expected = logrank_test(a[time], b[time], a[event], b[event])
    assert result.log_rank is not None
    assert result.log_rank.statistic == pytest.approx(expected.test_statistic, rel=1e-4)
    assert result.log_rank.p_value == pytest.approx(expected.p_value, rel=1e-4)
    assert result.log_rank.degrees_of_freedom == 1
    assert result.log_rank.noise_share < 1e-9


def test_log_rank_of_three_strata_is_lifelines_multivariate() -> None:
    frame = load_gbsg2()
    plan = AnalysisPlan(
        (), (Stratum("tgrade", ("I", "II", "III")),), (), SurvivalSpec("time", "cens", _distinct("gbsg2"))
    )
    result = analyse_survival(
        plan, releases(split_sites(frame, 3, 5), plan, layout(plan, TaskKind.DP_SURVIVAL), TINY, 2)
    )
    expected = multivariate_logrank_test(frame["time"], frame["tgrade"], frame["cens"])
    assert result.log_rank is not None
    assert result.log_rank.degrees_of_freedom == 2
    assert result.log_rank.statistic == pytest.approx(expected.test_statistic, rel=1e-4)


def test_chi_square_tail_is_scipy() -> None:
    for df in (1, 2, 3, 4, 7, 10):
        for x in (0.01, 0.5, 3.84, 12.0, 60.0):
            assert chi_square_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-10, abs=1e-300)


def test_actuarial_is_closer_than_product_limit_on_a_quarterly_grid_with_spread_censoring() -> None:
    frame, plan = _plan("gbsg2", tuple(float(t) for t in np.arange(91.3, 2600, 91.3)))
    parts = releases(split_sites(frame, 3, 1), plan, layout(plan, TaskKind.DP_SURVIVAL), TINY, 1)
    fitted = _fit(frame, "time", "cens").survival_function_at_times(list(plan.survival.grid if plan.survival else []))
    errors = {}
    for method in KmMethod:
        result = analyse_survival(plan, parts, method=method)
        assert result.overall is not None
        errors[method] = np.nanmax(np.abs(np.asarray(result.overall.curve.survival[1:]) - fitted.to_numpy()))
    assert errors[KmMethod.ACTUARIAL] < errors[KmMethod.PRODUCT_LIMIT] / 1.5


@pytest.fixture(scope="module")
def gbsg2_quarterly() -> tuple[AnalysisPlan, list[dict[str, np.ndarray]]]:
    frame, plan = _plan("gbsg2", tuple(float(t) for t in np.arange(91.3, 2300, 91.3)))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    return plan, [exact_blocks(part, plan, shape) for part in split_sites(frame, 3, 0)]


def _noisy(
    plan: AnalysisPlan, exact: list[dict[str, np.ndarray]], sigma: float, rng: np.random.Generator
) -> list[SiteRelease]:
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    return [noisy_release(f"site-{i}", blocks, shape, sigma, rng) for i, blocks in enumerate(exact)]


def test_noise_variance_and_band_coverage_over_repeated_noise(
    gbsg2_quarterly: tuple[AnalysisPlan, list[dict[str, np.ndarray]]],
) -> None:
    """The delta-method noise variance matches the spread over noise draws, and the noise-only band
    covers the noise-free curve at about its level; the full band (Greenwood too) covers more."""
    plan, exact = gbsg2_quarterly
    rng = np.random.default_rng(11)
    truth = analyse_survival(plan, _noisy(plan, exact, 0.0, rng))
    sigma, repeats = 2.0, 200
    logs, noise, covered, covered_full = [], [], [], []
    for _ in range(repeats):
        result = analyse_survival(plan, _noisy(plan, exact, sigma, rng))
        for k, stratum in enumerate(result.strata):
            curve = stratum.curve
            s0 = np.asarray(truth.strata[k].curve.survival)
            survival = np.asarray(curve.survival)
            lower, upper = log_log_band(survival, np.asarray(curve.variance_noise), 1.959964)
            covered.append((lower <= s0) & (s0 <= upper))
            covered_full.append((np.asarray(curve.lower) <= s0) & (s0 <= np.asarray(curve.upper)))
            if k == 0:
                logs.append(np.log(survival))
                noise.append(np.asarray(curve.variance_noise))
    # Points where the curve is informative: away from 1, with many still at risk.
    s0 = np.asarray(truth.strata[0].curve.survival)
    interior = (s0 < 0.95) & (np.asarray(truth.strata[0].curve.at_risk) >= 60)
    assert interior.sum() >= 5
    spread = np.std(np.asarray(logs), axis=0)[interior]
    predicted = np.sqrt(np.mean(np.asarray(noise), axis=0))[interior]
    assert np.all(predicted / spread > 0.8) and np.all(predicted / spread < 1.3), predicted / spread
    rate = np.asarray(covered)[0::2][:, interior].mean()
    assert 0.9 <= rate <= 0.99, rate
    assert np.asarray(covered_full)[0::2][:, interior].mean() >= rate


def test_log_rank_keeps_its_level_under_the_null_with_noise() -> None:
    """Strata drawn at random (no difference): with the noise in the variance about 5 % of tests
    reject at 0.05; a test that ignored the noise would reject far more often."""
    frame = load_gbsg2()
    grid = tuple(float(t) for t in np.arange(182.6, 2300, 182.6))
    plan = AnalysisPlan((), (Stratum("arm", (0, 1)),), (), SurvivalSpec("time", "cens", grid))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    rng = np.random.default_rng(3)
    rejected = naive_rejected = 0
    repeats = 150
    for _ in range(repeats):
        frame = frame.assign(arm=rng.integers(0, 2, len(frame)))
        parts = [
            noisy_release(f"s{i}", exact_blocks(p, plan, shape), shape, 3.0, rng)
            for i, p in enumerate(split_sites(frame, 3, 0))
        ]
        result = analyse_survival(plan, parts)
        assert result.log_rank is not None
        rejected += result.log_rank.p_value < 0.05
        naive = result.log_rank.statistic / max(1.0 - result.log_rank.noise_share, 1e-9)
        naive_rejected += chi_square_sf(naive, 1) < 0.05
    assert rejected / repeats < 0.11
    assert naive_rejected > 2 * rejected


def test_a_withheld_stratum_is_left_out_of_its_pool_and_of_the_log_rank() -> None:
    frame, plan = _plan("rossi", tuple(float(t) for t in range(4, 53, 4)))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    parts = split_sites(frame, 3, 2)
    # site-3 has only 20 patients of fin=1: under the minimum cell size of 30, withheld.
    small = pd.concat([parts[2][parts[2]["fin"] == 0], parts[2][parts[2]["fin"] == 1].head(20)])
    rng = np.random.default_rng(0)
    sites = [
        noisy_release(f"site-{i + 1}", exact_blocks(p, plan, shape), shape, TINY, rng, min_cell_size=30)
        for i, p in enumerate([*parts[:2], small])
    ]
    assert all(math.isnan(v) for k, v in sites[2].scalars.items() if k.startswith("survival.exits[1]"))
    result = analyse_survival(plan, sites, method=KmMethod.PRODUCT_LIMIT)
    yes = result.strata[1]
    assert yes.sites == ("site-1", "site-2") and yes.sites_left_out == ("site-3",)
    kept = pd.concat(parts[:2])
    expected = _fit(kept[kept["fin"] == 1], "week", "arrest").survival_function_at_times(
        list(plan.survival.grid if plan.survival else [])
    )
    assert np.abs(np.asarray(yes.curve.survival[1:]) - expected.to_numpy()).max() < 1e-5
    assert result.strata[0].sites == ("site-1", "site-2", "site-3")
    assert result.log_rank is not None and result.log_rank.sites_left_out == ("site-3",)
    a, b = kept[kept["fin"] == 0], kept[kept["fin"] == 1]
    assert result.log_rank.statistic == pytest.approx(
        logrank_test(a["week"], b["week"], a["arrest"], b["arrest"]).test_statistic, rel=0.05
    )
    assert result.overall is not None and result.overall.sites_left_out == ("site-3",)


def test_noisy_counts_give_a_monotone_curve_in_the_unit_interval() -> None:
    rng = np.random.default_rng(4)
    events = rng.normal(0.0, 3.0, 41)
    censored = rng.normal(0.0, 3.0, 41)
    events[:10] += 20
    censored[10:] += 5
    curve = grouped_kaplan_meier(events, censored, 9.0, [float(t) for t in range(1, 41)])
    values = np.asarray(curve.survival)
    finite = values[np.isfinite(values)]
    assert np.all(np.diff(finite) <= 1e-12) and finite.min() >= 0 and finite.max() <= 1
    assert np.all(np.asarray(curve.lower)[: finite.size] <= finite + 1e-12)


def test_bad_input_is_refused() -> None:
    frame, plan = _plan("rossi", (10.0, 20.0))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    good = releases([frame], plan, shape, TINY, 0)[0]
    with pytest.raises(ValueError, match="share a site name"):
        analyse_survival(plan, [good, good])
    with pytest.raises(ValueError, match="no site releases"):
        analyse_survival(plan, [])
    with pytest.raises(KeyError, match="lacks"):
        analyse_survival(plan, [SiteRelease("x", {}, 1.0)])
    with pytest.raises(ValueError, match="noise multiplier"):
        SiteRelease("x", {}, -1.0)
    with pytest.raises(ValueError, match="intervals"):
        grouped_kaplan_meier(np.zeros(2), np.zeros(2), 0.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="K ≥ 2"):
        log_rank(np.zeros((1, 3)), np.zeros((1, 3)), [0.0])
    no_survival = AnalysisPlan((), plan.strata, (), None)
    with pytest.raises(ValueError, match="no survival"):
        analyse_survival(no_survival, [good])


def test_the_agents_own_release_is_read_as_the_oracle_reads_it() -> None:
    """agent.statistics computes the release the sponsor pools: its exact blocks are the oracle's."""
    tables = pytest.importorskip("agent.statistics.tables")
    patients_module = pytest.importorskip("agent.statistics.patients")
    import pyarrow as pa

    frame, plan = _plan("gbsg2", tuple(float(t) for t in np.arange(182.6, 2300, 182.6)))
    shape = layout(plan, TaskKind.DP_SURVIVAL)
    part = split_sites(frame, 3, 0)[0]
    patients = patients_module.patient_table(
        plan, pa.Table.from_pandas(part, preserve_index=False), unit_column=None, rng=np.random.default_rng(0)
    )
    exact = tables.exact_release(plan, shape, patients)
    oracle = exact_blocks(part, plan, shape)
    assert set(exact) == set(oracle)
    for name, values in oracle.items():
        np.testing.assert_array_equal(exact[name], values)
    scalars = tables.noisy_release(exact, shape, noise_multiplier=TINY, min_cell_size=0, rng=np.random.default_rng(1))
    result = analyse_survival(plan, [SiteRelease("site-1", scalars, TINY)], method=KmMethod.PRODUCT_LIMIT)
    expected = _fit(part[part["horTh"] == "no"], "time", "cens")
    got = np.asarray(result.strata[0].curve.survival[1:])
    np.testing.assert_allclose(got, expected.survival_function_at_times(list(shape_grid(plan))).to_numpy(), atol=0.05)


def shape_grid(plan: AnalysisPlan) -> tuple[float, ...]:
    return plan.survival.grid if plan.survival else ()
