"""``dp_glm``: a regression's score vector and Fisher information at the coefficients the
task sends, over the plan's model's design rows, with Gaussian noise; no clipping.

The model is logistic (a 0/1 outcome) or Cox (the plan's survival outcome, a baseline
hazard per interval of its grid). The coordinator sends the coefficients (the one tensor
``coefficients``: β, or a Cox model's baselines then β), adds the sites' noisy score and
information and takes a Newton-Raphson step; each step is one task per site, each charged.
Every covariate has public bounds or categories, and a Cox patient's cumulative hazard a
public cap, so one patient's contribution to each block has a public bound for every
coefficient (:func:`agent.packages.release_layout.model_blocks`): the sums are released as
they are. On a weighted plan the task also sends the propensity model's coefficients
(``propensity``) and each patient's terms are multiplied by their weight, at most the
plan's public cap (:mod:`agent.statistics.weighting`): a weighted Cox model's hazard ratio.
The agent computes them from the package's analysis plan (no graph runs): see
:mod:`agent.statistics.glm` and docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import COEFFICIENTS, PROPENSITY, Manifest, TaskKind
from agent.packages.release_layout import layout
from agent.privacy.mechanism import Mechanism
from agent.statistics.glm import exact_model_release
from agent.statistics.weighting import plan_weights
from agent.tasks.kinds.plan_release import check_whole_cohort, noised, plan_release
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile, plan_computation
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpGlm(TaskProfile, name="dp_glm", wire=pb.TASK_KIND_DP_GLM, graph=None):
    # noise_multiplier as every kind; sampling_rate must be 1, release_noisy_count and
    # release_dropped_units false.

    def __post_init__(self) -> None:
        check_whole_cohort(self.name, self.sampling_rate, self.release_noisy_count, self.release_dropped_units)
        super().__post_init__()

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism(sampling_rate, noise_multiplier)

    def release(self, manifest: Manifest) -> Release:
        return plan_release(manifest, TaskKind.DP_GLM)

    def compute(self, computation: Computation | PlanComputation) -> Released:
        prepared = plan_computation(computation)
        release = layout(prepared.plan, TaskKind.DP_GLM)
        weights = plan_weights(prepared.plan, prepared.patients, prepared.parameters.get(PROPENSITY))
        exact = exact_model_release(prepared.plan, prepared.patients, prepared.parameters[COEFFICIENTS], weights)
        return noised(prepared, release, exact, self.noise_multiplier)
