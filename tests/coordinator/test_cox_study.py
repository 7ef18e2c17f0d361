"""`edge-sponsor study cox` end to end: three real agents over loopback mTLS, each holding a third of
gbsg2 (686 breast-cancer patients, recurrence-free survival; each patient's row repeated 1 to 3
times under a privacy unit), a signed plan with a Cox model of hormonal therapy (``horTh``), the
treatment effect of an observational comparison, and dp_glm tasks in which every site gets
coefficients of its own (its baseline).

The hazard ratios must land within their reported intervals of lifelines' CoxPHFitter stratified by
site on the pooled patients, and each site must have been charged what dp-accounting composes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_gbsg2

from agent.identity.agent_key import AgentKey
from agent.packages.manifest import TaskKind
from agent.packages.release_layout import GLM_COUNT
from edge_sponsor.cli.main import main as sponsor_main
from edge_sponsor.coordinator.plan_tasks import PlanPackage
from edge_sponsor.statistics.report import FOREST_DECADES, FOREST_PLOT
from tests.conftest import Pki
from tests.headless_chromium import decode_png, rgb, screenshot
from tests.packages.package_builders import new_key
from tests.tasks.test_plan_tasks import PlanSite, federation_file, plan_package
from tests.tasks.test_unit_level_budget import independent_epsilon

GRID = [500.0, 1000.0, 1500.0, 2700.0]  # follow-up ends at 2659 days: nobody is cut
COX_PLAN: dict[str, Any] = {
    "cohort": [],
    "strata": [],
    "variables": [
        {"column": "horTh", "kind": "categorical", "categories": ["no", "yes"]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": GRID},
    # One covariate: with tumour grade too, grade I's 81 patients give an information the noise
    # swamps at any σ the policy's budget allows 8 rounds of (bench/cox_accuracy.py).
    "model": {"family": "cox", "covariates": ["horTh"], "max_cumulative_hazard": 3},
}
LOGISTIC_PLAN: dict[str, Any] = {
    "cohort": [],
    "strata": [],
    "variables": [{"column": "age", "kind": "numeric", "bounds": [20, 90]}],
    "model": {"family": "logistic", "outcome": "cens", "covariates": ["age"]},
}
SIGMA = 0.4
ROUNDS = 8


def lifelines_fit(frame: pd.DataFrame, sites: list[np.ndarray]) -> Any:
    """Cox on the pooled patients, stratified by site; the design column as the plan's (reference no)."""
    data = pd.DataFrame(
        {
            "time": frame["time"].astype(float),
            "cens": frame["cens"].astype(float),
            "horTh=yes": (frame["horTh"] == "yes").astype(float),
        }
    )
    data["site"] = 0
    for index, rows in enumerate(sites):
        data.loc[data.index[rows], "site"] = index
    return CoxPHFitter().fit(data, "time", "cens", strata=["site"])


def forest_plot_is_drawn(page: Path, tmp_path: Path, row: dict[str, Any], chromium: str) -> None:
    """The page the command wrote, in headless Chromium: the hazard ratio's interval is a run of
    the plot's blue as long as the axis scale makes it, crossed by no dashed null line when the
    interval excludes 1 (and crossed by it when it holds 1)."""
    out = tmp_path / "cox.png"
    screenshot(chromium, page, out, tmp_path / "profile")
    width, _, rows, bpp = decode_png(out.read_bytes())
    blue = rgb("#1f77b4")
    runs = []
    for y, line in enumerate(rows):
        xs = [x for x in range(width) if (line[x * bpp], line[x * bpp + 1], line[x * bpp + 2]) == blue]
        if len(xs) > 10:
            runs.append((y, min(xs), max(xs)))
    assert runs, "no interval drawn"
    # The interval's line (2 px) and the estimate's square (8 px): the widest rows are the line.
    span = max(high - low for _, low, high in runs)
    reach = math.ceil(min(FOREST_DECADES, max(0.3, abs(math.log10(row["hazard_ratio_lower"])),
                                              abs(math.log10(row["hazard_ratio_upper"])))) * 2) / 2  # fmt: skip
    expected = math.log10(row["hazard_ratio_upper"] / row["hazard_ratio_lower"]) / (2 * reach) * FOREST_PLOT
    assert span == pytest.approx(expected, abs=4), (span, expected)


@pytest.fixture
def publisher() -> AgentKey:
    return new_key()


