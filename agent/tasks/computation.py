"""What a worker process computes for one task: prepare, then run the DP computation.

Preparation (open the dataset's schema, check parameters and hyperparameters,
build the isolation wrapper) reads no row value. Its failures are TaskInputError:
the task is refused and its reservation refunded. Its last step counts the rows
the task can use (no null in a column the package reads) and refuses the task
below the policy's minimum cohort size: here, where the rows are read and after
the coordinator's parameter upload, not at admission (the file may have changed
since; the admission check counted every row). Once preparation is done the
worker reports "computing" *before the first row is fed to a graph*; from then
on a failure may depend on the data (a hostile graph can fail on chosen rows),
so the runner charges the reservation whatever happens next.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from agent.datasets import DatasetSpec
from agent.datasets.errors import DatasetUnavailableError
from agent.datasets.inspection import open_dataset
from agent.governance.model import DEFAULT_MAX_ROWS_PER_UNIT, DEFAULT_MIN_CELL_SIZE
from agent.packages.manifest import Manifest, ParameterDecl, TaskKind
from agent.packages.plan import MAX_MAGNITUDE
from agent.packages.release_layout import analysed
from agent.privacy.noise import MAX_RESERVED_SIZE, NoiseReserve, secure_generator
from agent.runtime.errors import ParameterError, PrivacyUnitError, RuntimeTaskError
from agent.runtime.parameters import checked_parameters
from agent.runtime.rows import ArrowRowSource, MinimumRows
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import Controls, Randomness
from agent.runtime.unit_rows import UnitRowSource
from agent.statistics.errors import StatisticsInputError
from agent.statistics.patients import patient_table
from agent.tasks.kinds.profile import Computation, PlanComputation, TaskProfile
from agent.tasks.worker import Progress, Released, TaskInputError, WorkerMemory

# The stage the worker reports right before it reads the first row.
COMPUTING = "computing"
# The policy rule a task with too few usable rows breaks, as at admission (agent.governance.decisions).
MIN_COHORT_RULE = "dataset.min_cohort"


@dataclass(frozen=True, eq=False)
class TaskJob:
    # The kind and its hyperparameters (agent.tasks.kinds).
    profile: TaskProfile
    manifest: Manifest
    # The package graph the kind runs (profile.graph); None for a kind that runs the package's plan.
    graph: bytes | None
    dataset: DatasetSpec
    parameters: Mapping[str, npt.NDArray[np.generic]]
    # The policy's minimum, applied to the rows this task can use (see compute_task).
    min_cohort_size: int
    # Public row count for dp_local_training's normalisation: the lower edge of the
    # dataset's row-count bucket, which the coordinator already sees. The exact
    # count would change with the row added or removed and double the sensitivity;
    # so would the usable-row count, which is why it is not used here either (with
    # many rows skipped for nulls the steps are smaller, never less private). With a
    # privacy unit: the lower edge of the unit-count bucket.
    normalising_rows: int = 1
    # With a privacy unit: how many of one unit's rows the task reads at most (the policy's
    # max_rows_per_unit), where the task may spill rows grouped by unit, and how much
    # memory grouping them may hold (agent.runtime.unit_rows).
    max_rows_per_unit: int = DEFAULT_MAX_ROWS_PER_UNIT
    scratch_dir: Path | None = None
    grouping_bytes: int = 256 * 1024 * 1024
    # A plan kind withholds released counts and strata whose noisy value is below this.
    min_cell_size: int = DEFAULT_MIN_CELL_SIZE

    def with_parameters(self, parameters: Mapping[str, npt.NDArray[np.generic]]) -> TaskJob:
        return replace(self, parameters=dict(parameters))


def compute_task(job: TaskJob, progress: Progress, memory: WorkerMemory) -> Released:
    """Runs in the worker process (see agent.tasks.worker).

    A warm worker serves one run's tasks of one package, so the compiled wrapper is
    kept in its memory by role: building it (graph checks, batching compiler,
    onnxruntime session) costs far more than a small task's computation.
    """
    role = job.profile.graph
    if role is None or job.graph is None:
        return _compute_plan(job, progress)
    unit = job.dataset.privacy_unit
    try:
        rows: ArrowRowSource | UnitRowSource
        if unit is None:
            rows = ArrowRowSource.open(job.dataset, job.manifest)
        else:
            rows = UnitRowSource(
                open_dataset(job.dataset, with_unit=True),
                job.manifest,
                unit,
                max_rows_per_unit=job.max_rows_per_unit,
                memory_bytes=job.grouping_bytes,
                scratch=job.scratch_dir,
                count_dropped=job.profile.release_dropped_units,
            )
        graph = job.graph
        wrapper = memory.get_or_create(role, lambda: CompiledWrapper(graph, job.manifest, role))
        checked_parameters(job.manifest, job.parameters)  # refused here, before any row is read
        # Reads the rows (grouped by unit, when declared) but feeds none to a graph.
        usable = rows.count_usable() if isinstance(rows, ArrowRowSource) else rows.prepare()
    except (DatasetUnavailableError, OSError, pa.ArrowException):
        # The reason names hospital paths; the coordinator gets the generic one.
        raise TaskInputError("the dataset cannot be read at the moment") from None
    except PrivacyUnitError:
        # The detail names the unit column, which coordinators are never told; the operator
        # sees it in `edge-agent dataset show` (the same check refuses the dataset there).
        raise TaskInputError(
            f"dataset {job.dataset.id!r}: its privacy-unit column cannot group the rows at the moment"
        ) from None
    except RuntimeTaskError as exc:
        raise TaskInputError(str(exc)) from None
    if usable < job.min_cohort_size:
        # Refunded: nothing was computed. The message is the same for 0 and for
        # min_cohort_size - 1 usable units; why telling the threshold's side is
        # acceptable is in docs/security.md ("A cohort minimum counts the rows a task can use").
        counted = "rows" if unit is None else "patients (privacy units) with rows"
        raise TaskInputError(
            f"dataset {job.dataset.id!r} has fewer {counted} usable by this package (no null in the columns "
            f"it reads) than the minimum cohort size of {job.min_cohort_size}",
            rule=MIN_COHORT_RULE,
        )

    progress(0.0, COMPUTING)
    cap = job.max_rows_per_unit if unit is not None else 1
    wrapper.set_max_rows_per_unit(cap)
    controls = Controls(progress=lambda fraction: progress(fraction, "step"), max_rows_per_unit=cap)
    # The noise for a model of this size is drawn ahead, while the worker waits for the next round.
    reserve = memory.get_or_create("noise", NoiseReserve)
    # Every later pass is held to the minimum as well (the files are read afresh by each).
    checked_rows = MinimumRows(rows, job.min_cohort_size)
    computation = Computation(
        wrapper, checked_rows, job.parameters, controls, Randomness(normals=reserve), job.normalising_rows
    )
    try:
        released = job.profile.compute(computation)
    finally:
        if isinstance(rows, UnitRowSource):
            rows.close()
    # A kind that released model-sized tensors draws model-sized noise again next round.
    if released.tensors and wrapper.layout.size <= MAX_RESERVED_SIZE:
        reserve.refill(wrapper.layout.size)
    return released


def _compute_plan(job: TaskJob, progress: Progress) -> Released:
    """A plan kind: read the plan's columns, keep one row per patient, then compute the release.

    As for a graph kind, everything up to "computing" may fail and be refunded (the file
    is unreadable, a column is missing or has the wrong type: facts about the schema, not
    the rows). The dataset's patients were counted against the cohort minimum at admission;
    the plan's own cohort is held to it on its noisy size only.
    """
    plan = job.manifest.plan
    if plan is None:
        raise TaskInputError(f"package {job.manifest.name} has no analysis plan")
    kind = TaskKind(job.profile.name)
    try:
        # Refused here, before a file is opened (refunded, as every failure before "computing").
        parameters = checked_plan_parameters(job.manifest.task_parameters(kind), job.parameters)
    except ParameterError as exc:
        raise TaskInputError(str(exc)) from None
    unit = job.dataset.privacy_unit
    try:
        dataset = open_dataset(job.dataset, with_unit=unit is not None)
        # The columns the dataset has; patient_table names any other the plan reads.
        exposed = [column for column in plan.columns if column in dataset.schema.names and column != unit]
        table = dataset.to_table(columns=exposed + ([unit] if unit is not None else []))
        patients = patient_table(analysed(plan, kind), table, unit_column=unit, rng=secure_generator())
    except (DatasetUnavailableError, OSError, pa.ArrowException):
        raise TaskInputError("the dataset cannot be read at the moment") from None
    except StatisticsInputError as exc:
        # Names a column of the plan and what is wrong with it, never a value, nor the unit
        # column's name, which coordinators are never told (agent.statistics.errors).
        raise TaskInputError(f"dataset {job.dataset.id!r} cannot answer this plan: {exc}") from None
    progress(0.0, COMPUTING)
    # No refusal on the cohort's exact size here (agent.statistics.tables.noisy_release says why):
    # the minimum withholds the release on its noisy size, charged like any release.
    computation = PlanComputation(
        plan, patients, job.min_cell_size, job.min_cohort_size, secure_generator(), parameters=parameters
    )
    return job.profile.compute(computation)


def checked_plan_parameters(
    declared: tuple[ParameterDecl, ...], parameters: Mapping[str, npt.NDArray[np.generic]]
) -> dict[str, npt.NDArray[np.float64]]:
    """A plan kind's parameter tensors (Manifest.task_parameters) as float64, in declared order.

    Raises :class:`ParameterError` naming the first tensor that is missing, not declared, of a
    dtype the declaration does not accept, of another shape, not finite, or beyond ±MAX_MAGNITUDE
    (the plan's own limit on numbers: a dp_glm linear predictor of 64 such terms stays finite,
    where one of 1e308s could overflow to inf - inf).
    """
    names = {decl.name for decl in declared}
    for name in parameters:
        if name not in names:
            raise ParameterError(name, "is not a parameter of this task kind on this package")
    checked: dict[str, npt.NDArray[np.float64]] = {}
    for decl in declared:
        if decl.name not in parameters:
            raise ParameterError(decl.name, "is missing")
        value = np.asarray(parameters[decl.name])
        if not decl.accepts(str(value.dtype)):
            raise ParameterError(decl.name, f"has dtype {value.dtype}, the package declares {decl.dtype}")
        if value.shape != decl.shape:
            raise ParameterError(decl.name, f"has shape {list(value.shape)}, the package declares {list(decl.shape)}")
        floats = value.astype(np.float64)  # a copy: widening float32 is exact
        if not np.isfinite(floats).all():
            raise ParameterError(decl.name, "holds NaN or infinite values")
        if np.abs(floats).max(initial=0.0) > MAX_MAGNITUDE:
            raise ParameterError(decl.name, f"holds values beyond ±{MAX_MAGNITUDE:g}")
        floats.flags.writeable = False
        checked[decl.name] = floats
    return checked
