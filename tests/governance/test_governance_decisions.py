"""Policy decisions, rule by rule: each test changes one thing and expects one rule."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.governance.decisions import (
    Action,
    Request,
    TaskRequest,
    UsageState,
    decide,
    visible_datasets,
)
from agent.governance.model import (
    ANY_DATASET,
    Bounds,
    CoordinatorRule,
    DatasetRule,
    Limits,
    PackageRules,
    Policy,
)
from agent.refusal import Refusal
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.dp_local_training import DpLocalTraining
from agent.tasks.kinds.profile import TaskProfile

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
COORD = "spiffe://pharma.example/coordinator/eu-1"


def make_policy(**changes: object) -> Policy:
    coordinator = CoordinatorRule(
        identity=COORD,
        datasets=frozenset({"onco"}),
        task_kinds=frozenset({"dp_gradient", "dp_evaluate", "dp_local_training"}),
        max_tasks_per_hour=10,
        max_tasks_per_day=50,
        valid_from=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        valid_until=dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    dataset = DatasetRule(
        dataset_id="onco",
        exposed_columns=frozenset({"age", "stage", "event", "time"}),
        forbidden_columns=frozenset({"patient_id", "name"}),
        label_columns=frozenset({"event", "time"}),
        min_cohort_size=20,
        epsilon_budget=3.0,
        delta=1e-5,
        budget_group="onco-patients",
        purposes=frozenset({"oncology-research"}),
        agreement_expires=dt.date(2026, 12, 31),
        bounds={
            "clip_norm": Bounds(0.01, 10.0),
            "noise_multiplier": Bounds(0.8, None),
            "sampling_rate": Bounds(0.0, 0.1),
            "local_steps": Bounds(1, 20),
            "learning_rate": Bounds(0.0, 1.0),
        },
    )
    base = Policy(
        coordinators={COORD: coordinator},
        datasets={"onco": dataset},
        packages=PackageRules(require_approval=True, allowed_names=("acme/*",)),
        limits=Limits(max_concurrent_tasks=2),
        digest="sha256:test",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


HYPERPARAMETERS = {"clip_norm": 1.0, "noise_multiplier": 1.1, "sampling_rate": 0.01, "local_steps": 5,
                   "learning_rate": 0.1}


def task(kind: type[TaskProfile] = DpGradient, **changes: object) -> TaskRequest:
    """A compliant request of ``kind``; a change to a hyperparameter the kind does not take is dropped."""
    values = HYPERPARAMETERS | {name: v for name, v in changes.items() if name in HYPERPARAMETERS}
    taken = {h.name for h in kind.declared()}
    base = TaskRequest(
        profile=kind.from_values({name: v for name, v in values.items() if name in taken}),
        package_name="acme/cardio",
        columns=frozenset({"age", "stage", "event"}),
        label_columns=frozenset({"event"}),
        purpose="oncology-research",
        cohort_size=500,
    )
    others = {name: v for name, v in changes.items() if name not in HYPERPARAMETERS}
    return dataclasses.replace(base, **others)  # type: ignore[arg-type]


def run(t: TaskRequest | None = None, policy: Policy | None = None, state: UsageState | None = None,
        coordinator: str = COORD, now: dt.datetime = NOW, dataset: str = "onco") -> tuple[Refusal | None, str]:
    decision = decide(
        Request(coordinator, Action.RUN_TASK, now, dataset_id=dataset, task=t or task()),
        policy or make_policy(),
        state or UsageState(),
    )
    return decision.refusal, decision.rule


def with_coordinator(**changes: object) -> Policy:
    policy = make_policy()
    rule = dataclasses.replace(policy.coordinators[COORD], **changes)  # type: ignore[arg-type]
    return make_policy(coordinators={COORD: rule})


def with_dataset(**changes: object) -> Policy:
    policy = make_policy()
    rule = dataclasses.replace(policy.datasets["onco"], **changes)  # type: ignore[arg-type]
    return make_policy(datasets={"onco": rule})


def test_a_compliant_task_is_allowed() -> None:
    assert run() == (None, "task.allowed")


def test_unknown_coordinator_is_forbidden_for_every_action() -> None:
    for action in Action:
        decision = decide(Request("spiffe://evil/x", action, NOW, dataset_id="onco", task=task()),
                          make_policy(), UsageState())
        assert (decision.refusal, decision.rule) == (Refusal.FORBIDDEN, "coordinator.unknown")


def test_coordinator_validity_period() -> None:
    assert run(now=dt.datetime(2025, 12, 31, tzinfo=dt.UTC)) == (Refusal.FORBIDDEN, "coordinator.not_yet_valid")
    assert run(now=dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) == (Refusal.FORBIDDEN, "coordinator.expired")
    assert run(now=dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC))[0] is None


def test_dataset_not_granted_to_coordinator() -> None:
    # Told as NOT_FOUND, like a dataset that does not exist: its existence is not revealed.
    policy = with_coordinator(datasets=frozenset({"other"}))
    assert run(policy=policy) == (Refusal.NOT_FOUND, "coordinator.dataset_not_allowed")


def test_dataset_without_policy_rule_is_not_released() -> None:
    assert run(dataset="labs") == (Refusal.NOT_FOUND, "dataset.no_policy")


def test_a_hidden_dataset_is_told_in_the_words_of_a_missing_one_and_audited_with_the_truth() -> None:
    hidden = decide(Request(COORD, Action.GET_DATASET, NOW, dataset_id="labs"), make_policy(), UsageState())
    missing = decide(Request(COORD, Action.GET_DATASET, NOW, dataset_id="labs", dataset_known=False),
                     make_policy(), UsageState())
    assert (hidden.refusal, hidden.message) == (missing.refusal, missing.message) == (
        Refusal.NOT_FOUND, "dataset 'labs' not found")
    assert "not released" in hidden.reason  # what the audit log records


def test_unknown_dataset_is_not_found_only_for_authorised_coordinators() -> None:
    policy = make_policy()
    known = decide(Request(COORD, Action.GET_DATASET, NOW, dataset_id="ghost", dataset_known=False), policy,
                   UsageState())
    assert (known.refusal, known.rule) == (Refusal.NOT_FOUND, "dataset.unknown")
    stranger = decide(Request("x", Action.GET_DATASET, NOW, dataset_id="ghost", dataset_known=False), policy,
                      UsageState())
    assert stranger.rule == "coordinator.unknown"


def test_data_use_agreement_expiry() -> None:
    after = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    policy = with_coordinator(valid_until=None)
    assert run(policy=policy, now=after) == (Refusal.PRECONDITION, "dataset.agreement_expired")
    decision = decide(Request(COORD, Action.GET_BUDGET, after, dataset_id="onco"), policy, UsageState())
    assert decision.rule == "dataset.agreement_expired"


def test_task_kind_not_granted() -> None:
    policy = with_coordinator(task_kinds=frozenset({"dp_evaluate"}))
    assert run(policy=policy) == (Refusal.FORBIDDEN, "coordinator.task_kind_not_allowed")


def test_package_name_not_allowed() -> None:
    assert run(task(package_name="other/model")) == (Refusal.FORBIDDEN, "package.name_not_allowed")
    assert run(policy=make_policy(packages=PackageRules(allowed_names=())))[0] is None


def test_purpose_must_be_allowed() -> None:
    assert run(task(purpose="marketing")) == (Refusal.FORBIDDEN, "dataset.purpose_not_allowed")
    assert run(task(purpose="")) == (Refusal.FORBIDDEN, "dataset.purpose_not_allowed")
    assert run(task(purpose="anything"), policy=with_dataset(purposes=frozenset()))[0] is None


def test_forbidden_columns_are_refused_even_if_exposed() -> None:
    policy = with_dataset(exposed_columns=None)
    assert run(task(columns=frozenset({"age", "patient_id"})), policy=policy) == (
        Refusal.FORBIDDEN, "dataset.forbidden_column")


def test_columns_outside_the_allow_list_are_refused() -> None:
    assert run(task(columns=frozenset({"age", "postcode"}))) == (Refusal.FORBIDDEN, "dataset.column_not_exposed")


def test_label_columns_are_restricted() -> None:
    t = task(columns=frozenset({"age", "stage"}), label_columns=frozenset({"stage"}))
    assert run(t) == (Refusal.FORBIDDEN, "dataset.label_column_not_allowed")


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("clip_norm", 50.0, "dataset.bounds.clip_norm"),
        ("clip_norm", 0.0, "dataset.bounds.clip_norm"),
        ("noise_multiplier", 0.5, "dataset.bounds.noise_multiplier"),
        ("sampling_rate", 0.5, "dataset.bounds.sampling_rate"),
    ],
)
def test_hyperparameter_bounds(field: str, value: float, rule: str) -> None:
    assert run(task(**{field: value})) == (Refusal.PRECONDITION, rule)


def test_local_training_bounds_apply_only_to_local_training() -> None:
    assert run(task(local_steps=100))[0] is None
    assert run(task(DpLocalTraining, local_steps=100)) == (
        Refusal.PRECONDITION, "dataset.bounds.local_steps")
    assert run(task(DpLocalTraining, learning_rate=5.0)) == (
        Refusal.PRECONDITION, "dataset.bounds.learning_rate")


def test_minimum_cohort_size() -> None:
    assert run(task(cohort_size=19)) == (Refusal.PRECONDITION, "dataset.min_cohort")
    assert run(task(cohort_size=20))[0] is None
    assert run(task(cohort_size=None)) == (Refusal.PRECONDITION, "dataset.cohort_unknown")


def test_minimum_cohort_reason_does_not_reveal_the_actual_size() -> None:
    decision = decide(Request(COORD, Action.RUN_TASK, NOW, dataset_id="onco", task=task(cohort_size=13)),
                      make_policy(), UsageState())
    assert "13" not in decision.reason and "20" in decision.reason


def test_rate_limits_and_concurrency() -> None:
    assert run(state=UsageState(tasks_last_hour=10)) == (Refusal.EXHAUSTED, "coordinator.rate_hour")
    assert run(state=UsageState(tasks_last_hour=9, tasks_last_day=50)) == (Refusal.EXHAUSTED, "coordinator.rate_day")
    assert run(state=UsageState(running_tasks=2)) == (Refusal.EXHAUSTED, "limits.concurrent_tasks")
    assert run(state=UsageState(tasks_last_hour=9, tasks_last_day=49, running_tasks=1))[0] is None


def test_run_task_without_a_task_is_invalid() -> None:
    decision = decide(Request(COORD, Action.RUN_TASK, NOW, dataset_id="onco"), make_policy(), UsageState())
    assert decision.rule == "request.task_missing"


def test_upload_requires_some_task_kind_and_an_allowed_name() -> None:
    policy = make_policy()
    ok = decide(Request(COORD, Action.UPLOAD_PACKAGE, NOW, package_name="acme/x"), policy, UsageState())
    assert ok.allowed
    bad = decide(Request(COORD, Action.UPLOAD_PACKAGE, NOW, package_name="evil/x"), policy, UsageState())
    assert bad.rule == "package.name_not_allowed"
    none = with_coordinator(task_kinds=frozenset())
    assert decide(Request(COORD, Action.UPLOAD_PACKAGE, NOW), none, UsageState()).rule == "coordinator.no_tasks"


def test_wildcard_dataset_rule_covers_unlisted_datasets_with_their_own_budget_group() -> None:
    wildcard = dataclasses.replace(make_policy().datasets["onco"], dataset_id=ANY_DATASET, budget_group=ANY_DATASET)
    policy = make_policy(datasets={ANY_DATASET: wildcard})
    rule = policy.dataset_rule("labs")
    assert rule is not None and rule.dataset_id == "labs" and rule.budget_group == "labs"
    everything = with_coordinator(datasets=frozenset({ANY_DATASET}))
    everything = dataclasses.replace(everything, datasets={ANY_DATASET: wildcard})
    assert run(policy=everything, dataset="labs")[0] is None


def test_visible_datasets_filters_by_coordinator_grants() -> None:
    assert visible_datasets(COORD, make_policy(), NOW, ["labs", "onco"]) == ["onco"]
    assert visible_datasets("stranger", make_policy(), NOW, ["onco"]) == []


@given(
    coordinator=st.sampled_from([COORD, "other", ""]),
    action=st.sampled_from(list(Action)),
    dataset=st.sampled_from(["onco", "labs", "", ANY_DATASET]),
    hour=st.integers(0, 20),
    running=st.integers(0, 3),
    cohort=st.one_of(st.none(), st.integers(0, 1000)),
    clip=st.floats(allow_nan=True, allow_infinity=True),
)
def test_decisions_are_total_and_denials_name_a_rule(
    coordinator: str, action: Action, dataset: str, hour: int, running: int, cohort: int | None, clip: float
) -> None:
    decision = decide(
        Request(coordinator, action, NOW, dataset_id=dataset, task=task(cohort_size=cohort, clip_norm=clip)),
        make_policy(),
        UsageState(tasks_last_hour=hour, running_tasks=running),
    )
    assert decision.rule and decision.reason
    if action is Action.RUN_TASK and decision.allowed:
        assert coordinator == COORD and dataset == "onco" and hour < 10 and running < 2
        assert cohort is not None and cohort >= 20 and 0.01 <= clip <= 10.0


def test_a_dataset_without_a_privacy_unit_is_refused_where_the_policy_requires_one() -> None:
    policy = with_dataset(require_privacy_unit=True)
    decision = decide(Request(COORD, Action.RUN_TASK, NOW, dataset_id="onco", task=task()), policy, UsageState())
    assert (decision.refusal, decision.rule) == (Refusal.PRECONDITION, "dataset.privacy_unit")
    assert "'onco'" in decision.message and "--privacy-unit COLUMN" in decision.message
    assert run(task(privacy_unit="patient_id"), policy=policy) == (None, "task.allowed")
    # Not required: a dataset without a unit keeps working row by row.
    assert run(task()) == (None, "task.allowed")


def test_the_privacy_unit_column_is_never_readable_and_the_refusal_does_not_name_it_as_the_unit() -> None:
    # Even a rule exposing every column does not expose the unit column.
    policy = with_dataset(exposed_columns=None, forbidden_columns=frozenset())
    t = task(columns=frozenset({"age", "mrn"}), privacy_unit="mrn")
    decision = decide(Request(COORD, Action.RUN_TASK, NOW, dataset_id="onco", task=t), policy, UsageState())
    assert (decision.refusal, decision.rule) == (Refusal.FORBIDDEN, "dataset.column_not_exposed")
    assert decision.message == "columns mrn are not exposed by dataset 'onco'"
    assert "unit" not in decision.message


def test_the_minimum_cohort_counts_units() -> None:
    decision = decide(Request(COORD, Action.RUN_TASK, NOW, dataset_id="onco", task=task(cohort_size=5)),
                      make_policy(), UsageState())
    assert decision.rule == "dataset.min_cohort" and "fewer units" in decision.reason