def test_study_cox_matches_lifelines_stratified_by_site_within_its_intervals(
    tmp_path: Path, pki: Pki, publisher: AgentKey, capsys: pytest.CaptureFixture[str], chromium: str
) -> None:
    frame = load_gbsg2()
    thirds = np.array_split(np.random.default_rng(5).permutation(len(frame)), 3)
    sites = [PlanSite(tmp_path / f"site-{i}", pki, publisher, rows=thirds[i]) for i in range(3)]
    try:
        plan_file = tmp_path / "cox.zip"
        plan_file.write_bytes(plan_package(publisher, COX_PLAN))
        federation = federation_file(tmp_path, pki, sites)
        out_json, out_html = tmp_path / "cox.json", tmp_path / "cox.html"
        argv = ["study", "cox", str(federation), "--plan", str(plan_file), "--noise-multiplier", str(SIGMA)]
        assert sponsor_main([*argv, "--json", str(out_json), "--html", str(out_html)]) == 0
        printed = capsys.readouterr()
        assert printed.out.count(f"ok; {ROUNDS} rounds, ε charged") == 3, printed.out
        assert "Not to be trusted" not in printed.err and "warning" not in printed.err, printed.err

        result = json.loads(out_json.read_text())["cox"]
        fit = result["fit"]
        reference = lifelines_fit(frame, [np.sort(rows) for rows in thirds])
        assert fit["sites"] == ["site-0", "site-1", "site-2"]
        # Every patient included, noisy: within 6 SDs of the three sites' count noise.
        release = PlanPackage.from_file(plan_file).layout(TaskKind.DP_GLM)
        count_sd = release.noise_std(release.block(GLM_COUNT), SIGMA) * np.sqrt(3)
        assert fit["included"] == pytest.approx(len(frame), abs=6 * count_sd)
        names = [row["name"] for row in fit["original"]["coefficients"]]
        assert names == ["horTh=yes"]
        for row in fit["original"]["coefficients"]:
            mle, se = reference.params_[row["name"]], reference.standard_errors_[row["name"]]
            assert row["lower"] <= mle <= row["upper"], (row, mle)
            # The piecewise-exponential baseline on 4 intervals is close to Cox's, not equal: within
            # half a lifelines SE of it before noise, within 4.5 noise SEs after.
            assert abs(row["estimate"] - mle) <= 0.5 * se + 4.5 * row["se_noise"], (row, mle)
            assert row["se_sampling"] == pytest.approx(se, rel=0.15)
            assert row["hazard_ratio"] == pytest.approx(np.exp(row["estimate"]))
        # Each site its own baseline: three sites, four intervals each, in the report.
        assert [b["site"] for b in fit["baselines"]] == ["site-0", "site-1", "site-2"]
        assert all(len(b["intervals"]) == len(GRID) for b in fit["baselines"])
        assert len(result["rounds"]) == ROUNDS and all(len(r["sites"]) == 3 for r in result["rounds"])
        expected = independent_epsilon([(1.0, SIGMA, ROUNDS)])
        for site, charged in zip(sites, result["sites"], strict=True):
            assert site.client.get_budget("gbsg2").epsilon_spent == pytest.approx(expected, rel=1e-3)
            assert charged["rounds_charged"] == ROUNDS
            assert charged["epsilon_charged"] == pytest.approx(expected, rel=1e-3)
        page = out_html.read_text()
        assert 'id="forest-plot"' in page and 'id="cox-original"' in page and "horTh=yes" in page
        forest_plot_is_drawn(out_html, tmp_path, fit["original"]["coefficients"][0], chromium)

        # A plan whose model is not Cox, and a Cox plan run as a logistic one, are refused before
        # any site is asked: nothing is charged.
        spent = [site.client.get_budget("gbsg2").epsilon_spent for site in sites]
        logistic = tmp_path / "logistic.zip"
        logistic.write_bytes(plan_package(publisher, LOGISTIC_PLAN, version="2.0.0"))
        wrong = ["study", "cox", str(federation), "--plan", str(logistic), "--noise-multiplier", "1"]
        assert sponsor_main([*wrong, "--json", str(tmp_path / "x.json")]) == 2
        assert "is a logistic model, not cox: run it with study glm" in capsys.readouterr().err
        as_glm = ["study", "glm", str(federation), "--plan", str(plan_file), "--noise-multiplier", "1"]
        assert sponsor_main([*as_glm, "--json", str(tmp_path / "y.json")]) == 2
        assert "is a cox model, not logistic: run it with study cox" in capsys.readouterr().err
        assert sponsor_main([*argv, "--rounds", "0", "--json", str(tmp_path / "z.json")]) == 2
        assert "--rounds must be between 4 and 50" in capsys.readouterr().err
        # Fewer rounds than the profile step and the averaged Newton steps need: an unconverged estimate.
        assert sponsor_main([*argv, "--rounds", "3", "--json", str(tmp_path / "z.json")]) == 2
        assert "--rounds must be between 4 and 50, got 3" in capsys.readouterr().err
        with pytest.raises(SystemExit) as refused:
            sponsor_main([*argv, "--baseline", "shared", "--json", str(tmp_path / "z.json")])
        assert refused.value.code == 2
        assert "argument --baseline: invalid choice: 'shared'" in capsys.readouterr().err
        assert [site.client.get_budget("gbsg2").epsilon_spent for site in sites] == spent
    finally:
        for site in sites:
            site.close()
