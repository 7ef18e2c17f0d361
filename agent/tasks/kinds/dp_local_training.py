"""``dp_local_training``: K DP-SGD steps on the site, releasing the parameter delta (DP-FedAvg).

Each step is a noisy clipped gradient sum over a fresh Poisson sample, so the
task is accounted as K of them. A noisy count is charged at every step if asked
for, but never released: the delta is all that leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.governance.model import Bounds
from agent.packages.manifest import Manifest
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.tasks import GradientSettings, TrainingSettings, dp_local_training
from agent.tasks.kinds.hyperparameters import CLIP_NORM, NOISE_MULTIPLIER, SAMPLING_RATE, Hyperparameter, positive
from agent.tasks.kinds.profile import Computation, Release, TaskProfile
from agent.tasks.worker import Released

MAX_LOCAL_STEPS = 100_000


def _step_count(value: float) -> bool:
    return 1 <= value <= MAX_LOCAL_STEPS


LOCAL_STEPS = Hyperparameter(
    name="local_steps",
    integer=True,
    valid=_step_count,
    must_be=f"1..{MAX_LOCAL_STEPS}",
    policy_default=Bounds(minimum=1, maximum=1000),
    policy_range=(1, 1e6),
    example=1,
)
"""K: the DP-SGD steps of one task, each charged."""

LEARNING_RATE = Hyperparameter(
    name="learning_rate",
    integer=False,
    valid=positive,
    must_be="a positive number",
    policy_default=Bounds(minimum=0.0, maximum=None),
    policy_range=(0.0, 1e6),
    example=0.1,
)
"""eta: each step moves the parameters by eta times the noisy sum over the expected sample size."""


@dataclass(frozen=True, kw_only=True)
class DpLocalTraining(TaskProfile):
    name: ClassVar[str] = "dp_local_training"
    wire: ClassVar[int] = pb.TASK_KIND_DP_LOCAL_TRAINING
    graph: ClassVar[GraphRole] = GraphRole.GRADIENT

    clip_norm: Annotated[float, CLIP_NORM]
    noise_multiplier: Annotated[float, NOISE_MULTIPLIER]
    sampling_rate: Annotated[float, SAMPLING_RATE]
    local_steps: Annotated[int, LOCAL_STEPS]
    learning_rate: Annotated[float, LEARNING_RATE]
    release_noisy_count: bool = False

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_local_training(sampling_rate, noise_multiplier, self.local_steps, count)

    def release(self, manifest: Manifest) -> Release:
        return Release(manifest.parameters, frozenset())

    def compute(self, computation: Computation) -> Released:
        step = GradientSettings(self.clip_norm, self.noise_multiplier, self.sampling_rate, self.count_noise_multiplier)
        settings = TrainingSettings(
            step, self.local_steps, self.learning_rate, expected_rows=max(1, computation.normalising_rows)
        )
        trained = dp_local_training(
            computation.wrapper,
            computation.rows,
            computation.parameters,
            settings,
            controls=computation.controls,
            randomness=computation.randomness,
        )
        return Released(dict(trained.delta), {})
