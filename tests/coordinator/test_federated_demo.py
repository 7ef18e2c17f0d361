"""The federated demo, shortened: three agents as real processes, real mTLS, a real signed
package, DP-FedSGD across them; then the ledgers, audit logs and a killed site."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.audit.verify import verify_log
from agent.identity.agent_key import load_key_file
from edge_sponsor.coordinator.federation import Algorithm, load_federation
from edge_sponsor.coordinator.run_page import (
    BAR_COLOUR,
    CHARTS_TOP_PX,
    LINE_COLOUR,
    PLOT_BOTTOM,
    PLOT_LEFT,
    PLOT_RIGHT,
    PLOT_TOP,
)
from edge_sponsor.coordinator.study import REPORT_PAGE
from edge_sponsor.demo.federated import (
    DEMO_PLAN,
    FederatedDemoResult,
    federation_for,
    federation_toml,
    prepare,
    run_federated_demo,
    running_hospitals,
)
from edge_sponsor.html_page import PAGE_LEFT_PX
from tests.headless_chromium import decode_png, rgb, screenshot


def cli(*args: str, program: str = "edge_sponsor") -> subprocess.CompletedProcess[str]:
    """`edge-sponsor ARGS`, or with ``program="agent"`` the hospital's `edge-agent ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", program, *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[FederatedDemoResult, str]:
    out = io.StringIO()
    plan = dataclasses.replace(DEMO_PLAN, rounds=12, evaluate_every=6)
    result = run_federated_demo(out, workdir=tmp_path_factory.mktemp("demo"), plan=plan)
    return result, out.getvalue()


def test_the_federated_dp_model_beats_the_trivial_one_and_tracks_the_centralized_one(
    demo: tuple[FederatedDemoResult, str],
) -> None:
    result, text = demo
    assert result.federated.accuracy >= result.majority.accuracy + 0.2, text
    assert result.federated.auc >= 0.95, text
    # Stated tolerance (docs/coordinator.md): within 0.08 accuracy and 0.03 AUC of the
    # centralized non-private model on the held-out cohort.
    assert result.federated.accuracy >= result.centralized.accuracy - 0.08, text
    assert result.federated.auc >= result.centralized.auc - 0.03, text
    assert "federated DP logistic regression" in text and "centralized, non-private" in text


def test_every_ledger_shows_the_epsilon_the_coordinator_reports(demo: tuple[FederatedDemoResult, str]) -> None:
    result, _ = demo
    report = json.loads(result.outcome.report_path.read_text())
    assert len(report["sites"]) == 3
    for site, agent in zip(report["sites"], result.agents, strict=True):
        assert site["site"] == agent.name
        shown = cli("budget", "show", "--config", str(agent.directory / "agent.toml"), "--json", program="agent")
        assert shown.returncode == 0, shown.stderr
        groups = {g["budget_group"]: g for g in json.loads(shown.stdout)["groups"]}
        ledger = groups["breast-cancer"]
        assert ledger["epsilon_spent"] == pytest.approx(site["epsilon_spent"], abs=1e-9)
        # A fresh ledger: the run added all of it, and the last task's report was the total.
        assert site["epsilon_spent_before"] == 0.0
        assert site["epsilon_added"] == pytest.approx(site["epsilon_spent"], abs=1e-12)
        assert site["epsilon_last_reported"] == pytest.approx(site["epsilon_spent"], rel=1e-9)
        # Each task's share is how much it raised the composed ε: the shares add up to it.
        assert site["epsilon_charged_by_run"] == pytest.approx(site["epsilon_spent"], rel=1e-6)
        assert 0 < site["epsilon_spent"] <= site["epsilon_limit"]
        assert site["rounds_contributed"] == 12
        # The demo's datasets declare patient_id: the ε reported and the ledger's are per patient.
        assert site["epsilon_per"] == "patient" and 0 < site["units_lower"] < site["units_upper"]
        assert site["units_described"].startswith("ε per patient (privacy unit declared; patients in [")
        (dataset,) = ledger["datasets"]
        assert (dataset["dataset"], dataset["epsilon_per"]) == ("breast-cancer", "unit")
        assert dataset["unit_count"] == [site["units_lower"], site["units_upper"]]


