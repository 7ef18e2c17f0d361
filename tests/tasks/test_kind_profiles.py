"""Each kind's hyperparameters: parsed once from the wire, checked there, and the same values
everywhere after (the ledger's mechanism, the audit fields, the release's shape)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import DROPPED_UNITS, NOISY_COUNT, parse_manifest
from agent.privacy.mechanism import Mechanism, accounting_grid, combined_noise_multiplier
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds import registry
from agent.tasks.kinds.dp_evaluate import DpEvaluate
from agent.tasks.kinds.dp_gradient import DpGradient
from agent.tasks.kinds.dp_local_training import DpLocalTraining
from agent.tasks.kinds.hyperparameters import MIN_NOISE_MULTIPLIER
from agent.tasks.kinds.profile import TaskProfile
from agent.tasks.planning import planned_mechanisms
from edge_sponsor.publisher.zoo import build_logistic_regression
from tests.packages.package_builders import manifest_and_graphs

# What a request must satisfy whatever the policy says (written out here, independently of the declarations).
ACCEPTED: dict[str, Callable[[float], bool]] = {
    "clip_norm": lambda v: math.isfinite(v) and v > 0,
    "noise_multiplier": lambda v: math.isfinite(v) and v >= 0.1,
    "sampling_rate": lambda v: 0 < v <= 1,
    "local_steps": lambda v: 1 <= v <= 100_000,
    "learning_rate": lambda v: math.isfinite(v) and v > 0,
}
INTEGERS = {"local_steps"}
VALID = {
    "clip_norm": st.floats(1e-6, 1e6),
    "noise_multiplier": st.floats(0.1, 1e3),
    "sampling_rate": st.floats(1e-6, 1.0, exclude_min=True),
    "local_steps": st.integers(1, 100_000),
    "learning_rate": st.floats(1e-6, 10.0),
}
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
ANY_STEPS = st.integers(0, 2**32 - 1)


# The kinds that run a graph; the plan kinds (q = 1, no separate count) are tested in
# tests/plans/test_plan_kinds.py.
GRAPH_KINDS = tuple(profile for profile in registry.PROFILES if profile.graph is not None)


def test_every_hyperparameter_is_covered_here() -> None:
    assert {h.name for h in registry.hyperparameters()} == set(ACCEPTED) == set(VALID)


@st.composite
def profiles(draw: st.DrawFn, kinds: tuple[type[TaskProfile], ...] = GRAPH_KINDS) -> TaskProfile:
    kind = draw(st.sampled_from(kinds))
    values = {h.name: draw(VALID[h.name]) for h in kind.declared()}
    # Only a kind that can release the dropped units' count, and only at q = 1 (refused otherwise).
    dropped = kind.releases_dropped_units and draw(st.booleans())
    if dropped:
        values["sampling_rate"] = 1.0
    return kind.from_values(values, release_noisy_count=draw(st.booleans()), release_dropped_units=dropped)


@given(profiles())
def test_what_is_sent_is_what_is_parsed(profile: TaskProfile) -> None:
    one = profile.mechanism()
    if one.sampling_rate == 1.0 and one.noise_multiplier / math.sqrt(one.steps) < MIN_NOISE_MULTIPLIER:
        # Its releases over the whole cohort compose below the floor: refused, as planning refuses it.
        with pytest.raises(TaskSpecError, match=r"compose to one Gaussian at noise multiplier .* below 0\.1"):
            type(profile).from_wire(profile.to_wire())
    else:
        assert type(profile).from_wire(profile.to_wire()) == profile


@pytest.mark.parametrize(("noisy_count", "dropped_units"), [(True, False), (True, True), (False, True)])
def test_counts_that_take_the_release_below_the_noise_floor_are_refused_as_planning_refuses_them(
    noisy_count: bool, dropped_units: bool
) -> None:
    """σ 0.12 alone is allowed; with one or two counts at q = 1 it composes below 0.1 (ε above 90):
    RunTask refuses it, as GetBudget's planning does (agent.tasks.planning)."""
    plain = DpEvaluate(noise_multiplier=0.12, sampling_rate=1.0)
    assert DpEvaluate.from_wire(plain.to_wire()) == plain
    counted = DpEvaluate(
        noise_multiplier=0.12, sampling_rate=1.0, release_noisy_count=noisy_count, release_dropped_units=dropped_units
    )
    with pytest.raises(TaskSpecError, match=r"raise hyperparameters\.noise_multiplier or release fewer counts"):
        DpEvaluate.from_wire(counted.to_wire())
    planned = pb.PlannedTasks(kind=pb.TASK_KIND_DP_EVALUATE, hyperparameters=counted.to_wire(), count=1)
    with pytest.raises(TaskSpecError):
        planned_mechanisms([planned], {})


