"""Policy decisions: (request, policy, state) -> Decision. Pure functions only.

Every denial names the rule that denied it. Reasons are sent to the remote
coordinator and written to the audit log, so they say what is refused and
why in the policy's terms, and never anything about hospital internals. The
one exception: a dataset the caller may not see is refused as NOT_FOUND with
the words used for a dataset that does not exist (``Decision.told``), so that
no coordinator learns which datasets exist; the audit log keeps the true rule
and reason.
"""

from __future__ import annotations

import datetime as dt
import enum
import fnmatch
from dataclasses import dataclass

from agent.governance.model import (
    ANY_DATASET,
    Bounds,
    CoordinatorRule,
    DatasetRule,
    Policy,
)
from agent.refusal import Refusal
from agent.tasks.kinds.profile import TaskProfile


class Action(enum.Enum):
    GET_INFO = "get_info"
    LIST_DATASETS = "list_datasets"
    GET_DATASET = "get_dataset"
    UPLOAD_PACKAGE = "upload_package"
    READ_PACKAGES = "read_packages"
    RUN_TASK = "run_task"
    CANCEL_TASK = "cancel_task"
    GET_BUDGET = "get_budget"
    PROBE_TRANSPORT = "probe_transport"


# Actions that concern no particular dataset: any authorised coordinator.
_AGENT_ACTIONS = frozenset(
    {Action.GET_INFO, Action.LIST_DATASETS, Action.READ_PACKAGES, Action.CANCEL_TASK, Action.PROBE_TRANSPORT}
)
_DATASET_ACTIONS = frozenset({Action.GET_DATASET, Action.GET_BUDGET, Action.RUN_TASK})


@dataclass(frozen=True)
class Decision:
    # None: allowed. Otherwise the refusal the caller is told.
    refusal: Refusal | None
    # Why, in the policy's terms: always audited, and told to the caller unless `told` is set.
    reason: str
    rule: str
    # What the caller is told instead, where the reason would reveal what it may not know.
    told: str | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    @property
    def message(self) -> str:
        """What the caller is told."""
        return self.reason if self.told is None else self.told

    @property
    def outcome(self) -> str:
        """As the audit log records it: `allowed`, or the refusal's value."""
        return "allowed" if self.refusal is None else self.refusal.value


@dataclass(frozen=True)
class TaskRequest:
    # The kind and its hyperparameters, as parsed from the wire.
    profile: TaskProfile
    package_name: str
    # Every dataset column the package reads (features, label, time, event).
    columns: frozenset[str]
    # The subset used as label, survival time or event.
    label_columns: frozenset[str]
    purpose: str
    # Units in the dataset (patients where a unit is declared, else rows); None when
    # it cannot be known (fails closed).
    cohort_size: int | None
    # The dataset's privacy-unit column; None when it declares none (each row its own unit).
    privacy_unit: str | None = None


@dataclass(frozen=True)
class Request:
    coordinator: str
    action: Action
    now: dt.datetime
    dataset_id: str | None = None
    task: TaskRequest | None = None
    package_name: str | None = None
    # Whether the catalog has the dataset; told only to authorised coordinators.
    dataset_known: bool = True


@dataclass(frozen=True)
class UsageState:
    """What the agent counted for this coordinator (tasks started) and overall."""

    tasks_last_hour: int = 0
    tasks_last_day: int = 0
    running_tasks: int = 0


def _allow(rule: str, reason: str = "allowed by policy") -> Decision:
    return Decision(None, reason, rule)


def _deny(refusal: Refusal, rule: str, reason: str) -> Decision:
    return Decision(refusal, reason, rule)


def dataset_not_found(dataset_id: str) -> str:
    """What a caller hears of a dataset that does not exist, or that it may not see: the same words."""
    return f"dataset {dataset_id!r} not found"


def _hidden(rule: str, reason: str, dataset_id: str) -> Decision:
    """A refusal of a dataset the caller may not see: told as NOT_FOUND, byte for byte what a
    nonexistent id gets, so that its existence is not revealed; the audit log keeps `reason`."""
    return Decision(Refusal.NOT_FOUND, reason, rule, told=dataset_not_found(dataset_id))


