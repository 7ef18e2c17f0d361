"""What a worker process computes for one task: prepare, then run the DP computation.

Preparation (open the dataset's schema, check parameters and hyperparameters,
build the isolation wrapper) reads no row. Its failures are TaskInputError: the
task is refused and its reservation refunded. Once preparation is done the
worker reports "computing" *before the first row is read*; from then on a
failure may depend on the data (a hostile graph can fail on chosen rows), so
the runner charges the reservation whatever happens next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from agent.datasets import DatasetSpec
from agent.datasets.errors import DatasetUnavailableError
from agent.packages.manifest import Manifest
from agent.privacy.noise import MAX_RESERVED_SIZE, NoiseReserve
from agent.runtime.errors import RuntimeTaskError
from agent.runtime.parameters import checked_parameters
from agent.runtime.rows import ArrowRowSource
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import Controls, Randomness
from agent.tasks.kinds.profile import Computation, TaskProfile
from agent.tasks.worker import Progress, Released, TaskInputError, WorkerMemory

# The stage the worker reports right before it reads the first row.
COMPUTING = "computing"


@dataclass(frozen=True, eq=False)
class TaskJob:
    # The kind and its hyperparameters (agent.tasks.kinds).
    profile: TaskProfile
    manifest: Manifest
    # The package graph the kind runs (profile.graph).
    graph: bytes
    dataset: DatasetSpec
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
    role = job.profile.graph
    try:
        rows = ArrowRowSource.open(job.dataset, job.manifest)
        wrapper = memory.get_or_create(role, lambda: CompiledWrapper(job.graph, job.manifest, role))
        checked_parameters(job.manifest, job.parameters)  # refused here, before any row is read
    except DatasetUnavailableError:
        # The reason names hospital paths; the coordinator gets the generic one.
        raise TaskInputError("the dataset cannot be read at the moment") from None
    except RuntimeTaskError as exc:
        raise TaskInputError(str(exc)) from None

    progress(0.0, COMPUTING)
    controls = Controls(progress=lambda fraction: progress(fraction, "step"))
    # The noise for a model of this size is drawn ahead, while the worker waits for the next round.
    reserve = memory.get_or_create("noise", NoiseReserve)
    computation = Computation(
        wrapper, rows, job.parameters, controls, Randomness(normals=reserve), job.normalising_rows
    )
    released = job.profile.compute(computation)
    # A kind that released model-sized tensors draws model-sized noise again next round.
    if released.tensors and wrapper.layout.size <= MAX_RESERVED_SIZE:
        reserve.refill(wrapper.layout.size)
    return released
