"""A weighted plan end to end: a real agent over mTLS, gbsg2 with 1 to 3 rows per patient, a
signed plan package with ``weighting``; the propensity model (dp_propensity), then the
weighted description per arm, the weighted survival exits and the weighted Cox model.

Checked on what the daemon returns and writes: each release is the plan's layout (per arm,
with the weighted blocks); with a tiny noise multiplier its numbers are the pandas ones of
one row per patient with the weights computed from the estimand's formula; each task is
charged one Gaussian; and a task without the propensity coefficients, with the wrong
shape or with values that are not finite is refused with a clear status, nothing charged.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pandas as pd
import pytest
from lifelines.datasets import load_gbsg2
from scipy.special import expit

from agent.api.edge_agent.v1 import agent_pb2 as pb
from agent.identity.agent_key import AgentKey
from agent.packages.manifest import TaskKind
from edge_sponsor.coordinator.client import AgentRpcError
from edge_sponsor.coordinator.plan_tasks import PlanPackage
from tests.tasks.test_plan_tasks import GRID, TINY_SIGMA, PlanSite, plan_package, publisher, site
from tests.tasks.test_unit_level_budget import independent_epsilon

__all__ = ["publisher", "site"]  # the fixtures, used by name

WEIGHTED: dict[str, Any] = {
    "cohort": [],
    "strata": [],
    "variables": [
        {"column": "horTh", "kind": "categorical", "categories": ["no", "yes"]},
        {"column": "age", "kind": "numeric", "bounds": [20, 90]},
        {"column": "tgrade", "kind": "categorical", "categories": ["I", "II", "III"]},
        {"column": "menostat", "kind": "categorical", "categories": ["Pre", "Post"]},
    ],
    "survival": {"time_column": "time", "event_column": "cens", "grid": GRID},
    "model": {"family": "cox", "covariates": ["horTh"], "max_cumulative_hazard": 10},
    "weighting": {
        "treatment": "horTh",
        "covariates": ["age", "tgrade", "menostat"],
        "estimand": "ate",
        "max_weight": 8,
    },
}
KINDS = ["dp_describe", "dp_survival", "dp_glm", "dp_propensity"]
GAMMA = np.array([-0.9, 1.5, 0.2, 0.1, 0.7])


def pandas_weights(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """ATE weights at GAMMA, cut at 8, from the plan's spec with pandas (not the agent's code)."""
    design = np.column_stack(
        [
            np.ones(len(frame)),
            (frame.age.clip(20, 90) - 55.0) / 35.0,
            frame.tgrade == "II",
            frame.tgrade == "III",
            frame.menostat == "Post",
        ]
    ).astype(float)
    e = expit(design @ GAMMA)
    weights: npt.NDArray[np.float64] = np.minimum(np.where(frame.horTh == "yes", 1 / e, 1 / (1 - e)), 8.0)
    return weights


def within(package: PlanPackage, kind: TaskKind, block: str, sds: float = 5.0) -> float:
    """``sds`` noise SDs of ``block`` in a ``kind`` task at TINY_SIGMA."""
    layout = package.layout(kind)
    return sds * layout.noise_std(layout.block(block), TINY_SIGMA)


def test_the_propensity_model_then_the_weighted_releases_per_arm(site: PlanSite, publisher: AgentKey) -> None:
    archive = plan_package(publisher, WEIGHTED, task_kinds=KINDS)
    uploaded = site.client.upload_package(archive)
    assert list(uploaded.task_kinds) == KINDS
    package = PlanPackage.from_archive(archive)
    frame = load_gbsg2()
    frame = frame.assign(w=pandas_weights(frame), arm=(frame.horTh == "yes").astype(int))

    # The propensity model's sums at GAMMA: one row per patient, the treated arm as outcome.
    run = site.client.run_task(
        site.spec(uploaded.digest, pb.TASK_KIND_DP_PROPENSITY), [("coefficients", GAMMA)], timeout=60
    )
    assert set(run.scalars) == set(package.layout(TaskKind.DP_PROPENSITY).scalar_names())
    assert run.scalars["glm.count[0][0]"] == pytest.approx(
        len(frame), abs=within(package, TaskKind.DP_PROPENSITY, "glm.count")
    )

    # The weighted description: per arm, the weighted sums are pandas' with the weights at GAMMA.
    run = site.client.run_task(
        site.spec(uploaded.digest, pb.TASK_KIND_DP_DESCRIBE), [("propensity", GAMMA)], timeout=60
    )
    assert set(run.scalars) == set(package.layout(TaskKind.DP_DESCRIBE).scalar_names())
    for arm, group in frame.groupby("arm"):
        assert run.scalars[f"count[{arm}][0]"] == pytest.approx(
            len(group), abs=within(package, TaskKind.DP_DESCRIBE, "count")
        )
        tolerance = within(package, TaskKind.DP_DESCRIBE, "weights.sum")
        assert run.scalars[f"weights.sum[{arm}][0]"] == pytest.approx(group.w.sum(), abs=tolerance)
        centred = (group.age.clip(20, 90) - 55.0) * group.w
        tolerance = within(package, TaskKind.DP_DESCRIBE, "age.weighted.sum")
        assert run.scalars[f"age.weighted.sum[{arm}][0]"] == pytest.approx(centred.sum(), abs=tolerance)
        for cell, grade in enumerate(["I", "II", "III"]):
            expected = group.w[group.tgrade == grade].sum()
            tolerance = within(package, TaskKind.DP_DESCRIBE, "tgrade.weighted.counts")
            assert run.scalars[f"tgrade.weighted.counts[{arm}][{cell}]"] == pytest.approx(expected, abs=tolerance)

    # The weighted exits per arm, and the weighted Cox model's counts.
    run = site.client.run_task(
        site.spec(uploaded.digest, pb.TASK_KIND_DP_SURVIVAL), [("propensity", GAMMA)], timeout=60
    )
    first_year = frame[(frame.time <= 365) & (frame.cens == 1)]
    tolerance = within(package, TaskKind.DP_SURVIVAL, "survival.weighted.exits")
    for arm, group in first_year.groupby("arm"):
        assert run.scalars[f"survival.weighted.exits[{arm}][0]"] == pytest.approx(group.w.sum(), abs=tolerance)
    theta = np.concatenate([np.full(len(GRID), np.log(0.1 / 365)), [0.0]])
    run = site.client.run_task(
        site.spec(uploaded.digest, pb.TASK_KIND_DP_GLM), [("coefficients", theta), ("propensity", GAMMA)], timeout=60
    )
    assert run.scalars["glm.count[0][0]"] == pytest.approx(
        len(frame), abs=within(package, TaskKind.DP_GLM, "glm.count")
    )

    # Four tasks, each one Gaussian at q = 1; audited with the weighted blocks by name.
    assert site.epsilon_spent() == pytest.approx(independent_epsilon([(1.0, TINY_SIGMA, 4)]), rel=1e-6)
    started = site.audit("task.started")
    assert [entry["task_kind"] for entry in started] == ["dp_propensity", "dp_describe", "dp_survival", "dp_glm"]
    finished = site.audit("task.finished")
    assert finished[2]["released"] == [
        "survival.exits[2][15]",
        "survival.weighted.exits[2][15]",
        "weights.sumsq[2][1]",
    ]


def test_a_weighted_task_without_usable_propensity_coefficients_is_refused_and_charges_nothing(
    site: PlanSite, publisher: AgentKey
) -> None:
    digest = site.client.upload_package(plan_package(publisher, WEIGHTED, task_kinds=KINDS)).digest

    def refusal(kind: int, parameters: list[tuple[str, npt.NDArray[Any]]]) -> AgentRpcError:
        with pytest.raises(AgentRpcError) as caught:
            site.client.run_task(site.spec(digest, kind), parameters, timeout=60)
        return caught.value

    # Checked against the plan before the task is admitted: nothing is reserved.
    for kind, parameters, words in (
        (
            pb.TASK_KIND_DP_DESCRIBE,
            [],
            "declares 1 parameters for dp_describe (propensity float64[5]), the task sent 0",
        ),
        (
            pb.TASK_KIND_DP_SURVIVAL,
            [("propensity", np.zeros(4))],
            "expected propensity float64[5], got propensity float64[4]",
        ),
        (
            pb.TASK_KIND_DP_GLM,
            [("coefficients", np.zeros(7))],
            "declares 2 parameters for dp_glm (coefficients float64[7], propensity float64[5]), the task sent 1",
        ),
        (pb.TASK_KIND_DP_PROPENSITY, [("propensity", GAMMA)], "expected coefficients float64[5], got propensity"),
    ):
        refused = refusal(kind, parameters)
        assert refused.code is grpc.StatusCode.INVALID_ARGUMENT and words in refused.details, refused.details
    # Values are checked when they have arrived, before a row is read: refunded.
    for bad in (np.array([0.0, np.nan, 0, 0, 0]), np.array([1e10, 0, 0, 0, 0])):
        refused = refusal(pb.TASK_KIND_DP_DESCRIBE, [("propensity", bad)])
        assert refused.code is grpc.StatusCode.FAILED_PRECONDITION and "parameter 'propensity'" in refused.details
    failed = site.audit("task.failed")
    assert len(failed) == 2 and not any(entry["charged"] for entry in failed)
    # A dataset without a column of the plan (here a propensity covariate) is refused naming it,
    # before a number is computed.
    with pytest.raises(AgentRpcError) as caught:
        site.client.run_task(
            site.spec(digest, pb.TASK_KIND_DP_SURVIVAL, dataset="no-event"), [("propensity", GAMMA)], timeout=60
        )
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION and "column 'menostat'" in caught.value.details
    assert site.epsilon_spent() == 0.0 and site.epsilon_spent("no-event") == 0.0
