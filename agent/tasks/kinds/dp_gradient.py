"""``dp_gradient``: one noisy clipped gradient sum over one Poisson sample (DP-FedSGD).

The coordinator averages the sites' sums and takes the optimiser step itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import NOISY_COUNT, Manifest
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.tasks import GradientSettings, dp_gradient
from agent.tasks.kinds.hyperparameters import CLIP_NORM
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile, graph_computation
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpGradient(TaskProfile, name="dp_gradient", wire=pb.TASK_KIND_DP_GRADIENT, graph=GraphRole.GRADIENT):
    # With noise_multiplier, sampling_rate and release_noisy_count, as every kind.
    clip_norm: Annotated[float, CLIP_NORM]

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_gradient(sampling_rate, noise_multiplier, count)

    def release(self, manifest: Manifest) -> Release:
        return Release(manifest.parameters, frozenset({NOISY_COUNT} if self.release_noisy_count else ()))

    def compute(self, computation: Computation | PlanComputation) -> Released:
        settings = GradientSettings(
            self.clip_norm, self.noise_multiplier, self.sampling_rate, self.count_noise_multiplier
        )
        gradient = graph_computation(computation).run(dp_gradient, settings)
        scalars = {} if gradient.noisy_count is None else {NOISY_COUNT: gradient.noisy_count}
        return Released(dict(gradient.sums), scalars)
