"""`edge-sponsor study glm` end to end: three real agents over loopback mTLS, each holding a third of
a real dataset, a signed plan with a logistic model, 16 rounds of dp_glm tasks (lower-bound steps).

The dataset is statsmodels' ``fair`` (Fair 1978: 6366 married women; outcome: any extramarital
affair, 32 %), not rossi: the agent's budget is at most ε = 100 per dataset, so 16 rounds need
σ ≥ about 0.35 (0.5 costs ε 65), and on rossi's 432 patients that much noise swamps the information
(tests/sponsor_statistics/test_sponsor_glm.py). On fair at σ = 0.5 the release's noise is small
beside the information (noise/information ≈ 0.4), and the coefficients must land within the
reported intervals of statsmodels' Logit on the pooled patients.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import statsmodels.api as sm

from agent.identity.agent_key import AgentKey
from agent.packages.manifest import TaskKind
from edge_sponsor.cli.main import main as sponsor_main
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.glm_tasks import BOUND_ROUNDS, glm_design
from edge_sponsor.coordinator.plan_tasks import PlanPackage
from edge_sponsor.publisher.plans import build_plan_package, plan_manifest_fields
from edge_sponsor.statistics.glm import UNCONVERGED
from tests.conftest import COORDINATOR_URI, InProcessAgent, Pki, start_in_process, write_config
from tests.packages.package_builders import new_key
from tests.tasks.test_plan_tasks import federation_file
from tests.tasks.test_unit_level_budget import independent_epsilon

BOUNDS = {
    "rate_marriage": (1.0, 5.0),
    "age": (17.5, 42.0),
    "yrs_married": (0.5, 23.0),
    "educ": (9.0, 20.0),
}
# Religiousness 1 (not) to 4 (strongly), as categories: 656 to 2422 women each.
RELIGIOUS = [1, 2, 3, 4]
PLAN: dict[str, Any] = {
    "cohort": [],
    "strata": [],
    "variables": [
        *({"column": c, "kind": "numeric", "bounds": list(b)} for c, b in BOUNDS.items()),
        {"column": "religious", "kind": "categorical", "categories": RELIGIOUS},
    ],
    "model": {"family": "logistic", "outcome": "affair", "covariates": [*BOUNDS, "religious"]},
}
SIGMA = 0.5
ROUNDS = BOUND_ROUNDS
COLUMNS = [*BOUNDS, "religious", "affair"]


def fair() -> pd.DataFrame:
    frame = sm.datasets.fair.load_pandas().data
    frame["affair"] = (frame["affairs"] > 0).astype("int64")
    frame["religious"] = frame["religious"].round().astype("int64")
    frame["patient_id"] = [f"w{i:05d}" for i in range(len(frame))]
    return frame[[*COLUMNS, "patient_id"]]


def policy_text(publisher: AgentKey) -> str:
    key = base64.b64encode(publisher.public_bytes).decode()
    exposed = ", ".join(f'"{c}"' for c in COLUMNS)
    return f"""
[[coordinators]]
identity = "{COORDINATOR_URI}"
datasets = ["fair"]
task_kinds = ["dp_describe", "dp_glm"]

[[datasets]]
id = "*"
epsilon_budget = 100.0
delta = 1e-5
min_cohort_size = 20
require_privacy_unit = true
min_cell_size = 5
exposed_columns = [{exposed}]
forbidden_columns = ["patient_id"]
[datasets.bounds.noise_multiplier]
min = 0.1

[[publishers]]
name = "Acme Pharma"
public_key = "{key}"

[packages]
require_approval = false

