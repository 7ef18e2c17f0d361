"""What a worker process computes for one task: prepare, then run the DP computation.

Preparation (open the dataset's schema, check parameters and hyperparameters,
build the isolation wrapper) reads no row. Its failures are TaskInputError: the
task is refused and its reservation released. Once preparation is done the
worker reports "computing" *before the first row is read*; from then on a
failure may depend on the data (a hostile graph can fail on chosen rows), so
the runner charges the reservation whatever happens next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.datasets import DatasetSpec
from agent.datasets.errors import DatasetUnavailableError
from agent.packages.manifest import Manifest, TaskKind
from agent.privacy.noise import MAX_RESERVED_SIZE, NoiseReserve
from agent.runtime.errors import RuntimeTaskError
from agent.runtime.isolation import GraphRole
from agent.runtime.parameters import checked_parameters
from agent.runtime.rows import ArrowRowSource
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import (
    Controls,
    EvaluationSettings,
    GradientSettings,
    Randomness,
    TrainingSettings,
    dp_evaluate,
    dp_gradient,
    dp_local_training,
)
from agent.tasks.spec import Hyperparameters
from agent.tasks.worker import Progress, Released, TaskInputError, WorkerMemory

# The stage the worker reports right before it reads the first row.
COMPUTING = "computing"


@dataclass(frozen=True, eq=False)
class TaskJob:
    kind: TaskKind
    manifest: Manifest
    grad_onnx: bytes
    eval_onnx: bytes | None
    dataset: DatasetSpec
    hyperparameters: Hyperparameters
    parameters: Mapping[str, npt.NDArray[np.generic]]
    min_cohort_size: int
    # Public row count for dp_local_training's normalisation: the lower edge of the
    # dataset's row-count bucket, which the coordinator already sees. The exact
    # count would change with the row added or removed and double the sensitivity.
    normalising_rows: int = 1

    def with_parameters(self, parameters: Mapping[str, npt.NDArray[np.generic]]) -> TaskJob:
        return replace(self, parameters=dict(parameters))


def compute_task(job: TaskJob, progress: Progress, memory: WorkerMemory) -> Released:
    """Runs in the worker process (see agent.tasks.worker).

    A warm worker serves one run's tasks of one package, so the compiled wrapper is
    kept in its memory by role: building it (graph checks, batching compiler,
    onnxruntime session) costs far more than a small task's computation.
    """
    hyper = job.hyperparameters
    count_sigma = hyper.noise_multiplier if hyper.release_noisy_count else None
    try:
        rows = ArrowRowSource.open(job.dataset, job.manifest)
        if job.kind is TaskKind.DP_EVALUATE:
            if job.eval_onnx is None:
                raise TaskInputError("the package has no eval graph")
            eval_onnx = job.eval_onnx
            wrapper = memory.get_or_create(
                GraphRole.EVALUATION, lambda: CompiledWrapper(eval_onnx, job.manifest, GraphRole.EVALUATION)
            )
        else:
            wrapper = memory.get_or_create(
                GraphRole.GRADIENT, lambda: CompiledWrapper(job.grad_onnx, job.manifest, GraphRole.GRADIENT)
            )
        checked_parameters(job.manifest, job.parameters)  # refused here, before any row is read
        parameters = job.parameters
        step = GradientSettings(hyper.clip_norm, hyper.noise_multiplier, hyper.sampling_rate, count_sigma)
        if job.kind is TaskKind.DP_LOCAL_TRAINING:
            training = TrainingSettings(
                step, hyper.local_steps, hyper.learning_rate, expected_rows=max(1, job.normalising_rows)
            )
        evaluation = EvaluationSettings(hyper.noise_multiplier, hyper.sampling_rate, count_sigma)
    except DatasetUnavailableError:
        # The reason names hospital paths; the coordinator gets the generic one.
        raise TaskInputError("the dataset cannot be read at the moment") from None
    except RuntimeTaskError as exc:
        raise TaskInputError(str(exc)) from None

    progress(0.0, COMPUTING)
    controls = Controls(progress=lambda fraction: progress(fraction, "step"))
    # The noise for a model of this size is drawn ahead, while the worker waits for the next round.
    reserve = memory.get_or_create("noise", NoiseReserve)
    randomness = Randomness(normals=reserve)
    scalars: dict[str, float] = {}
    if job.kind is TaskKind.DP_GRADIENT:
        gradient = dp_gradient(wrapper, rows, parameters, step, controls=controls, randomness=randomness)
        tensors: dict[str, npt.NDArray[np.floating[Any]]] = dict(gradient.sums)
        if gradient.noisy_count is not None:
            scalars["noisy_count"] = gradient.noisy_count
    elif job.kind is TaskKind.DP_LOCAL_TRAINING:
        trained = dp_local_training(wrapper, rows, parameters, training, controls=controls, randomness=randomness)
        tensors = dict(trained.delta)
    else:
        evaluated = dp_evaluate(wrapper, rows, parameters, evaluation, controls=controls, randomness=randomness)
        tensors = {}
        scalars.update(evaluated.sums)
        if evaluated.noisy_count is not None:
            scalars["noisy_count"] = evaluated.noisy_count
    if job.kind is not TaskKind.DP_EVALUATE and wrapper.layout.size <= MAX_RESERVED_SIZE:
        reserve.refill(wrapper.layout.size)
    return Released(tensors, scalars)
