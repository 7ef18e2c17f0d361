"""What the plan kinds (``dp_describe``, ``dp_survival``, ``dp_glm``, ``dp_propensity``) share: their
release and their computation.

They run the package's analysis plan, not a graph: the agent reads the plan's columns,
keeps one row per patient (agent.statistics.patients), computes the blocks of the kind's
release layout (agent.packages.release_layout) and adds the Gaussian noise that makes the whole
release one mechanism with the task's noise multiplier, accounted at q = 1: a plan's
statistics describe the whole cohort, so every patient is in the "sample".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from agent.packages.manifest import PROPENSITY, Manifest, TaskKind, plan_lacks
from agent.packages.release_layout import ReleaseLayout, layout
from agent.statistics.tables import exact_release, noisy_release
from agent.statistics.weighting import plan_weights
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds.profile import PlanComputation, Release
from agent.tasks.worker import Released


def check_whole_cohort(kind: str, sampling_rate: float, release_noisy_count: bool, release_dropped_units: bool) -> None:
    """TaskSpecError unless the task describes the whole cohort and asks for no separate count.

    A plan's release says itself who was left out (by the plan's own filters and rules for
    missing values, as its layout declares: docs/statistics.md), so neither the sample's count
    nor the graph kinds' dropped-units count applies.
    """
    if sampling_rate != 1.0:
        raise TaskSpecError(f"{kind} describes the whole cohort: hyperparameters.sampling_rate must be 1")
    if release_noisy_count:
        raise TaskSpecError(f"{kind} releases its counts as the plan declares: release_noisy_count must be false")
    if release_dropped_units:
        raise TaskSpecError(
            f"{kind} releases its counts as the plan declares (who was left out included): "
            "release_dropped_units must be false"
        )


def plan_release(manifest: Manifest, kind: TaskKind) -> Release:
    """Every scalar the plan's release layout names for ``kind``; nothing for a package without a
    plan, or whose plan cannot serve ``kind`` (no survival outcome, no model)."""
    if manifest.plan is None or plan_lacks(manifest.plan, kind) is not None:
        return Release((), frozenset())
    release = layout(manifest.plan, kind)
    blocks = tuple(f"{block.name}[{release.strata}][{len(block.cells)}]" for block in release.blocks)
    return Release((), frozenset(release.scalar_names()), audited=blocks)


def compute_plan(computation: PlanComputation, kind: TaskKind, noise_multiplier: float) -> Released:
    """The noisy, suppressed release of ``kind`` (a kind of agent.statistics.tables) on the prepared
    patients, weighted as a weighted plan says at the task's propensity coefficients."""
    release = layout(computation.plan, kind)
    weights = plan_weights(computation.plan, computation.patients, computation.parameters.get(PROPENSITY))
    exact = exact_release(computation.plan, release, computation.patients, weights)
    return noised(computation, release, exact, noise_multiplier)


def noised(
    computation: PlanComputation,
    release: ReleaseLayout,
    exact: Mapping[str, npt.NDArray[np.float64]],
    noise_multiplier: float,
) -> Released:
    """The ``exact`` blocks of ``release`` with the noise, the minimum cell size and the cohort
    minimum every plan kind applies."""
    scalars = noisy_release(
        exact,
        release,
        noise_multiplier=noise_multiplier,
        min_cell_size=computation.min_cell_size,
        rng=computation.noise,
        min_cohort_size=computation.min_cohort_size,
    )
    return Released({}, scalars)
