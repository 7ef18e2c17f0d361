"""What a coordinator asks a task to do, as checked values, and the checks against the package.

The gRPC layer turns a TaskSpec message into a ``TaskSpecification``; here it is
checked against what the package declares (task kinds, parameter tensors,
hyperparameter bounds). The policy's own checks come after, in governance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.packages.manifest import Manifest, TaskKind
from agent.tasks.tensors import TensorDecl


class TaskSpecError(ValueError):
    """The task request is malformed or does not fit its package; the message names the field."""


@dataclass(frozen=True)
class Hyperparameters:
    clip_norm: float
    noise_multiplier: float
    sampling_rate: float
    local_steps: int = 1
    learning_rate: float = 0.0
    release_noisy_count: bool = False

    def check(self, kind: TaskKind) -> None:
        """Ranges that make sense whatever the policy says (the policy narrows them further)."""
        # dp_evaluate clips to the metrics' declared ranges; its clip_norm is unused (defaults to 1).
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise TaskSpecError(f"hyperparameters.clip_norm must be a positive number, got {self.clip_norm!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            # sigma = 0 would release exact sums: no differential privacy at all.
            raise TaskSpecError(
                f"hyperparameters.noise_multiplier must be a positive number, got {self.noise_multiplier!r}"
            )
        if not (0 < self.sampling_rate <= 1):
            raise TaskSpecError(f"hyperparameters.sampling_rate must be in (0, 1], got {self.sampling_rate!r}")
        if kind is TaskKind.DP_LOCAL_TRAINING:
            if not 1 <= self.local_steps <= 100_000:
                raise TaskSpecError(f"hyperparameters.local_steps must be 1..100000, got {self.local_steps}")
            if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
                raise TaskSpecError(
                    f"hyperparameters.learning_rate must be a positive number, got {self.learning_rate!r}"
                )

    @property
    def steps(self) -> int:
        """How many noisy releases the task makes (each one is charged)."""
        return self.local_steps


@dataclass(frozen=True)
class TaskSpecification:
    kind: TaskKind
    package_digest: str
    dataset_id: str
    hyperparameters: Hyperparameters
    parameters: tuple[TensorDecl, ...]
    run_id: str
    round: int
    correlation_id: str
    purpose: str


def check_against_package(spec: TaskSpecification, manifest: Manifest, has_eval_graph: bool) -> None:
    """The request must use the package as declared: its kinds, its parameters, its bounds."""
    if spec.kind not in manifest.task_kinds:
        offered = ", ".join(kind.value for kind in manifest.task_kinds)
        raise TaskSpecError(f"package {manifest.name} {manifest.version.text} does not offer {spec.kind.value} "
                            f"(it offers {offered})")
    if spec.kind is TaskKind.DP_EVALUATE and not has_eval_graph:
        raise TaskSpecError(f"package {manifest.name} has no eval graph, so it cannot run dp_evaluate")
    declared = manifest.parameters
    if len(spec.parameters) != len(declared):
        names = ", ".join(p.name for p in declared)
        raise TaskSpecError(f"the package declares {len(declared)} parameters ({names}), the task sent "
                            f"{len(spec.parameters)}")
    for index, (sent, expected) in enumerate(zip(spec.parameters, declared, strict=True)):
        if (sent.name, sent.dtype, sent.shape) != (expected.name, expected.dtype, expected.shape):
            raise TaskSpecError(
                f"parameters[{index}]: expected {expected.name} {expected.dtype}{list(expected.shape)}, "
                f"got {sent.name} {sent.dtype}{list(sent.shape)}"
            )
    hyper = spec.hyperparameters
    values = {
        "clip_norm": hyper.clip_norm,
        "noise_multiplier": hyper.noise_multiplier,
        "sampling_rate": hyper.sampling_rate,
    }
    if spec.kind is TaskKind.DP_LOCAL_TRAINING:
        values |= {"local_steps": float(hyper.local_steps), "learning_rate": hyper.learning_rate}
    for name, value in values.items():
        bounds = manifest.hyperparameters.get(name)
        if bounds is not None and not bounds.contains(value):
            raise TaskSpecError(
                f"hyperparameters.{name} = {value:g} is outside the package's declared range "
                f"[{bounds.low:g}, {bounds.high:g}]"
            )
