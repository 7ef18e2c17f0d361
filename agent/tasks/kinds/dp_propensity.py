"""``dp_propensity``: the propensity model of a weighted plan, fitted as dp_glm fits a logistic
model: the score vector and Fisher information at the coefficients the task sends, with
Gaussian noise; no clipping.

The model is the logistic regression of the treated arm (the weighting's treatment, its
second category) on the weighting's covariates (agent.packages.plan.WeightingSpec), over
the plan's cohort with its strata pooled. The coordinator adds the sites' sums and takes a
Newton-Raphson step, one charged task per step per site, then sends the fitted coefficients
with every weighted task on the plan (``propensity``). Its release has the blocks and
sensitivities of a logistic dp_glm's: see :mod:`agent.statistics.weighting` and
docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import COEFFICIENTS, Manifest, TaskKind
from agent.packages.release_layout import layout
from agent.privacy.mechanism import Mechanism
from agent.statistics.glm import exact_propensity_release
from agent.tasks.kinds.plan_release import check_whole_cohort, noised, plan_release
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile, plan_computation
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpPropensity(TaskProfile, name="dp_propensity", wire=pb.TASK_KIND_DP_PROPENSITY, graph=None):
    # noise_multiplier as every kind; sampling_rate must be 1, release_noisy_count and
    # release_dropped_units false.

    def __post_init__(self) -> None:
        check_whole_cohort(self.name, self.sampling_rate, self.release_noisy_count, self.release_dropped_units)
        super().__post_init__()

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism(sampling_rate, noise_multiplier)

    def release(self, manifest: Manifest) -> Release:
        return plan_release(manifest, TaskKind.DP_PROPENSITY)

    def compute(self, computation: Computation | PlanComputation) -> Released:
        prepared = plan_computation(computation)
        release = layout(prepared.plan, TaskKind.DP_PROPENSITY)
        exact = exact_propensity_release(prepared.plan, prepared.patients, prepared.parameters[COEFFICIENTS])
        return noised(prepared, release, exact, self.noise_multiplier)