def check_coordinator(coordinator: str, policy: Policy, now: dt.datetime) -> CoordinatorRule | Decision:
    rule = policy.coordinators.get(coordinator)
    if rule is None:
        return _deny(
            Refusal.FORBIDDEN,
            "coordinator.unknown",
            f"coordinator {coordinator!r} is not authorised by this agent's policy",
        )
    if rule.valid_from is not None and now < rule.valid_from:
        return _deny(
            Refusal.FORBIDDEN,
            "coordinator.not_yet_valid",
            f"coordinator {coordinator!r} is authorised only from {rule.valid_from.isoformat()}",
        )
    if rule.valid_until is not None and now >= rule.valid_until:
        return _deny(
            Refusal.FORBIDDEN,
            "coordinator.expired",
            f"the authorisation of coordinator {coordinator!r} ended at {rule.valid_until.isoformat()}",
        )
    return rule


def package_name_allowed(name: str, policy: Policy) -> Decision:
    patterns = policy.packages.allowed_names
    if patterns and not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
        return _deny(
            Refusal.FORBIDDEN, "package.name_not_allowed", f"package {name!r} is not on this agent's allowed list"
        )
    return _allow("package.name_allowed")


def _coordinator_may_use(rule: CoordinatorRule, dataset_id: str) -> bool:
    return ANY_DATASET in rule.datasets or dataset_id in rule.datasets


def visible_datasets(coordinator: str, policy: Policy, now: dt.datetime, dataset_ids: list[str]) -> list[str]:
    """The catalog datasets this coordinator may see, in the given order."""
    return [
        dataset_id
        for dataset_id in dataset_ids
        if decide(Request(coordinator, Action.GET_DATASET, now, dataset_id=dataset_id), policy, UsageState()).allowed
    ]


def _check_bounds(name: str, value: float, bounds: Bounds, where: str) -> Decision | None:
    if not bounds.contains(value):
        return _deny(
            Refusal.PRECONDITION,
            f"dataset.bounds.{name}",
            f"{name} = {value:g} is outside the range {bounds.describe()} that {where} allows",
        )
    return None


def _decide_task(
    request: Request, coordinator: CoordinatorRule, dataset: DatasetRule, policy: Policy, state: UsageState
) -> Decision:
    task = request.task
    if task is None:
        return _deny(Refusal.INVALID, "request.task_missing", "a task request must describe the task")
    if task.profile.name not in coordinator.task_kinds:
        return _deny(
            Refusal.FORBIDDEN,
            "coordinator.task_kind_not_allowed",
            f"coordinator {request.coordinator!r} may not run {task.profile.name} tasks",
        )
    named = package_name_allowed(task.package_name, policy)
    if not named.allowed:
        return named
    if dataset.purposes and task.purpose not in dataset.purposes:
        return _deny(
            Refusal.FORBIDDEN,
            "dataset.purpose_not_allowed",
            f"purpose {task.purpose!r} is not allowed for dataset {dataset.dataset_id!r}; "
            f"allowed: {', '.join(sorted(dataset.purposes))}",
        )
    forbidden = sorted(task.columns & dataset.forbidden_columns)
    if forbidden:
        return _deny(
            Refusal.FORBIDDEN,
            "dataset.forbidden_column",
            f"columns {', '.join(forbidden)} of dataset {dataset.dataset_id!r} may never be used",
        )
    # The unit column is never exposed, whatever the rule says; refused in the words used for any
    # column not exposed, so that the refusal does not tell which column is the unit.
    hidden = sorted(c for c in task.columns if not dataset.column_visible(c) or c == task.privacy_unit)
    if hidden:
        return _deny(
            Refusal.FORBIDDEN,
            "dataset.column_not_exposed",
            f"columns {', '.join(hidden)} are not exposed by dataset {dataset.dataset_id!r}",
        )
    if dataset.require_privacy_unit and task.privacy_unit is None:
        return _deny(
            Refusal.PRECONDITION,
            "dataset.privacy_unit",
            f"dataset {dataset.dataset_id!r} declares no privacy unit, which this agent's policy requires: "
            "the hospital declares one with `edge-agent dataset add ID PATH --privacy-unit COLUMN` "
            "(or privacy_unit in agent.toml)",
        )
    if dataset.label_columns is not None:
        not_labels = sorted(task.label_columns - dataset.label_columns)
        if not_labels:
            return _deny(
                Refusal.FORBIDDEN,
                "dataset.label_column_not_allowed",
                f"columns {', '.join(not_labels)} may not be used as label, time or event "
                f"in dataset {dataset.dataset_id!r}",
            )
    where = f"dataset {dataset.dataset_id!r}"
    # Only the hyperparameters the task's kind takes (dp_evaluate has no clipping norm).
    values = task.profile.values()
    for declared in task.profile.declared():
        bounds = dataset.bounds.get(declared.name, declared.policy_default)
        denial = _check_bounds(declared.name, values[declared.name], bounds, where)
        if denial is not None:
            return denial
    if task.cohort_size is None:
        return _deny(
            Refusal.PRECONDITION,
            "dataset.cohort_unknown",
            f"the size of dataset {dataset.dataset_id!r} cannot be determined now",
        )
    if task.cohort_size < dataset.min_cohort_size:
        # The threshold is policy and may be told; the actual size is not.
        return _deny(
            Refusal.PRECONDITION,
            "dataset.min_cohort",
            f"dataset {dataset.dataset_id!r} has fewer units (patients, or rows where no unit is declared) "
            f"than the minimum cohort size of {dataset.min_cohort_size}",
        )
    if coordinator.max_tasks_per_hour is not None and state.tasks_last_hour >= coordinator.max_tasks_per_hour:
        return _deny(
            Refusal.EXHAUSTED,
            "coordinator.rate_hour",
            f"coordinator {request.coordinator!r} may start at most {coordinator.max_tasks_per_hour} tasks per hour",
        )
    if coordinator.max_tasks_per_day is not None and state.tasks_last_day >= coordinator.max_tasks_per_day:
        return _deny(
            Refusal.EXHAUSTED,
            "coordinator.rate_day",
            f"coordinator {request.coordinator!r} may start at most {coordinator.max_tasks_per_day} tasks per day",
        )
    if state.running_tasks >= policy.limits.max_concurrent_tasks:
        return _deny(
            Refusal.EXHAUSTED,
            "limits.concurrent_tasks",
            f"this agent runs at most {policy.limits.max_concurrent_tasks} tasks at a time; try again later",
        )
    return _allow("task.allowed")


