"""``dp_gradient``: one noisy clipped gradient sum over one Poisson sample (DP-FedSGD).

The coordinator averages the sites' sums and takes the optimiser step itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import Manifest
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.tasks import GradientSettings, dp_gradient
from agent.tasks.kinds.hyperparameters import CLIP_NORM, NOISE_MULTIPLIER, SAMPLING_RATE
from agent.tasks.kinds.profile import NOISY_COUNT, Computation, Release, TaskProfile
from agent.tasks.worker import Released


@dataclass(frozen=True, kw_only=True)
class DpGradient(TaskProfile):
    name: ClassVar[str] = "dp_gradient"
    wire: ClassVar[int] = pb.TASK_KIND_DP_GRADIENT
    graph: ClassVar[GraphRole] = GraphRole.GRADIENT

    clip_norm: Annotated[float, CLIP_NORM]
    noise_multiplier: Annotated[float, NOISE_MULTIPLIER]
    sampling_rate: Annotated[float, SAMPLING_RATE]
    release_noisy_count: bool = False

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_gradient(sampling_rate, noise_multiplier, count)

    def release(self, manifest: Manifest) -> Release:
        return Release(manifest.parameters, frozenset({NOISY_COUNT} if self.release_noisy_count else ()))

    def compute(self, computation: Computation) -> Released:
        settings = GradientSettings(
            self.clip_norm, self.noise_multiplier, self.sampling_rate, self.count_noise_multiplier
        )
        gradient = dp_gradient(
            computation.wrapper,
            computation.rows,
            computation.parameters,
            settings,
            controls=computation.controls,
            randomness=computation.randomness,
        )
        scalars = {} if gradient.noisy_count is None else {NOISY_COUNT: gradient.noisy_count}
        return Released(dict(gradient.sums), scalars)
