"""Table 1 against pandas on real data (exact counts), its noise-aware intervals, and suppression."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifelines.datasets import load_gbsg2, load_lung

from agent.packages.manifest import TaskKind
from agent.packages.plan import AnalysisPlan, CategoricalVariable, NumericVariable, Stratum
from agent.packages.release_layout import layout
from edge_sponsor.statistics.table_one import (
    CategoricalSummary,
    NumericSummary,
    TableOne,
    TableOneColumn,
    histogram_quantile,
    table_one,
)
from tests.sponsor_statistics.simulate import exact_blocks, noisy_release, releases, split_sites

TINY = 1e-6
GBSG2 = AnalysisPlan(
    (),
    (Stratum("horTh", ("no", "yes")),),
    (
        NumericVariable("age", 20, 80, tuple(float(a) for a in range(20, 81))),
        NumericVariable("tsize", 0, 150),
        CategoricalVariable("tgrade", ("I", "II", "III")),
        CategoricalVariable("menostat", ("Pre", "Post")),
    ),
    None,
)


def _column(table: TableOne, site: str, stratum: str) -> TableOneColumn:
    return next(c for c in table.columns if c.site == site and c.stratum == stratum)


def _numeric(column: TableOneColumn, name: str) -> NumericSummary:
    return next(v for v in column.variables if isinstance(v, NumericSummary) and v.column == name)


def _categorical(column: TableOneColumn, name: str) -> CategoricalSummary:
    return next(v for v in column.variables if isinstance(v, CategoricalSummary) and v.column == name)


def test_means_sds_and_shares_are_pandas_per_site_per_stratum_and_pooled() -> None:
    frame = load_gbsg2()
    parts = split_sites(frame, 3, 4)
    table = table_one(GBSG2, releases(parts, GBSG2, layout(GBSG2, TaskKind.DP_DESCRIBE), TINY, 0))
    assert [(c.site, c.stratum) for c in table.columns[:4]] == [
        ("pooled", "horTh=no"),
        ("site-1", "horTh=no"),
        ("site-2", "horTh=no"),
        ("site-3", "horTh=no"),
    ]
    cases = [("pooled", "all", frame)] + [("pooled", f"horTh={c}", frame[frame.horTh == c]) for c in ("no", "yes")]
    cases += [(f"site-{i + 1}", "horTh=yes", p[p.horTh == "yes"]) for i, p in enumerate(parts)]
    cases += [(f"site-{i + 1}", "all", p) for i, p in enumerate(parts)]
    for site, stratum, rows in cases:
        column = _column(table, site, stratum)
        assert column.patients.value == pytest.approx(len(rows), abs=1e-3)
        for name in ("age", "tsize"):
            summary = _numeric(column, name)
            values = rows[name].clip(*((20, 80) if name == "age" else (0, 150)))
            assert summary.mean.value == pytest.approx(values.mean(), abs=1e-4)
            assert summary.sd == pytest.approx(values.std(ddof=1), abs=1e-4)
            assert summary.missing_percent == pytest.approx(0.0, abs=1e-4)
            # At this noise the interval is the sampling one: mean ± z SD / √n.
            assert summary.mean.se == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), rel=1e-4)
        # Unit-wide bins on integer ages: the interpolated median is within one bin of pandas'.
        age = _numeric(column, "age")
        assert abs(age.median - rows["age"].median()) <= 1.0
        assert abs(age.q1 - rows["age"].quantile(0.25)) <= 1.0 and abs(age.q3 - rows["age"].quantile(0.75)) <= 1.0
        grade = _categorical(column, "tgrade")
        for row in grade.rows:
            expected = (rows["tgrade"] == row.label).mean() if row.label in ("I", "II", "III") else 0.0
            assert row.proportion.value == pytest.approx(expected, abs=1e-6)
            assert row.count == pytest.approx(expected * len(rows), abs=1e-3)


def test_missing_values_are_counted_and_the_interval_includes_the_noise() -> None:
    frame = load_lung()
    plan = AnalysisPlan(
        (),
        (Stratum("sex", (1, 2)),),
        (NumericVariable("wt.loss", -30, 70), CategoricalVariable("ph.ecog", (0, 1, 2, 3))),
        None,
    )
    parts = split_sites(frame, 3, 1)
    shape = layout(plan, TaskKind.DP_DESCRIBE)
    exact = table_one(plan, releases(parts, plan, shape, TINY, 0))
    pooled = _numeric(_column(exact, "pooled", "all"), "wt.loss")
    assert pooled.missing_percent == pytest.approx(100 * frame["wt.loss"].isna().mean(), abs=1e-4)
    assert pooled.n == pytest.approx(frame["wt.loss"].notna().sum(), abs=1e-3)
    ecog = _categorical(_column(exact, "pooled", "all"), "ph.ecog")
    assert [r.label for r in ecog.rows] == ["0", "1", "2", "3", "(other)", "(missing)"]
    assert ecog.rows[-1].proportion.value == pytest.approx(frame["ph.ecog"].isna().mean(), abs=1e-6)
    assert ecog.rows[1].proportion.value == pytest.approx((frame["ph.ecog"] == 1).mean(), abs=1e-6)
    # With noise, the standard error is larger than the sampling one by the noise's own share.
    noisy = table_one(plan, releases(parts, plan, shape, 1.0, 0))
    summary = _numeric(_column(noisy, "pooled", "all"), "wt.loss")
    sampling = summary.sd / math.sqrt(summary.n)
    assert summary.mean.se > 1.5 * sampling
    assert summary.mean.lower < summary.mean.value < summary.mean.upper


def test_share_intervals_cover_the_exact_share_at_about_their_level() -> None:
    frame = load_gbsg2()
    plan = AnalysisPlan((), (), (CategoricalVariable("tgrade", ("I", "II", "III")),), None)
    shape = layout(plan, TaskKind.DP_DESCRIBE)
    exact = [exact_blocks(p, plan, shape) for p in split_sites(frame, 3, 0)]
    truth = frame["tgrade"].value_counts(normalize=True)
    rng = np.random.default_rng(8)
    hits = []
    for _ in range(300):
        sites = [noisy_release(f"s{i}", e, shape, 1.5, rng) for i, e in enumerate(exact)]
        rows = _categorical(_column(table_one(plan, sites), "pooled", "all"), "tgrade").rows
        hits += [r.proportion.lower <= truth[r.label] <= r.proportion.upper for r in rows[:3]]
    # The sampling part makes the band conservative around the data's own share.
    assert 0.95 <= np.mean(hits) <= 1.0
    # The noise part is in the standard error: sampling p(1-p)/N plus (v_a + p^2 v_N)/N^2 by the
    # delta method, v the pooled noise variance of one count (3 sites, 2 blocks of sensitivity 1).
    row = rows[0]
    p, n = row.proportion.value, _column(table_one(plan, sites), "pooled", "all").patients.value
    v = 3 * (1.5 * math.sqrt(2)) ** 2
    assert row.proportion.se == pytest.approx(math.sqrt(p * (1 - p) / n + (v + p * p * v) / n**2), rel=1e-9)


def test_withheld_cells_and_strata_are_shown_suppressed_and_left_out_of_the_pool() -> None:
    frame = load_gbsg2()
    parts = split_sites(frame, 3, 4)
    shape = layout(GBSG2, TaskKind.DP_DESCRIBE)
    # site-3 keeps 6 patients on hormone therapy: its whole stratum falls under the minimum of 20;
    # grade I of horTh=no is rare at every site.
    small = pd.concat([parts[2][parts[2].horTh == "no"], parts[2][parts[2].horTh == "yes"].head(6)])
    rng = np.random.default_rng(0)
    sites = [
        noisy_release(f"site-{i + 1}", exact_blocks(p, GBSG2, shape), shape, TINY, rng, min_cell_size=20)
        for i, p in enumerate([*parts[:2], small])
    ]
    table = table_one(GBSG2, sites)
    withheld = _column(table, "site-3", "horTh=yes")
    assert withheld.suppressed and math.isnan(withheld.patients.value)
    assert math.isnan(_numeric(withheld, "age").mean.value)
    assert all(row.suppressed for row in _categorical(withheld, "tgrade").rows)
    pooled = _column(table, "pooled", "horTh=yes")
    kept = pd.concat(parts[:2])
    kept = kept[kept.horTh == "yes"]
    assert pooled.patients.value == pytest.approx(len(kept), abs=1e-3)
    assert pooled.sites == ("site-1", "site-2")
    age = _numeric(pooled, "age")
    assert age.mean.value == pytest.approx(kept["age"].mean(), abs=1e-4)
    assert age.sites_left_out == ("site-3",)
    # "other" and "missing" are empty everywhere: withheld cell by cell, shown as suppressed.
    other = _categorical(pooled, "tgrade").rows[3]
    assert other.label == "(other)" and other.suppressed
    # A share pools only the sites that released both the cell and their count.
    column = _column(table, "pooled", "horTh=no")
    grade = _categorical(column, "tgrade").rows[0]
    released = [i for i in range(3) if not math.isnan(sites[i].scalars["tgrade.counts[0][0]"])]
    assert len(released) < 3, "the fixture should withhold at least one small cell"
    rows = pd.concat([[*parts[:2], small][i] for i in released])
    rows = rows[rows.horTh == "no"]
    assert grade.proportion.value == pytest.approx((rows.tgrade == "I").mean(), abs=1e-6)


def test_histogram_quantiles_interpolate_and_ignore_negative_bins() -> None:
    edges = [0.0, 10.0, 20.0, 30.0]
    assert histogram_quantile(np.array([10.0, 10.0, 0.0]), edges, 0.5) == pytest.approx(10.0)
    assert histogram_quantile(np.array([10.0, -5.0, 10.0]), edges, 0.5) == pytest.approx(10.0)
    assert histogram_quantile(np.array([0.0, 4.0, 0.0]), edges, 0.25) == pytest.approx(12.5)
    assert math.isnan(histogram_quantile(np.array([-1.0, -2.0, 0.0]), edges, 0.5))
    with pytest.raises(ValueError, match="counts"):
        histogram_quantile(np.array([1.0]), edges, 0.5)