def test_every_audit_log_verifies_and_names_the_run(demo: tuple[FederatedDemoResult, str]) -> None:
    result, _ = demo
    for agent in result.agents:
        verdict = verify_log(agent.audit_dir, [load_key_file(agent.directory / "identity.key").public_key])
        assert verdict.ok, verdict.first_break
        entries = [
            json.loads(line)
            for path in sorted(agent.audit_dir.glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        run_ids = {e.get("run_id") for e in entries if e["kind"].startswith("task")}
        assert result.outcome.report.run_id in run_ids


def test_the_exported_model_is_a_working_onnx_model(demo: tuple[FederatedDemoResult, str]) -> None:
    result, _ = demo
    assert result.outcome.model_path is not None
    session = ort.InferenceSession(str(result.outcome.model_path), providers=["CPUExecutionProvider"])
    # It scores raw columns by name, as the agent preprocesses them: the same risks as the
    # trained parameters give on the agent's own standardised matrix.
    cohorts = result.cohorts
    assert [i.name for i in session.get_inputs()] == list(cohorts.feature_columns)
    raw = {name: cohorts.test_x[:, j].astype(np.float64) for j, name in enumerate(cohorts.feature_columns)}
    (probability,) = session.run(None, raw)
    assert probability.shape == (len(cohorts.test_y),)
    assert np.all((probability >= 0) & (probability <= 1))
    z = cohorts.standardised(cohorts.test_x) @ result.outcome.result.parameters["w"].astype(np.float64)
    expected = 1.0 / (1.0 + np.exp(-(z + float(result.outcome.result.parameters["b"]))))
    np.testing.assert_allclose(probability, expected, rtol=1e-4, atol=1e-6)
    report = json.loads(result.outcome.report_path.read_text())
    assert [r["round"] for r in report["rounds"]] == list(range(1, 13))
    evaluated = [r for r in report["rounds"] if r["metrics"]]
    assert [r["round"] for r in evaluated] == [6, 12]
    assert set(evaluated[-1]["metrics"]) == {"loss", "correct", "brier"}
    assert 0.0 <= evaluated[-1]["metrics"]["correct"] <= 1.0


def test_the_run_page_shows_the_metrics_with_their_noise_the_sites_and_the_coefficients(
    demo: tuple[FederatedDemoResult, str], tmp_path: Path, chromium: str
) -> None:
    """report.html as the run wrote it: every pooled metric charted with ±1.96 SD bars, each
    site's ε from its ledger, the logistic model's coefficients with odds ratios; and
    Chromium draws the first metric's line and its noise bars where the page says."""
    result, _ = demo
    page = result.outcome.report_path.with_name(REPORT_PAGE)
    html = page.read_text(encoding="utf-8")
    report = json.loads(result.outcome.report_path.read_text())
    evaluated = [r for r in report["rounds"] if r["metrics"]]
    assert evaluated, "the demo plan evaluates"
    for name in evaluated[-1]["metrics"]:
        assert f"{name} (±1.96 SD of the DP noise)" in html
    for site in report["sites"]:
        assert f"<td>{site['site']}</td>" in html
        assert f"{site['epsilon_spent']:.3f}" in html
    assert "<th>odds ratio</th>" in html and "(intercept)" in html
    assert "<script" not in html and "default-src 'none'" in html

    shot = tmp_path / "shot.png"
    screenshot(chromium, page, shot, tmp_path / "profile")
    _, _, rows, bpp = decode_png(shot.read_bytes())
    counts: dict[tuple[int, int, int], int] = {}
    for y in range(CHARTS_TOP_PX + PLOT_TOP, CHARTS_TOP_PX + PLOT_BOTTOM + 1):
        for x in range(PAGE_LEFT_PX + PLOT_LEFT, PAGE_LEFT_PX + PLOT_RIGHT + 1):
            pixel = (rows[y][x * bpp], rows[y][x * bpp + 1], rows[y][x * bpp + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
    assert counts.get(rgb(LINE_COLOUR), 0) > 100, "the first metric's line is not drawn in its chart"
    assert counts.get(rgb(BAR_COLOUR), 0) > 20, "the first metric's noise bars are not drawn in its chart"


def test_a_site_killed_mid_training_is_reported_and_the_run_finishes(tmp_path: Path) -> None:
    out = io.StringIO()
    plan = dataclasses.replace(DEMO_PLAN, rounds=5, evaluate_every=2, task_deadline_seconds=20.0)
    result = run_federated_demo(out, workdir=tmp_path, plan=plan, kill_after_round=("northside-screening", 1))
    report = result.outcome.report
    assert report.rounds[0].missing_sites == ()
    for record in report.rounds[1:]:
        assert record.missing_sites == ("northside-screening",)
        assert record.updated  # quorum 2 of 3
    lost = next(s for s in report.sites if s.site == "northside-screening")
    assert lost.rounds_contributed == 1
    assert lost.status.startswith("budget not read: UNAVAILABLE")
    assert lost.epsilon_spent is None and lost.epsilon_last_reported > 0
    # Evaluated after every second round and after the last, each on its own round.
    assert [r.round for r in report.rounds if r.metrics] == [2, 4, 5]
    assert {t.site for t in report.rounds[3].evaluation if t.status == "ok"} == {
        "st-marys-oncology",
        "riverside-general",
    }
    text = out.getvalue()
    assert "northside-screening train: UNAVAILABLE" in text
    assert result.federated.accuracy > result.majority.accuracy


def test_the_coordinate_commands_against_running_agents(tmp_path: Path) -> None:
    setup = prepare(tmp_path / "demo")
    with running_hospitals(setup, io.StringIO()) as agents:
        plan = dataclasses.replace(
            DEMO_PLAN, algorithm=Algorithm.FEDAVG, rounds=2, local_steps=3, local_learning_rate=0.5, evaluate_every=1
        )
        federation_file = tmp_path / "federation.toml"
        federation_file.write_text(federation_toml(federation_for(agents, setup.pki, plan, federation_file)))
        assert load_federation(federation_file).training == plan

        checked = cli("coordinate", "check", str(federation_file))
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.count("SERVING") == 3
        assert "we are urn:edge-agent:coordinator:dev" in checked.stdout
        assert checked.stdout.count("ε per patient (privacy unit declared; patients in [") == 3

        run = tmp_path / "run"
        trained = cli(
            "coordinate", "train", str(federation_file), "--package", str(setup.package_path), "--out", str(run)
        )
        assert trained.returncode == 0, trained.stderr + trained.stdout
        assert "round 2/2  3/3 sites" in trained.stdout
        assert trained.stdout.count("rounds contributed; ε per patient (privacy unit declared; patients in [") == 3
        report = json.loads((run / "report.json").read_text())
        assert report["algorithm"] == "fedavg" and len(report["rounds"]) == 2
        assert all(r["updated"] and r["metrics"] for r in report["rounds"])
        assert (run / "model.onnx").is_file()

        broken = tmp_path / "broken.toml"
        broken.write_text(federation_file.read_text().replace("rounds = 2", "round = 2"))
        refused = cli("coordinate", "train", str(broken), "--package", str(setup.package_path), "--out", str(run))
        assert refused.returncode == 2
        assert f"{broken}: training.round: unknown key; did you mean 'rounds'?" in refused.stderr
