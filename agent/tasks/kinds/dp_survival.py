"""``dp_survival``: the exits from the risk set (events and censorings) per interval of the
plan's time grid and per stratum, with Gaussian noise: each patient is in one cell.

The agent computes it from the package's analysis plan (no graph runs): see
:mod:`agent.tasks.kinds.plan_release` and docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import Manifest, TaskKind
from agent.privacy.mechanism import Mechanism
from agent.tasks.kinds.plan_release import check_whole_cohort, compute_plan, plan_release
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile, plan_computation
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpSurvival(TaskProfile, name="dp_survival", wire=pb.TASK_KIND_DP_SURVIVAL, graph=None):
    # noise_multiplier as every kind; sampling_rate must be 1, release_noisy_count and
    # release_dropped_units false.

    def __post_init__(self) -> None:
        check_whole_cohort(self.name, self.sampling_rate, self.release_noisy_count, self.release_dropped_units)
        super().__post_init__()

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism(sampling_rate, noise_multiplier)

    def release(self, manifest: Manifest) -> Release:
        return plan_release(manifest, TaskKind.DP_SURVIVAL)

    def compute(self, computation: Computation | PlanComputation) -> Released:
        return compute_plan(plan_computation(computation), TaskKind.DP_SURVIVAL, self.noise_multiplier)
