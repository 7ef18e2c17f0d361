"""Federated evaluation with a score histogram, against a real agent: the coordinator reports
AUC and calibration-in-the-large with their DP error, never the histogram's cells one by one,
and the AUC agrees with the exact AUC of the same model on the agent's own rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from agent.runtime.preprocessing import to_arrays
from edge_sponsor.coordinator.client import AgentClient
from edge_sponsor.coordinator.federation import TrainingPlan
from edge_sponsor.coordinator.study_package import StudyPackage
from edge_sponsor.coordinator.training import SCORE_METRICS, FederatedTraining
from edge_sponsor.publisher.zoo import build_logistic_regression, score_histogram
from edge_sponsor.statistics.evaluation import auc, calibration_in_the_large
from tests.conftest import Pki
from tests.coordinator.test_parameter_reuse import Quiet, one_site_federation
from tests.packages.package_builders import NUM_FEATURES, good_package, new_key
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
    federation = one_site_federation("scores", tmp_path, pki, agent.address, plan)
    client = AgentClient(agent.address, pki.credentials(), server_name="localhost", timeout=30)
    model = build_logistic_regression(NUM_FEATURES, score_bins=BINS)
    package = StudyPackage.from_archive(good_package(publisher, version="1.1.0", model=model))
    training = FederatedTraining(federation, {"hospital": client}, package, Quiet(), run_id="scores-1")
    try:
        ready, _ = training.prepare()
        result = training.train(ready, package.initial_parameters())
    finally:
        training.close()
        client.close()
        agent.channel.close()
        agent.process.stop()
    (record,) = result.rounds
    cells = set(score_histogram.cell_names(BINS))
    assert not cells & set(record.metrics) and not cells & set(record.site_metrics["hospital"])
    assert set(SCORE_METRICS) <= set(record.metrics) and set(SCORE_METRICS) <= set(record.site_metrics["hospital"])
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
