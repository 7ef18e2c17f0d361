"""The task kinds this agent runs: the one place a kind is registered.

Everything that names kinds reads them here: the wire parser (by number), the
policy loader and the CLI (by name), the policy's hyperparameter bounds and the
``policy explain`` options (the union of the kinds' hyperparameters).
"""

from __future__ import annotations

from agent.tasks.kinds.dp_describe import DpDescribe
from agent.tasks.kinds.dp_evaluate import DpEvaluate
from agent.tasks.kinds.dp_glm import DpGlm
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.dp_local_training import DpLocalTraining
from agent.tasks.kinds.dp_propensity import DpPropensity
from agent.tasks.kinds.dp_survival import DpSurvival
from agent.tasks.kinds.hyperparameters import Hyperparameter
from agent.tasks.kinds.profile import TaskProfile

PROFILES: tuple[type[TaskProfile], ...] = (
    DpGradient,
    DpLocalTraining,
    DpEvaluate,
    DpDescribe,
    DpSurvival,
    DpGlm,
    DpPropensity,
)


def names() -> tuple[str, ...]:
    """Every kind's name, in registration order."""
    return tuple(profile.name for profile in PROFILES)


def graph_kinds() -> tuple[str, ...]:
    """The names of the kinds that run a model package's graph, in registration order."""
    return tuple(profile.name for profile in PROFILES if profile.graph is not None)


def plan_kinds() -> tuple[str, ...]:
    """The names of the kinds the agent computes from an analysis plan, in registration order."""
    return tuple(profile.name for profile in PROFILES if profile.graph is None)


def by_name(name: str) -> type[TaskProfile] | None:
    """The kind called ``name`` in manifests, policies and the CLI; None if there is none."""
    return next((profile for profile in PROFILES if profile.name == name), None)


def by_wire(number: int) -> type[TaskProfile] | None:
    """The kind with this ``edge_agent.v1.TaskKind`` value; None if there is none."""
    return next((profile for profile in PROFILES if profile.wire == number), None)


def hyperparameters() -> tuple[Hyperparameter, ...]:
    """Every hyperparameter some kind takes, once each, in the order the kinds declare them."""
    seen: dict[str, Hyperparameter] = {}
    for profile in PROFILES:
        for hyperparameter in profile.declared():
            seen.setdefault(hyperparameter.name, hyperparameter)
    return tuple(seen.values())