def decide(request: Request, policy: Policy, state: UsageState) -> Decision:
    checked = check_coordinator(request.coordinator, policy, request.now)
    if isinstance(checked, Decision):
        return checked
    coordinator = checked

    if request.action in _AGENT_ACTIONS:
        return _allow("coordinator.authorised")

    if request.action is Action.UPLOAD_PACKAGE:
        if not coordinator.task_kinds:
            return _deny(
                Refusal.FORBIDDEN,
                "coordinator.no_tasks",
                f"coordinator {request.coordinator!r} may not run tasks, so it may not upload packages",
            )
        if request.package_name is not None:
            return package_name_allowed(request.package_name, policy)
        return _allow("coordinator.may_upload")

    if request.action not in _DATASET_ACTIONS:  # a new Action without a rule is refused
        return _deny(Refusal.FORBIDDEN, "action.unknown", f"no policy rule covers {request.action.value}")
    if not request.dataset_id:
        return _deny(Refusal.INVALID, "request.dataset_missing", "dataset_id is required")
    if not request.dataset_known:
        return _deny(Refusal.NOT_FOUND, "dataset.unknown", dataset_not_found(request.dataset_id))
    dataset = policy.dataset_rule(request.dataset_id)
    if dataset is None:
        return _hidden(
            "dataset.no_policy",
            f"dataset {request.dataset_id!r} is not released for federated use by this agent's policy",
            request.dataset_id,
        )
    if not _coordinator_may_use(coordinator, request.dataset_id):
        return _hidden(
            "coordinator.dataset_not_allowed",
            f"coordinator {request.coordinator!r} may not use dataset {request.dataset_id!r}",
            request.dataset_id,
        )
    if dataset.agreement_expires is not None and request.now.date() > dataset.agreement_expires:
        return _deny(
            Refusal.PRECONDITION,
            "dataset.agreement_expired",
            f"the data-use agreement for dataset {request.dataset_id!r} expired on "
            f"{dataset.agreement_expires.isoformat()}",
        )
    if request.action is Action.RUN_TASK:
        return _decide_task(request, coordinator, dataset, policy, state)
    return _allow("dataset.allowed")
