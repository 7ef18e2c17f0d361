"""`edge-sponsor study iptw` end to end: three real agents over loopback mTLS, each holding a third
of gbsg2 (observational: hormonal therapy, ``horTh``, was not randomised; each patient's row
repeated 1 to 3 times under a privacy unit), a signed weighted plan, and every stage of the study:
the propensity model (dp_propensity), the balance (dp_describe with the weights), the weighted
survival curves (dp_survival) and the weighted Cox model (dp_glm), each site weighing its own
patients at the coefficients the coordinator sends.

Checked on what the command writes: the propensity weights balance the covariates that were not;
the weighted hazard ratio lands within its reported interval of lifelines' weighted Cox model
(robust, stratified by site) on the pooled patients with statsmodels' propensity model; each site
was charged what dp-accounting composes for every task; the love plot and the weighted curves are
drawn (headless Chromium); a plan without weighting or with an unweighted command is refused,
nothing charged.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_gbsg2
from lifelines.exceptions import StatisticalWarning
from scipy.special import expit

from agent.identity.agent_key import AgentKey
from edge_sponsor.cli.main import main as sponsor_main
from edge_sponsor.statistics.iptw_report import LOVE_MAX_REACH, LOVE_MIN_REACH, LOVE_PLOT
from tests.conftest import Pki
from tests.headless_chromium import decode_png, rgb, screenshot
from tests.packages.package_builders import new_key
from tests.tasks.test_plan_tasks import PlanSite, federation_file, plan_package
from tests.tasks.test_unit_level_budget import independent_epsilon

GRID = [500.0, 1000.0, 1500.0, 2700.0]
MAX_WEIGHT = 10.0
IPTW_PLAN: dict[str, Any] = {
    "cohort": [],
    "strata": [],
    "variables": [
        {"column": "horTh", "kind": "categorical", "categories": ["no", "yes"]},
        {"column": "age", "kind": "numeric", "bounds": [20, 80]},
        {"column": "menostat", "kind": "categorical", "categories": ["Pre", "Post"]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": GRID},
    "model": {"family": "cox", "covariates": ["horTh"], "max_cumulative_hazard": 3},
    "weighting": {
        "treatment": "horTh",
        "covariates": ["age", "menostat", "tgrade"],
        "estimand": "ate",
        "max_weight": MAX_WEIGHT,
    },
}
SIGMA = 0.5
# The balance task alone at a smaller σ: a less noisy love plot for a small share of the budget.
BALANCE_SIGMA = 0.25
PROPENSITY_ROUNDS = 10
COX_ROUNDS = 8


def reference(frame: pd.DataFrame, sites: list[np.ndarray]) -> tuple[Any, pd.DataFrame]:
    """The non-private analysis on the pooled patients: statsmodels' propensity model on the plan's
    design, ATE weights cut at the cap, lifelines' weighted Cox model, robust, stratified by site."""
    design = np.column_stack(
        [
            np.ones(len(frame)),
            (frame.age.clip(20, 80) - 50.0) / 30.0,
            frame.menostat == "Post",
            frame.tgrade == "II",
            frame.tgrade == "III",
        ]
    ).astype(float)
    treated = (frame.horTh == "yes").to_numpy(float)
    e = expit(design @ np.asarray(sm.Logit(treated, design).fit(disp=0).params))
    data = pd.DataFrame(
        {
            "time": frame.time.astype(float),
            "cens": frame.cens.astype(float),
            "horTh=yes": treated,
            "w": np.minimum(np.where(treated == 1, 1 / e, 1 / (1 - e)), MAX_WEIGHT),
            "site": 0,
        }
    )
    for index, rows in enumerate(sites):
        data.loc[data.index[rows], "site"] = index
    fit = CoxPHFitter().fit(data, "time", "cens", weights_col="w", robust=True, strata=["site"])
    return fit, data


@pytest.fixture
def publisher() -> AgentKey:
    return new_key()


def pandas_smd(frame: pd.DataFrame) -> dict[str, float]:
    """The unweighted SMDs treated - control of the plan's variables, with pandas (Austin's pooled SD)."""
    treated = frame.horTh == "yes"
    values = {
        "age": frame.age.clip(20, 80),
        "menostat=Post": (frame.menostat == "Post").astype(float),
        "tgrade=III": (frame.tgrade == "III").astype(float),
    }
    return {
        name: (x[treated].mean() - x[~treated].mean()) / np.sqrt((x[treated].var() + x[~treated].var()) / 2)
        for name, x in values.items()
    }


def love_plot_rings(png: Path) -> list[float]:
    """The x centres (px) of the love plot's 'before' rings, top to bottom: the pixels of their
    exact grey stroke (antialiased text never matches it exactly), a ring's rows grouped."""
    width, _, rows, bpp = decode_png(png.read_bytes())
    grey = rgb("#6b7280")
    spans: list[tuple[int, int, int]] = []
    for y, line in enumerate(rows):
        xs = [x for x in range(width) if (line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]) == grey]
        if xs and max(xs) - min(xs) <= 14:
            spans.append((y, min(xs), max(xs)))
    rings: list[list[tuple[int, int, int]]] = []
    for span in spans:
        if rings and span[0] - rings[-1][-1][0] == 1:
            rings[-1].append(span)
        else:
            rings.append([span])
    return [
        float(np.mean([(low + high) / 2 for _, low, high in ring if high - low >= 5]))
        for ring in rings
        if len(ring) >= 8
    ]


