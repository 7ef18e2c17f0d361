"""Federated evaluation with a score histogram, against a real agent: the coordinator reports
AUC and calibration-in-the-large with their DP error, never the histogram's cells one by one,
and the AUC agrees with the exact AUC of the same model on the agent's own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from agent.runtime.isolation import GraphRole
from agent.runtime.preprocessing import to_arrays
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import EvaluationSettings, Randomness, dp_evaluate
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import TrainingPlan
from edge_sponsor.coordinator.score_evaluation import CLASSIFIER_METRICS, SURVIVAL_METRICS, ScoreHistogram
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import build_logistic_regression, build_weibull_survival, score_histogram
from edge_sponsor.statistics.evaluation import auc, calibration_in_the_large
from tests.conftest import Pki
from tests.coordinator.test_parameter_reuse import train_one_site
from tests.packages.package_builders import NUM_FEATURES, good_package, new_key
from tests.runtime.helpers import ArrayRowSource, manifest_for
from tests.tasks.test_run_task_rpc import start

BINS = 10


def test_a_score_histogram_is_reported_as_auc_and_calibration_with_their_dp_error(tmp_path: Path, pki: Pki) -> None:
    publisher = new_key()
    agent = start(tmp_path, pki, publisher)
    plan = TrainingPlan(
        rounds=1,
        evaluate_every=1,
        quorum=1,
        task_stall_seconds=60.0,
        purpose="research",
        evaluation_noise_multiplier=1.0,
    )
    client = AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    model = build_logistic_regression(NUM_FEATURES, score_bins=BINS)
    package = StudyPackage.from_archive(good_package(publisher, version="1.1.0", model=model))
    result = train_one_site(agent, client, package, plan, name="scores", pki=pki, tmp_path=tmp_path)
    (record,) = result.rounds
    cells = set(score_histogram.cell_names(BINS))
    assert not cells & set(record.metrics) and not cells & set(record.site_metrics["hospital"])
    assert set(CLASSIFIER_METRICS) <= set(record.metrics)
    assert set(CLASSIFIER_METRICS) <= set(record.site_metrics["hospital"])
    assert {"loss", "correct", "brier"} <= set(record.metrics)
    # The exact figures of the model the round evaluated, on the rows the agent read.
    manifest = package.manifest
    x, y = to_arrays(pq.read_table(agent.directory / "data" / "cohort.parquet").to_batches()[0], manifest)
    parameters = result.parameters
    probability = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ parameters["w"] + float(parameters["b"]))))
    exact = np.zeros((2, BINS))
    np.add.at(exact, ((y > 0.5).astype(int), np.minimum(np.floor(probability * BINS), BINS - 1).astype(int)), 1.0)
    # Per cell σ·√(blocks)·1 = 2 on 400 patients: the noise, not a bug, is what separates them.
    for name, statistic in (("auc", auc), ("calibration_points", calibration_in_the_large)):
        sd = record.metrics_noise_sd[name]
        assert sd > 0
        assert abs(record.metrics[name] - statistic(exact)) < 5 * sd, (name, record.metrics[name], statistic(exact), sd)


def test_a_survival_score_histogram_released_by_the_agent_is_read_as_a_c_index_with_its_dp_error() -> None:
    time_bins, bins, scale = 5, 6, 10.0
    model = build_weibull_survival(3, time_scale=scale, score_bins=bins, time_bins=time_bins)
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    names = [metric.name for metric in manifest.metrics]
    histogram = ScoreHistogram.of(names)
    assert histogram is not None and histogram.statistics is SURVIVAL_METRICS
    assert ScoreHistogram.of(["loss", "correct"]) is None
    rng = np.random.default_rng(4)
    n = 2000
    x = rng.normal(size=(n, 3)).astype(np.float32)
    w = np.array([0.8, -0.5, 0.0], np.float32)
    # Weibull AFT times: a larger x @ w, a longer life.
    time = scale * np.exp(x @ w) * rng.weibull(1.5, n)
    censor = rng.uniform(0.0, 3 * scale, n)
    y = np.stack([np.minimum(time, censor), time <= censor], axis=1).astype(np.float32)
    params = {"w": w, "b": np.array(np.log(scale), np.float32), "log_shape": np.array(np.log(1.5), np.float32)}
    wrapper = CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION)
    exact = dict(zip(names, wrapper.clipped_sum(params, RowBatch(x, y)), strict=True))
    sigma = 1.0
    release = dp_evaluate(
        wrapper,
        ArrayRowSource(x, y),
        params,
        EvaluationSettings(sigma),
        randomness=Randomness(np.random.default_rng(5)),
    )
    cell_sd = sigma * manifest.metric_noise_scales()[names.index(histogram.cells[0])]
    (figure,) = histogram.figures(release.sums, cell_sd).values()
    truth = histogram.figures(exact, 0.0)["c_index"].estimate
    assert 0.6 < truth < 0.9  # the model ranks patients: x @ w sets their lives
    assert figure.dp_sd > 0 and abs(figure.estimate - truth) < 5 * figure.dp_sd + 0.02, (figure, truth)
    assert "±" in str(figure)