[limits]
max_concurrent_tasks = 4
task_seconds = 60
"""


class GlmSite:
    def __init__(self, directory: Path, pki: Pki, publisher: AgentKey, frame: pd.DataFrame) -> None:
        data = directory / "data"
        data.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "fair.parquet")
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        datasets = (
            f'\n[[datasets]]\nid = "fair"\npath = "{data / "fair.parquet"}"\n'
            f'columns = [{columns}]\nprivacy_unit = "patient_id"\n'
        )
        # Each hospital its own agent: the coordinator leaves out a second entry for one agent.
        config = write_config(directory, pki, policy=policy_text(publisher), extra=datasets, agent_id=directory.name)
        self.process: InProcessAgent = start_in_process(config)
        self.address = f"127.0.0.1:{self.process.port}"
        self.client = AgentClient(self.address, pki.credentials(), server_name="localhost", timeout=30)

    def close(self) -> None:
        self.client.close()
        self.process.stop()


@pytest.fixture
def three_sites(tmp_path: Path, pki: Pki) -> Iterator[tuple[list[GlmSite], AgentKey, pd.DataFrame]]:
    publisher = new_key()
    frame = fair()
    thirds = np.array_split(np.random.default_rng(7).permutation(len(frame)), 3)
    sites: list[GlmSite] = []
    try:
        for i, rows in enumerate(thirds):
            sites.append(GlmSite(tmp_path / f"site-{i}", pki, publisher, frame.iloc[np.sort(rows)]))
        yield sites, publisher, frame
    finally:
        for site in sites:
            site.close()


def statsmodels_fit(frame: pd.DataFrame) -> Any:
    """Logit on the covariates' own units, religious 1 the reference (the plan's first category)."""
    design = pd.DataFrame({"(intercept)": 1.0}, index=frame.index)
    for column in BOUNDS:
        design[column] = frame[column].astype(float)
    for category in RELIGIOUS[1:]:
        design[f"religious={category}"] = (frame["religious"] == category).astype(float)
    return sm.Logit(frame["affair"].astype(float), design).fit(disp=0, tol=1e-12)


def test_study_glm_matches_statsmodels_within_its_intervals(
    tmp_path: Path, pki: Pki, three_sites: tuple[list[GlmSite], AgentKey, pd.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    sites, publisher, frame = three_sites
    fields = plan_manifest_fields(
        PLAN, name="acme/fair-glm", version="1.0.0", publisher="acme", noise_multiplier={"min": 0.0, "max": 100.0}
    )
    assert "dp_glm" in fields["task_kinds"]
    plan_file = tmp_path / "plan.zip"
    plan_file.write_bytes(build_plan_package(fields, signers=[publisher]))
    federation = federation_file(tmp_path, pki, sites, dataset="fair")
    out_json, out_html = tmp_path / "glm.json", tmp_path / "glm.html"
    argv = ["study", "glm", str(federation), "--plan", str(plan_file), "--noise-multiplier", str(SIGMA)]
    # The defaults: lower-bound steps, BOUND_ROUNDS rounds, the mean of the last half.
    assert sponsor_main([*argv, "--json", str(out_json), "--html", str(out_html)]) == 0
    printed = capsys.readouterr()
    assert printed.out.count(f"ok; {ROUNDS} rounds, ε charged") == 3
    assert "mostly noise" not in printed.err

    result = json.loads(out_json.read_text())["glm"]
    fit = result["fit"]
    reference = statsmodels_fit(frame)
    assert fit["names"] == list(reference.params.index)
    assert fit["sites"] == ["site-0", "site-1", "site-2"]
    assert fit["noise_to_information"] < 1.0
    # Lower-bound steps by default, the mean of the last half of the rounds, converged.
    assert fit["method"] == "bound" and fit["averaged_rounds"] == ROUNDS // 2
    assert fit["transient"] < UNCONVERGED and "may not have converged" not in printed.err
    # The included patients: all of them (no value missing), noisy (SD σ·√3 per site).
    assert fit["included"] == pytest.approx(len(frame), abs=6 * SIGMA * np.sqrt(3) * np.sqrt(3))
    for row, (name, mle) in zip(fit["original"]["coefficients"], reference.params.items(), strict=True):
        assert row["name"] == name
        # Within the reported interval, and within 4.5 noise SEs (the agents' noise is the one the
        # sponsor accounts for: the reported noise SE is not an underestimate).
        assert row["lower"] <= mle <= row["upper"], (name, row, mle)
        assert abs(row["estimate"] - mle) <= 4.5 * row["se_noise"], (name, row, mle)
        assert row["se_sampling"] == pytest.approx(reference.bse[name], rel=0.1)
        assert row["odds_ratio"] == pytest.approx(np.exp(row["estimate"]))
    assert len(result["rounds"]) == ROUNDS and all(len(r["sites"]) == 3 for r in result["rounds"])
    # Each site was charged ROUNDS Gaussians at σ, q = 1, as dp-accounting composes them; the report says so.
    expected = independent_epsilon([(1.0, SIGMA, ROUNDS)])
    for site, charged in zip(sites, result["sites"], strict=True):
        assert site.client.get_budget("fair").epsilon_spent == pytest.approx(expected, rel=1e-3)
        assert charged["rounds_charged"] == ROUNDS
        assert charged["epsilon_charged"] == pytest.approx(expected, rel=1e-3)
    page = out_html.read_text()
    assert 'id="glm-original"' in page and "religious=4" in page and "SE privacy noise" in page

    # A run the budget cannot hold is refused before anything is spent: 40 rounds at σ 0.5 is ε > 100.
    spent = [site.client.get_budget("fair").epsilon_spent for site in sites]
    greedy = [*argv, "--rounds", "40", "--json", str(tmp_path / "greedy.json")]
    assert sponsor_main(greedy) == 1
    assert "over the privacy budget or out of its policy; nothing was spent" in capsys.readouterr().err
    assert [site.client.get_budget("fair").epsilon_spent for site in sites] == spent
    # Bad options are refused before any agent is asked.
    assert sponsor_main([*argv, "--rounds", "0", "--json", "x"]) == 2
    assert "--rounds must be between 1 and 50" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        sponsor_main([*argv, "--method", "gradient", "--json", "x"])
    assert refused.value.code == 2
    assert "argument --method: invalid choice: 'gradient'" in capsys.readouterr().err


def test_study_glm_refuses_a_plan_without_a_model(
    tmp_path: Path, pki: Pki, three_sites: tuple[list[GlmSite], AgentKey, pd.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    sites, publisher, _ = three_sites
    plan = {k: v for k, v in PLAN.items() if k != "model"}
    fields = plan_manifest_fields(
        plan, name="acme/fair-describe", version="1.0.0", publisher="acme", noise_multiplier={"min": 0.0, "max": 100.0}
    )
    assert fields["task_kinds"] == ["dp_describe"]
    plan_file = tmp_path / "plan.zip"
    plan_file.write_bytes(build_plan_package(fields, signers=[publisher]))
    federation = federation_file(tmp_path, pki, sites, dataset="fair")
    argv = ["study", "glm", str(federation), "--plan", str(plan_file), "--noise-multiplier", "1", "--json", "x"]
    assert sponsor_main(argv) == 2
    assert "does not offer dp_glm" in capsys.readouterr().err
    assert all(site.client.get_budget("fair").epsilon_spent == 0.0 for site in sites)
    # σ that is not finite, or an output that could not be written once the ε is spent, is
    # refused before any site is asked.
    for bad, words in (
        (["--noise-multiplier", "inf", "--json", "x"], "--noise-multiplier must be a positive number, got inf"),
        (["--noise-multiplier", "1", "--json", str(tmp_path)], "is a directory, not a file to write"),
        (["--noise-multiplier", "1", "--html", str(tmp_path / "no" / "page.html")], "does not exist or cannot be"),
    ):
        assert sponsor_main(["study", "glm", str(federation), "--plan", str(plan_file), *bad]) == 2
        assert words in capsys.readouterr().err
    assert all(site.client.get_budget("fair").epsilon_spent == 0.0 for site in sites)


def test_plan_build_offers_dp_glm_for_a_plan_with_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edge-sponsor plan build` on a plan file with a model section: the package offers dp_glm and
    carries the model; a model naming a column that is not a variable is refused, naming the field."""
    plan_json = tmp_path / "plan.json"
    plan_json.write_text(json.dumps(PLAN))
    out = tmp_path / "plan.zip"
    argv = ["plan", "build", str(plan_json), "--out", str(out), "--name", "acme/fair-glm", "--version", "1.0.0"]
    assert sponsor_main([*argv, "--publisher", "acme"]) == 0
    package = PlanPackage.from_file(out)
    assert package.manifest.task_kinds == (TaskKind.DP_DESCRIBE, TaskKind.DP_GLM)
    assert package.plan.model is not None
    assert glm_design(package).names == (
        "(intercept)", "rate_marriage", "age", "yrs_married", "educ", "religious=2", "religious=3", "religious=4",
    )  # fmt: skip
    bad = json.loads(json.dumps(PLAN))
    bad["model"]["covariates"] = ["age", "occupation"]
    plan_json.write_text(json.dumps(bad))
    refused = tmp_path / "refused.zip"
    argv = ["plan", "build", str(plan_json), "--out", str(refused), "--name", "acme/fair-glm", "--version", "1.0.0"]
    capsys.readouterr()
    assert sponsor_main([*argv, "--publisher", "acme"]) == 2
    assert "plan.model.covariates[1]" in capsys.readouterr().err
    assert not refused.exists()


