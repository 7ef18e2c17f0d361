"""The worker's computation: one row more or less moves a release by at most its sensitivity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from agent.datasets.spec import DatasetFormat, DatasetSpec
from agent.packages.manifest import parse_manifest
from agent.tasks.computation import COMPUTING, TaskJob, compute_task
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.dp_local_training import DpLocalTraining
from agent.tasks.kinds.profile import TaskProfile
from agent.tasks.worker import TaskInputError, WorkerMemory
from tests.packages.package_builders import manifest_and_graphs
from tests.tasks.test_run_task_rpc import cohort_table


def job(path: Path, profile: TaskProfile, parameters: dict[str, np.ndarray], rows: int = 200) -> TaskJob:
    manifest, graphs = manifest_and_graphs()
    return TaskJob(
        profile=profile,
        manifest=parse_manifest(manifest),
        graph=graphs[profile.graph.value],
        dataset=DatasetSpec("cohort", path, DatasetFormat.PARQUET),
        parameters=parameters,
        min_cohort_size=20,
        normalising_rows=rows,
    )


def test_local_training_moves_by_at_most_eta_c_over_qn_when_one_row_is_removed(tmp_path: Path) -> None:
    table = cohort_table(400, seed=3)
    pq.write_table(table, tmp_path / "all.parquet")
    pq.write_table(table.slice(1), tmp_path / "without_one.parquet")
    # sigma = 0 isolates the deterministic part (the RPC layer refuses sigma = 0).
    hyper = DpLocalTraining(clip_norm=1.0, noise_multiplier=0.0, sampling_rate=1.0, local_steps=1, learning_rate=0.5)
    rng = np.random.default_rng(0)
    parameters = {"w": rng.normal(size=4).astype(np.float32), "b": np.float32(0.3).reshape(())}
    # A public normaliser equal to the row count: a row's removal must not also rescale every other row
    # (normalising by the counted rows moved the delta by twice the bound).
    with_row = compute_task(job(tmp_path / "all.parquet", hyper, parameters, rows=400), _quiet, WorkerMemory())
    without = compute_task(job(tmp_path / "without_one.parquet", hyper, parameters, rows=400), _quiet, WorkerMemory())
    difference = np.sqrt(sum(float(np.sum((with_row.tensors[n] - without.tensors[n]) ** 2)) for n in ("w", "b")))
    bound = hyper.learning_rate * hyper.clip_norm / (hyper.sampling_rate * 400)
    assert 0 < difference <= bound * (1 + 1e-5)


def test_preparation_errors_are_refusals_before_any_row_is_read(tmp_path: Path) -> None:
    pq.write_table(cohort_table(50), tmp_path / "c.parquet")
    hyper = DpGradient(clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.5)
    stages: list[str] = []
    bad = job(tmp_path / "c.parquet", hyper, {"w": np.zeros(3, np.float32)})
    with pytest.raises(TaskInputError, match="parameter"):
        compute_task(bad, lambda fraction, stage: stages.append(stage), WorkerMemory())
    missing = job(tmp_path / "nope.parquet", hyper, {})
    with pytest.raises(TaskInputError, match="cannot be read"):
        compute_task(missing, lambda fraction, stage: stages.append(stage), WorkerMemory())
    assert COMPUTING not in stages


def _quiet(fraction: float, stage: str) -> None:
    return None
