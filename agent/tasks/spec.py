"""What a coordinator asks a task to do, as checked values, and the checks against the package.

The gRPC layer turns a TaskSpec message into a ``TaskSpecification``; here it is
checked against what the package declares (task kinds, parameter tensors,
hyperparameter bounds). The policy's own checks come after, in governance.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.packages.manifest import PLAN_KINDS, Manifest, TaskKind, plan_lacks
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds.profile import TaskProfile
from agent.tasks.tensors import TensorDecl


@dataclass(frozen=True)
class TaskSpecification:
    # The kind and its hyperparameters, as one value (agent.tasks.kinds.profile).
    profile: TaskProfile
    package_digest: str
    dataset_id: str
    parameters: tuple[TensorDecl, ...]
    run_id: str
    round: int
    correlation_id: str
    purpose: str


def check_against_package(spec: TaskSpecification, manifest: Manifest) -> None:
    """The request must use the package as declared: its kinds, its graphs, its parameters, its bounds."""
    profile = spec.profile
    kind = TaskKind(profile.name)
    if kind not in manifest.task_kinds:
        offered = ", ".join(other.value for other in manifest.task_kinds)
        lacking = plan_lacks(manifest.plan, kind) if manifest.plan is not None and kind in PLAN_KINDS else None
        why = f"; it needs {lacking}" if lacking is not None else ""
        raise TaskSpecError(f"package {manifest.name} {manifest.version.text} does not offer {profile.name} "
                            f"(it offers {offered}){why}")
    if profile.graph is None and manifest.plan is None:
        raise TaskSpecError(f"package {manifest.name} has no analysis plan, so it cannot run {profile.name}")
    if profile.graph is not None and profile.graph.value not in manifest.graphs:
        raise TaskSpecError(
            f"package {manifest.name} has no {profile.graph.value} graph, so it cannot run {profile.name}"
        )
    declared = manifest.task_parameters(kind)
    if len(spec.parameters) != len(declared):
        names = ", ".join(f"{p.name} {p.dtype}{list(p.shape)}" for p in declared) or "none"
        raise TaskSpecError(f"the package declares {len(declared)} parameters for {profile.name} ({names}), the "
                            f"task sent {len(spec.parameters)}")
    for index, (sent, expected) in enumerate(zip(spec.parameters, declared, strict=True)):
        if (sent.name, sent.shape) != (expected.name, expected.shape) or not expected.accepts(sent.dtype):
            raise TaskSpecError(
                f"parameters[{index}]: expected {expected.name} {expected.dtype}{list(expected.shape)}, "
                f"got {sent.name} {sent.dtype}{list(sent.shape)}"
            )
    for name, value in profile.values().items():
        bounds = manifest.hyperparameters.get(name)
        if bounds is not None and not bounds.contains(value):
            raise TaskSpecError(
                f"hyperparameters.{name} = {value:g} is outside the package's declared range "
                f"[{bounds.low:g}, {bounds.high:g}]"
            )
