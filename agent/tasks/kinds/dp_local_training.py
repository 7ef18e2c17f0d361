"""``dp_local_training``: K DP-SGD steps on the site, releasing the parameter delta (DP-FedAvg).

Each step is a noisy clipped gradient sum over a fresh Poisson sample, so the
task is accounted as K of them. A noisy count is charged at every step if asked
for, but never released: the delta is all that leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.governance.model import Bounds
from agent.packages.manifest import Manifest
from agent.privacy.mechanism import Mechanism
from agent.runtime.isolation import GraphRole
from agent.runtime.tasks import GradientSettings, TrainingSettings, dp_local_training
from agent.tasks.kinds.hyperparameters import CLIP_NORM, POSITIVE, Hyperparameter, Requirement
from agent.tasks.kinds.profile import Computation, PlanComputation, Release, TaskProfile, graph_computation
from agent.tasks.worker import Released

MAX_LOCAL_STEPS = 100_000
STEP_COUNT = Requirement(lambda value: 1 <= value <= MAX_LOCAL_STEPS, f"1..{MAX_LOCAL_STEPS}")

LOCAL_STEPS = Hyperparameter("local_steps", STEP_COUNT, Bounds(1, 1000), (1, 1e6), example=1, integer=True)
"""K: the DP-SGD steps of one task, each charged."""

LEARNING_RATE = Hyperparameter("learning_rate", POSITIVE, Bounds(0.0, None), (0.0, 1e6), example=0.1)
"""eta: each step moves the parameters by eta times the noisy sum over the expected sample size."""


@dataclass(frozen=True, kw_only=True)
class DpLocalTraining(
    TaskProfile, name="dp_local_training", wire=pb.TASK_KIND_DP_LOCAL_TRAINING, graph=GraphRole.GRADIENT
):
    # With noise_multiplier, sampling_rate and release_noisy_count, as every kind.
    clip_norm: Annotated[float, CLIP_NORM]
    local_steps: Annotated[int, LOCAL_STEPS]
    learning_rate: Annotated[float, LEARNING_RATE]

    def accounted_as(self, sampling_rate: float, noise_multiplier: float, count: float | None) -> Mechanism:
        return Mechanism.dp_local_training(sampling_rate, noise_multiplier, self.local_steps, count)

    def release(self, manifest: Manifest) -> Release:
        return Release(manifest.parameters, frozenset())

    def compute(self, computation: Computation | PlanComputation) -> Released:
        prepared = graph_computation(computation)
        step = GradientSettings(self.clip_norm, self.noise_multiplier, self.sampling_rate, self.count_noise_multiplier)
        settings = TrainingSettings(
            step, self.local_steps, self.learning_rate, expected_rows=max(1, prepared.normalising_rows)
        )
        trained = prepared.run(dp_local_training, settings)
        return Released(dict(trained.delta), {})
