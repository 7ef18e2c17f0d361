"""The plan kinds as profiles: they describe the whole cohort (q = 1), release exactly their
plan's layout, and are charged as one Gaussian mechanism with the task's noise multiplier."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.packages.manifest import TaskKind, parse_manifest
from agent.packages.release_layout import layout
from agent.privacy.mechanism import Mechanism, accounting_grid
from agent.tasks.errors import TaskSpecError
from agent.tasks.kinds import registry
from agent.tasks.kinds.dp_describe import DpDescribe
from agent.tasks.kinds.dp_glm import DpGlm
from agent.tasks.kinds.dp_propensity import DpPropensity
from agent.tasks.kinds.dp_survival import DpSurvival
from agent.tasks.kinds.profile import TaskProfile
from tests.packages.package_builders import manifest_and_graphs
from tests.plans.test_glm_plan import PLAN as GLM_PLAN
from tests.plans.test_plan_format import manifest

PLAN_PROFILES: tuple[type[TaskProfile], ...] = tuple(profile for profile in registry.PROFILES if profile.graph is None)
SIGMAS = st.floats(0.1, 1e3)


@given(kind=st.sampled_from(PLAN_PROFILES), sigma=SIGMAS)
def test_a_plan_task_is_parsed_from_what_is_sent_and_charged_as_one_gaussian(
    kind: type[TaskProfile], sigma: float
) -> None:
    profile = kind.from_wire(pb.DPHyperparameters(noise_multiplier=sigma, sampling_rate=1.0))
    assert kind.from_wire(profile.to_wire()) == profile
    assert profile.mechanism() == Mechanism(1.0, accounting_grid(sigma, up=False))
    assert profile.audit_fields() == {
        "noise_multiplier": sigma, "sampling_rate": 1.0, "release_noisy_count": False, "release_dropped_units": False
    }


@pytest.mark.parametrize("kind", PLAN_PROFILES, ids=lambda kind: kind.name)
def test_a_plan_task_describes_the_whole_cohort_and_asks_for_no_separate_count(kind: type[TaskProfile]) -> None:
    with pytest.raises(TaskSpecError, match=rf"^{kind.name} describes the whole cohort: .*sampling_rate must be 1$"):
        kind.from_wire(pb.DPHyperparameters(noise_multiplier=1.0, sampling_rate=0.5))
    with pytest.raises(TaskSpecError, match="release_noisy_count must be false"):
        kind.from_wire(pb.DPHyperparameters(noise_multiplier=1.0, sampling_rate=1.0, release_noisy_count=True))
    # The plan's own release says who was left out; the graph kinds' count does not apply.
    with pytest.raises(TaskSpecError, match=rf"^{kind.name} releases its counts as the plan declares .*"
                       r"release_dropped_units must be false$"):
        kind.from_wire(pb.DPHyperparameters(noise_multiplier=1.0, sampling_rate=1.0, release_dropped_units=True))
    with pytest.raises(TaskSpecError, match=r"noise_multiplier must be a number >= 0\.1"):
        kind.from_wire(pb.DPHyperparameters(noise_multiplier=0.0, sampling_rate=1.0))


def test_the_release_is_the_plan_layout_and_nothing_on_a_model_package() -> None:
    plan_manifest = parse_manifest(manifest())
    assert plan_manifest.plan is not None
    for kind, statistics in ((DpDescribe, TaskKind.DP_DESCRIBE), (DpSurvival, TaskKind.DP_SURVIVAL)):
        profile = kind.from_values({"noise_multiplier": 1.0, "sampling_rate": 1.0})
        release = profile.release(plan_manifest)
        assert release.tensors == ()
        assert release.scalars == frozenset(layout(plan_manifest.plan, statistics).scalar_names())
        model = parse_manifest(manifest_and_graphs()[0])
        assert profile.release(model).scalars == frozenset()
    assert {DpDescribe.name, DpSurvival.name} == {TaskKind.DP_DESCRIBE.value, TaskKind.DP_SURVIVAL.value}
    assert DpDescribe.graph is None and DpSurvival.graph is None
    assert set(PLAN_PROFILES) == {DpDescribe, DpSurvival, DpGlm, DpPropensity}


def test_dp_glm_releases_its_layout_only_on_a_plan_with_a_model() -> None:
    glm = DpGlm.from_values({"noise_multiplier": 1.0, "sampling_rate": 1.0})
    with_model = parse_manifest(manifest(plan=GLM_PLAN, task_kinds=["dp_glm"]))
    assert with_model.plan is not None
    release = glm.release(with_model)
    assert release.tensors == ()
    assert release.scalars == frozenset(layout(with_model.plan, TaskKind.DP_GLM).scalar_names())
    assert release.audit_names() == ("glm.count[1][2]", "glm.score[1][6]", "glm.information[1][21]")
    # No model (the manifest refuses to offer dp_glm then), no plan: nothing may leave.
    assert glm.release(parse_manifest(manifest())).scalars == frozenset()
    assert glm.release(parse_manifest(manifest_and_graphs()[0])).scalars == frozenset()
    assert glm.mechanism() == Mechanism(1.0, 1.0)