def test_study_iptw_balances_the_arms_and_matches_lifelines_weighted_cox(
    tmp_path: Path, pki: Pki, publisher: AgentKey, capsys: pytest.CaptureFixture[str], chromium: str
) -> None:
    frame = load_gbsg2()
    thirds = np.array_split(np.random.default_rng(5).permutation(len(frame)), 3)
    sites = [PlanSite(tmp_path / f"site-{i}", pki, publisher, rows=thirds[i]) for i in range(3)]
    try:
        plan_file = tmp_path / "iptw.zip"
        plan_file.write_bytes(plan_package(publisher, IPTW_PLAN))
        federation = federation_file(tmp_path, pki, sites)
        out_json, out_html = tmp_path / "iptw.json", tmp_path / "iptw.html"
        argv = ["study", "iptw", str(federation), "--plan", str(plan_file), "--noise-multiplier", str(SIGMA)]
        balance = ["--balance-noise-multiplier", str(BALANCE_SIGMA)]
        assert sponsor_main([*argv, *balance, "--json", str(out_json), "--html", str(out_html)]) == 0
        printed = capsys.readouterr().out
        for stage in ("propensity model", "balance", "weighted survival", "weighted Cox model"):
            assert f"{stage} (" in printed, printed
        result = json.loads(out_json.read_text())["iptw"]
        assert result["treatment"] == "horTh" and result["arms"] == ["no", "yes"] and result["estimand"] == "ate"
        assert len(result["propensity_coefficients"]) == 5 and not result["stopped"]
        assert (result["noise_multiplier"], result["balance_noise_multiplier"]) == (SIGMA, BALANCE_SIGMA)
        reference_fit, weighted = reference(frame, [np.sort(rows) for rows in thirds])

        # Balance: gbsg2's treated patients are older and post-menopausal; the weights remove it
        # (within what the weighted blocks' noise leaves: its SD is reported with each difference).
        rows = {row["name"]: row for row in result["balance"]["rows"]}
        for name, smd in pandas_smd(frame).items():
            assert rows[name]["smd_before"] == pytest.approx(smd, abs=4 * rows[name]["smd_before_noise_sd"] + 0.01)
        assert rows["age"]["smd_before"] > 0.4 and rows["menostat=Post"]["smd_before"] > 0.4
        for row in rows.values():
            assert abs(row["smd_after"]) <= 0.1 + 4 * row["smd_after_noise_sd"], row
        for arm, treated in zip(result["balance"]["arms"], (0.0, 1.0), strict=True):
            group = weighted[weighted["horTh=yes"] == treated]
            assert arm["weight_sum"] == pytest.approx(group.w.sum(), rel=0.15)
            assert arm["effective_sample_size"] > 0

        # The weighted curves against lifelines' weighted Kaplan-Meier at the grid times.
        for arm, treated in zip(result["survival"]["arms"], (0.0, 1.0), strict=True):
            group = weighted[weighted["horTh=yes"] == treated]
            with pytest.warns(StatisticalWarning, match="not integers"):
                km = KaplanMeierFitter().fit(group.time, group.cens, weights=group.w)
            curve = arm["weighted"]["curve"]
            for time, value, sampling, noise in zip(
                curve["times"][1:], curve["survival"][1:], curve["variance_sampling"][1:], curve["variance_noise"][1:],
                strict=True,
            ):  # fmt: skip
                expected = float(km.survival_function_at_times(time).iloc[0])
                assert value == pytest.approx(expected, abs=4.5 * value * np.sqrt(sampling + noise) + 0.03)

        # The weighted hazard ratio: lifelines' (robust, stratified by site) within the noise.
        (row,) = result["cox"]["fit"]["original"]["coefficients"]
        mle, se = float(reference_fit.params_["horTh=yes"]), float(reference_fit.standard_errors_["horTh=yes"])
        assert row["name"] == "horTh=yes"
        assert abs(row["estimate"] - mle) <= 0.5 * se + 4.5 * row["se_noise"], (row, mle)
        # The sampling SE corrected by the arms' (noisy) effective sample sizes, near the robust one.
        assert 0.6 * se <= row["se_sampling"] <= 1.6 * se, (row, se)
        assert result["cox"]["fit"]["weighted_variance"] == "each arm's weights rescaled to its effective sample size"

        # Every task charged: 10 propensity rounds, one survival task, 8 Cox rounds at σ, the description at its own.
        expected = independent_epsilon([(1.0, SIGMA, PROPENSITY_ROUNDS + 1 + COX_ROUNDS), (1.0, BALANCE_SIGMA, 1)])
        for site in sites:
            assert site.client.get_budget("gbsg2").epsilon_spent == pytest.approx(expected, rel=1e-3)

        # The page: the love plot's 'before' rings sit where the differences put them on its axis.
        page = out_html.read_text()
        assert 'id="love-plot"' in page and 'id="iptw-balance"' in page and 'id="km-chart"' in page
        png = tmp_path / "iptw.png"
        screenshot(chromium, out_html, png, tmp_path / "profile")
        rings = love_plot_rings(png)
        smds = [v for row in result["balance"]["rows"] for v in (row["smd_before"], row["smd_after"])]
        reach = math.ceil(min(LOVE_MAX_REACH, max([LOVE_MIN_REACH, 0.15, *(abs(v) for v in smds)])) * 10) / 10
        drawn = [row["smd_before"] for row in result["balance"]["rows"]]
        assert len(rings) == len(drawn) == 6, (rings, drawn)
        for (x0, v0), (x1, v1) in itertools.pairwise(zip(rings, drawn, strict=True)):
            assert x1 - x0 == pytest.approx((v1 - v0) / (2 * reach) * LOVE_PLOT, abs=2.5)
    finally:
        for site in sites:
            site.close()


