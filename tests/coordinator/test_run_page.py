"""The run report's HTML page (edge_sponsor.coordinator.run_page): what it shows of a run
and what it makes of hostile names. The page a real run writes is checked, in Chromium,
by tests/coordinator/test_federated_demo.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from edge_sponsor.coordinator.report import RoundRecord, RunReport, SiteSummary, SiteTask
from edge_sponsor.coordinator.run_page import coefficients_of, design_columns, metric_series, render_run_page
from edge_sponsor.publisher.packaging import complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import (
    ZooModel,
    build_linear_regression,
    build_logistic_regression,
    build_mlp_classifier,
    build_weibull_survival,
)
from tests.packages.package_builders import FEATURES, NUM_FEATURES

HOSTILE = '<img src=x onerror="alert(1)">'


def _report(site: str = "north", metric: str = "loss") -> RunReport:
    rounds = tuple(
        RoundRecord(
            round=r,
            seconds=1.5,
            updated=r != 2,
            training=(SiteTask(site, "dp_gradient", "ok" if r != 2 else "UNAVAILABLE", 1.0),),
            metrics={metric: 1.0 / r} if r % 2 == 0 else {},
            metrics_noise_sd={metric: 0.05} if r != 4 else {},
        )
        for r in range(1, 7)
    )
    sites = (SiteSummary(site, "127.0.0.1:1", "d", epsilon_spent_before=0.5, epsilon_spent=1.25, delta=1e-6),)
    return RunReport("fed", "run-1", "fedsgd", HOSTILE, "sha256:00", "t0", "t1", {}, rounds, sites)


def test_every_name_is_escaped_and_nothing_runs_or_is_fetched() -> None:
    html = render_run_page(_report(site=HOSTILE, metric=HOSTILE))
    assert HOSTILE not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    assert "<script" not in html and "default-src 'none'" in html


def test_a_metric_without_its_noise_sd_is_marked_noisy_and_drawn_without_a_bar() -> None:
    report = _report()
    series = metric_series(report.rounds)
    assert [(p.round, p.sd) for p in series["loss"]] == [(2, 0.05), (4, None), (6, 0.05)]
    html = render_run_page(report)
    assert "loss 0.25 (noisy)" in html and "loss 0.5 ±0.05" in html
    assert html.count('stroke-width="3"') == 2  # the two bars; round 4 has none


def test_a_run_without_evaluation_says_so() -> None:
    report = _report()
    quiet = RunReport(
        **{
            **report.__dict__,
            "rounds": tuple(r.__class__(r.round, r.seconds, r.updated, r.training) for r in report.rounds),
        }
    )
    assert "No federated evaluation ran" in render_run_page(quiet)


def _manifest(model: ZooModel, labels: tuple[str, ...] = ("outcome",)) -> Manifest:
    fields = zoo_manifest_fields(
        model, name="acme/model", version="1.0.0", publisher="acme", features=FEATURES, label_columns=labels
    )
    return parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))


def test_design_columns_follow_the_preprocessing() -> None:
    manifest = _manifest(build_logistic_regression(NUM_FEATURES))
    assert design_columns(manifest) == ("age (per SD, 12.25)", "sex=F", "sex=M", "bmi")


def test_logistic_coefficients_come_with_odds_ratios() -> None:
    w = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    table = coefficients_of(_manifest(build_logistic_regression(NUM_FEATURES)), {"w": w, "b": np.float32(-0.25)})
    assert table is not None and table.ratio_name == "odds ratio"
    assert [(row.name, row.value) for row in table.rows][:2] == [("(intercept)", -0.25), ("age (per SD, 12.25)", 0.5)]
    assert [row.ratio for row in table.rows[1:]] == pytest.approx([math.exp(v) for v in w.astype(float)])


def test_linear_coefficients_have_no_ratio_and_weibull_gives_hazard_ratios() -> None:
    w = np.array([0.5, -1.0, 0.0, 2.0], np.float32)
    linear = coefficients_of(_manifest(build_linear_regression(NUM_FEATURES)), {"w": w, "b": np.float32(1.0)})
    assert linear is not None and linear.ratio_name is None and all(row.ratio is None for row in linear.rows)
    weibull = coefficients_of(
        _manifest(build_weibull_survival(NUM_FEATURES), ("time", "event")),
        {"w": w, "b": np.float32(6.0), "log_shape": np.float32(math.log(1.5))},
    )
    assert weibull is not None and weibull.ratio_name == "hazard ratio"
    ratios = [row.ratio for row in weibull.rows if row.ratio is not None]
    assert ratios == pytest.approx([math.exp(-1.5 * v) for v in w.astype(float)])


def test_a_model_that_is_not_linear_in_its_features_shows_no_coefficients() -> None:
    mlp = build_mlp_classifier(NUM_FEATURES, [3], 2)
    params = mlp.init_parameters(np.random.default_rng(0))
    assert coefficients_of(_manifest(mlp, ("outcome",)), params) is None
    # Parameters of the wrong shape for the manifest are not shown as if they fitted.
    logistic = _manifest(build_logistic_regression(NUM_FEATURES))
    assert coefficients_of(logistic, {"w": np.zeros(3, np.float32), "b": np.float32(0)}) is None


def test_the_last_score_histogram_is_drawn_as_an_roc_curve_and_a_calibration_table() -> None:
    from dataclasses import replace

    from edge_sponsor.publisher.zoo import score_histogram
    from edge_sponsor.statistics.evaluation import auc

    bins = 4
    # Negatives mostly in the low-risk bins, positives in the high ones; bin 2 nearly empty.
    histogram = np.array([[50.0, 30.0, 0.4, 5.0], [5.0, 10.0, -0.6, 40.0]])
    cells = dict(zip(score_histogram.cell_names(bins), histogram.ravel().tolist(), strict=True))
    report = _report()
    last = replace(
        report.rounds[-1],
        metrics={"auc": auc(histogram), "calibration_points": -3.2},
        metrics_noise_sd={"auc": 0.02, "calibration_points": 1.1},
        score_cells=cells,
        score_cell_sd=1.5,
    )
    html = render_run_page(replace(report, rounds=(*report.rounds[:-1], last)))
    assert "Discrimination and calibration (after round 6)" in html
    assert f"AUC {auc(histogram):.3f} ± 0.020 (DP SD)" in html and "-3.2 ± 1.1 points" in html
    assert 'aria-label="ROC curve of the model after round 6"' in html
    # Bin 2's noisy total (-0.2) is below 3 noise SDs of a bin total: no observed rate.
    assert html.count("withheld: too few") == 1
    assert "<td class='num'>0.125</td><td class='num'>55.0</td><td class='num'>0.091</td>" in html
    # Without a score histogram, no such section.
    assert "Discrimination and calibration" not in render_run_page(report)


def test_a_missing_indicator_has_its_own_coefficient() -> None:
    from edge_sponsor.publisher.packaging import FeatureColumn

    columns = (FeatureColumn("age", "float64", impute=60.0, indicator=True), FeatureColumn("bmi", "float64"))
    model = build_logistic_regression(3)
    fields = zoo_manifest_fields(
        model, name="acme/model", version="1.0.0", publisher="acme", features=columns, label_columns=("outcome",)
    )
    manifest = parse_manifest(parse_strict_json(canonical_json(complete_manifest(fields, zoo_graphs(model)))))
    assert design_columns(manifest) == ("age", "age missing", "bmi")
    table = coefficients_of(manifest, {"w": np.array([0.5, 1.0, -0.25], np.float32), "b": np.zeros((), np.float32)})
    assert table is not None and [row.name for row in table.rows] == ["(intercept)", "age", "age missing", "bmi"]