def test_a_site_that_cannot_take_part_is_named_and_the_others_are_pooled(
    tmp_path: Path, pki: Pki, three_sites: tuple[list[GlmSite], AgentKey, pd.DataFrame],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """A fourth hospital holding 15 patients, below its policy's cohort minimum of 20: its agent refuses
    the first round's task (nothing charged), it is asked nothing more and named in the report; the
    three others make the estimate."""
    sites, publisher, frame = three_sites
    small = GlmSite(tmp_path / "site-3", pki, publisher, frame.iloc[:15])
    try:
        fields = plan_manifest_fields(
            PLAN, name="acme/fair-glm", version="1.0.0", publisher="acme", noise_multiplier={"min": 0.0, "max": 100.0}
        )
        plan_file = tmp_path / "plan.zip"
        plan_file.write_bytes(build_plan_package(fields, signers=[publisher]))
        # A fifth entry dials site-0's agent again, by another name: left out before the first round.
        alias = SimpleNamespace(address=f"localhost:{sites[0].process.port}")
        federation = federation_file(tmp_path, pki, [*sites, small, alias], dataset="fair")
        out_json = tmp_path / "glm.json"
        argv = ["study", "glm", str(federation), "--plan", str(plan_file), "--noise-multiplier", str(SIGMA)]
        # Newton steps here (the first test runs the default, lower-bound steps).
        assert sponsor_main([*argv, "--method", "newton", "--rounds", "5", "--json", str(out_json)]) == 0
        printed = capsys.readouterr().out
        assert printed.count("ok; 5 rounds, ε charged") == 3
        # Every round's progress names both sites that are not in it.
        assert printed.count("; left: site-3, site-4") == 5
        result = json.loads(out_json.read_text())["glm"]
        duplicate = result["sites"][4]
        assert duplicate["status"] == "duplicate" and "is also listed as site-0" in duplicate["detail"]
        assert duplicate["rounds_charged"] == 0
        left = result["sites"][3]
        assert left["site"] == "site-3" and left["status"] != "ok" and left["rounds_charged"] == 0
        assert left["detail"] and f"site-3: {left['status']}" in printed
        assert small.client.get_budget("fair").epsilon_spent == 0.0
        # After a failed task the report quotes the site's own budget (GetBudget), charged or not.
        assert left["budget_epsilon_spent"] == 0.0 and result["not_converged"] == ""
        assert all(r["sites"] == ["site-0", "site-1", "site-2"] for r in result["rounds"])
        assert result["fit"]["sites"] == ["site-0", "site-1", "site-2"] and result["fit"]["method"] == "newton"
        reference = statsmodels_fit(frame)
        for row, mle in zip(result["fit"]["original"]["coefficients"], reference.params, strict=True):
            assert row["lower"] <= mle <= row["upper"]
    finally:
        small.close()