def test_study_iptw_refuses_plans_it_cannot_run_and_charges_nothing(
    tmp_path: Path, pki: Pki, publisher: AgentKey, capsys: pytest.CaptureFixture[str]
) -> None:
    sites = [PlanSite(tmp_path / "site-0", pki, publisher)]
    try:
        federation = federation_file(tmp_path, pki, sites)
        weighted = tmp_path / "iptw.zip"
        weighted.write_bytes(plan_package(publisher, IPTW_PLAN))
        plain = tmp_path / "plain.zip"
        unweighted = {key: value for key, value in IPTW_PLAN.items() if key != "weighting"}
        plain.write_bytes(plan_package(publisher, unweighted, version="2.0.0"))

        def refused(command: str, plan: Path, *extra: str) -> str:
            argv = ["study", command, str(federation), "--plan", str(plan), "--noise-multiplier", "1"]
            assert sponsor_main([*argv, *extra, "--json", str(tmp_path / "out.json")]) == 2
            return capsys.readouterr().err

        assert "declares no weighting (plan.weighting): study iptw needs a treatment" in refused("iptw", plain)
        logistic = tmp_path / "logistic.zip"
        outcome = {"family": "logistic", "outcome": "cens", "covariates": ["horTh"]}
        no_survival = {key: value for key, value in IPTW_PLAN.items() if key != "survival"}
        logistic.write_bytes(plan_package(publisher, {**no_survival, "model": outcome}, "3.0.0"))
        assert "study iptw fits a weighted Cox model" in refused("iptw", logistic)
        assert "no study command does yet" in refused("glm", logistic)
        for command in ("cox", "describe", "survival"):
            assert "is a weighted plan (plan.weighting)" in refused(command, weighted), command
            assert "run it with study iptw" in refused(command, weighted)
        assert "--propensity-rounds must be between 2 and 50, got 1" in refused(
            "iptw", weighted, "--propensity-rounds", "1"
        )
        assert "--rounds must be between 4 and 50, got 2" in refused("iptw", weighted, "--rounds", "2")
        assert "--balance-noise-multiplier must be a positive number, got -1.0" in refused(
            "iptw", weighted, "--balance-noise-multiplier", "-1"
        )
        assert sites[0].client.get_budget("gbsg2").epsilon_spent == 0.0
    finally:
        for site in sites:
            site.close()


def test_study_iptw_without_a_model_gives_the_balance_and_curves_and_charges_only_them(
    tmp_path: Path, pki: Pki, publisher: AgentKey, capsys: pytest.CaptureFixture[str]
) -> None:
    """A weighted plan with no model: the propensity model, the balance and the curves; no Cox
    stage, none of its tasks charged."""
    sites = [PlanSite(tmp_path / "site-0", pki, publisher)]
    try:
        federation = federation_file(tmp_path, pki, sites)
        plan_file = tmp_path / "curves.zip"
        plan_file.write_bytes(plan_package(publisher, {k: v for k, v in IPTW_PLAN.items() if k != "model"}))
        out_json = tmp_path / "curves.json"
        argv = ["study", "iptw", str(federation), "--plan", str(plan_file), "--noise-multiplier", "2"]
        assert sponsor_main([*argv, "--propensity-rounds", "4", "--json", str(out_json)]) == 0
        assert "weighted Cox model" not in capsys.readouterr().out
        result = json.loads(out_json.read_text())["iptw"]
        assert result["cox"] is None and result["balance"] is not None
        assert [arm["label"] for arm in result["survival"]["arms"]] == ["no", "yes"]
        expected = independent_epsilon([(1.0, 2.0, 4 + 1 + 1)])
        assert sites[0].client.get_budget("gbsg2").epsilon_spent == pytest.approx(expected, rel=1e-3)
    finally:
        for site in sites:
            site.close()