@given(
    kind=st.sampled_from(GRAPH_KINDS),
    sent=st.fixed_dictionaries({name: ANY_STEPS if name in INTEGERS else ANY_FLOAT for name in ACCEPTED}),
)
def test_a_value_is_accepted_exactly_when_it_makes_sense(kind: type[TaskProfile], sent: dict[str, float]) -> None:
    taken = [h.name for h in kind.declared()]
    wrong = [name for name in taken if not ACCEPTED[name](sent[name])]
    message = pb.DPHyperparameters(**sent)  # type: ignore[arg-type]
    if wrong:
        with pytest.raises(TaskSpecError, match=rf"^hyperparameters\.{wrong[0]} must be"):
            kind.from_wire(message)
    else:
        # Values of hyperparameters the kind does not take are ignored.
        assert kind.from_wire(message).values() == {name: sent[name] for name in taken}


@pytest.mark.parametrize("kind", registry.PROFILES, ids=registry.names())
def test_each_hyperparameter_the_kind_takes_is_required(kind: type[TaskProfile]) -> None:
    complete = {h.name: 1 if h.name in INTEGERS else 0.5 for h in kind.declared()}
    for missing in complete:
        sent = {name: value for name, value in complete.items() if name != missing}
        with pytest.raises(TaskSpecError, match=rf"spec\.hyperparameters\.{missing} is required for {kind.name}$"):
            kind.from_wire(pb.DPHyperparameters(**sent))  # type: ignore[arg-type]


def test_each_kind_takes_its_own_hyperparameters() -> None:
    # Every kind takes noise_multiplier and sampling_rate (TaskProfile's fields), then its own.
    assert [h.name for h in DpGradient.declared()] == ["noise_multiplier", "sampling_rate", "clip_norm"]
    assert [h.name for h in DpLocalTraining.declared()] == [
        "noise_multiplier",
        "sampling_rate",
        "clip_norm",
        "local_steps",
        "learning_rate",
    ]
    # Metrics are clipped to their declared ranges: no clipping norm.
    assert [h.name for h in DpEvaluate.declared()] == ["noise_multiplier", "sampling_rate"]


def test_from_values_wants_exactly_the_kinds_hyperparameters() -> None:
    with pytest.raises(TaskSpecError, match="dp_evaluate takes noise_multiplier, sampling_rate"):
        DpEvaluate.from_values({"noise_multiplier": 1.0, "sampling_rate": 0.5, "clip_norm": 1.0})


@given(profiles())
def test_the_audit_fields_are_the_profiles_fields(profile: TaskProfile) -> None:
    assert profile.audit_fields() == {
        **profile.values(),
        "release_noisy_count": profile.release_noisy_count,
        "release_dropped_units": profile.release_dropped_units,
    }


@given(profiles())
def test_the_mechanism_is_accounted_on_the_grid(profile: TaskProfile) -> None:
    q = min(1.0, accounting_grid(profile.sampling_rate, up=True))
    sigma = accounting_grid(profile.noise_multiplier, up=False)
    # The counts (each sensitivity 1, noise sigma) as one Gaussian: sigma / sqrt(number of counts).
    counts = [sigma for asked in (profile.release_noisy_count, profile.release_dropped_units) if asked]
    count = combined_noise_multiplier(*counts) if counts else None
    expected = {
        DpGradient: lambda: Mechanism.dp_gradient(q, sigma, count),
        DpLocalTraining: lambda: Mechanism.dp_local_training(q, sigma, profile.values()["local_steps"], count),
        DpEvaluate: lambda: Mechanism.dp_evaluate(sigma, q, count),
    }[type(profile)]()
    assert profile.mechanism() == expected


@given(profiles())
def test_the_release_is_declared_by_the_package(profile: TaskProfile) -> None:
    manifest = parse_manifest(manifest_and_graphs()[0])
    release = profile.release(manifest)
    parameters = {p.name: p.shape for p in manifest.parameters}
    metrics = {metric.name for metric in manifest.metrics}
    count = {NOISY_COUNT} if profile.release_noisy_count else set()
    if isinstance(profile, DpEvaluate):
        count |= {DROPPED_UNITS} if profile.release_dropped_units else set()
        assert (release.tensors, release.scalars) == ((), metrics | count)
    elif isinstance(profile, DpLocalTraining):
        # Only the delta leaves; a count, if asked for, is charged but not released.
        assert ({p.name: p.shape for p in release.tensors}, release.scalars) == (parameters, set())
    else:
        assert ({p.name: p.shape for p in release.tensors}, release.scalars) == (parameters, count)


def test_an_evaluation_release_names_a_metric_group_once_in_the_audit_log() -> None:
    fields, _ = manifest_and_graphs(build_logistic_regression(4, score_bins=10))
    manifest = parse_manifest(fields)
    release = DpEvaluate(noise_multiplier=1.0, sampling_rate=1.0, release_noisy_count=True).release(manifest)
    # Every cell is released; the log names the group with its size, and the other metrics.
    assert len(release.scalars) == 3 + 20 + 1
    assert release.audit_names() == ("brier", "correct", "loss", NOISY_COUNT, "score_histogram[20]")
