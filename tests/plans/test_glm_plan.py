"""The plan's ``model`` section (dp_glm): what it may declare, the refusals naming the field, the
design it makes, the release layout and what the manifest and the reviewer's summary say of it."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from agent.packages.errors import PackageRejected
from agent.packages.manifest import COEFFICIENTS, ParameterDecl, TaskKind, parse_manifest, served_kinds
from agent.packages.plan import (
    MAX_COVARIATES,
    MAX_DESIGN_WIDTH,
    CategoricalVariable,
    ModelFamily,
    NumericVariable,
    parse_plan,
)
from agent.packages.plan_summary import plan_lines
from agent.packages.release_layout import GLM_COUNT, GLM_INFORMATION, GLM_SCORE, analysed, layout

PLAN: dict[str, Any] = {
    "cohort": [{"column": "age", "op": ">=", "value": 18}],
    "strata": [{"column": "arm", "categories": ["control", "treatment"]}],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [18, 100]},
        {"column": "sex", "kind": "categorical", "categories": ["F", "M"]},
        {"column": "stage", "kind": "categorical", "categories": ["I", "II", "III", "IV"]},
        {"column": "smoker", "kind": "categorical", "categories": [True, False]},
        {"column": "bmi", "kind": "numeric", "bounds": [15, 45], "bins": [15, 25, 30, 45]},
    ],
    "model": {"family": "logistic", "outcome": "death_1y", "covariates": ["age", "sex", "stage"]},
}


def refused(plan: dict[str, Any]) -> str:
    with pytest.raises(PackageRejected) as caught:
        parse_plan(plan)
    return str(caught.value)


def with_model(**changes: Any) -> dict[str, Any]:
    plan = copy.deepcopy(PLAN)
    plan["model"].update(changes)
    return plan


def test_a_model_parses_into_the_plans_variables_and_round_trips() -> None:
    plan = parse_plan(PLAN)
    model = plan.model
    assert model is not None and model.family is ModelFamily.LOGISTIC and model.outcome == "death_1y"
    # The covariates are the declared variables themselves: their bounds and categories bound the design.
    assert model.covariates == (
        NumericVariable("age", 18.0, 100.0),
        CategoricalVariable("sex", ("F", "M")),
        CategoricalVariable("stage", ("I", "II", "III", "IV")),
    )
    assert model.design_names == ("(intercept)", "age", "sex=M", "stage=II", "stage=III", "stage=IV")
    assert model.width == 6
    assert model.max_row_norm_squared == 4.0  # intercept, age, one of sex's, one of stage's
    assert parse_plan(plan.to_json()) == plan
    assert plan.to_json()["model"] == PLAN["model"]
    # The outcome is read, and is an outcome to the policy; a plan without a model reads none.
    assert "death_1y" in plan.columns and plan.outcome_columns == ("death_1y",)
    no_model = parse_plan({k: v for k, v in PLAN.items() if k != "model"})
    assert no_model.model is None and "death_1y" not in no_model.columns


def test_categories_are_labelled_as_the_release_labels_them() -> None:
    plan = parse_plan(with_model(covariates=["smoker", "bmi"]))
    assert plan.model is not None
    assert plan.model.design_names == ("(intercept)", "smoker=false", "bmi")


@pytest.mark.parametrize(
    ("plan", "words"),
    [
        (
            with_model(covariates=["age", "weight"]),
            "manifest field plan.model.covariates[1]: 'weight' is not a variable of the plan",
        ),
        (
            with_model(covariates=["age", "sex", "arm"]),  # a stratum is not a variable
            "manifest field plan.model.covariates[2]: 'arm' is not a variable of the plan",
        ),
        (
            with_model(outcome="sex", covariates=["age", "sex"]),
            "manifest field plan.model.covariates[1]: 'sex' is the model's outcome",
        ),
        (
            with_model(covariates=["age", "sex", "age"]),
            "manifest field plan.model.covariates[2]: 'age' is listed twice",
        ),
        (with_model(covariates=[]), "manifest field plan.model.covariates: must have 1 to 32 items"),
        (with_model(covariates="age"), "manifest field plan.model.covariates: must be a JSON array"),
        (with_model(covariates=["age", 3]), "manifest field plan.model.covariates[1]: must be a string"),
        (with_model(family="probit"), "manifest field plan.model.family: must be one of ['logistic', 'cox']"),
        (with_model(family=None), "manifest field plan.model.family: must be one of ['logistic', 'cox']"),
        (with_model(outcome=""), "manifest field plan.model.outcome: must have 1 to 256 characters"),
        (with_model(outcome="died\u202e"), "manifest field plan.model.outcome: must not contain control"),
        (with_model(link="logit"), "manifest field plan.model.link: is not part of the format"),
        (dict(PLAN, model=["age"]), "manifest field plan.model: must be a JSON object"),
        # The outcome has a role of its own, as survival's columns have.
        (with_model(outcome="bmi"), "column 'bmi' is used more than once"),
        (with_model(outcome="arm"), "column 'arm' is used more than once"),
    ],
)
def test_a_bad_model_is_refused_naming_the_field(plan: dict[str, Any], words: str) -> None:
    assert words in refused(plan)


def test_a_missing_outcome_or_family_is_refused_naming_it() -> None:
    for key in ("family", "outcome", "covariates"):
        plan = copy.deepcopy(PLAN)
        del plan["model"][key]
        assert f"manifest field plan.model.{key}: is required" in refused(plan)


def test_more_than_32_covariates_are_refused() -> None:
    variables = [{"column": f"x{i}", "kind": "numeric", "bounds": [0, 1]} for i in range(MAX_COVARIATES + 1)]
    names = [v["column"] for v in variables]
    plan = {"cohort": [], "strata": [], "variables": variables}
    accepted = parse_plan(dict(plan, model={"family": "logistic", "outcome": "y", "covariates": names[:-1]}))
    assert accepted.model is not None and accepted.model.width == MAX_COVARIATES + 1
    words = refused(dict(plan, model={"family": "logistic", "outcome": "y", "covariates": names}))
    assert "manifest field plan.model.covariates: must have 1 to 32 items" in words


def test_a_design_wider_than_64_columns_is_refused() -> None:
    # 1 + 63 indicators is the widest design; one category more makes 65 columns.
    def plan(categories: int) -> dict[str, Any]:
        return {
            "cohort": [],
            "strata": [],
            "variables": [{"column": "code", "kind": "categorical", "categories": list(range(categories))}],
            "model": {"family": "logistic", "outcome": "y", "covariates": ["code"]},
        }

    widest = parse_plan(plan(MAX_DESIGN_WIDTH))
    assert widest.model is not None and widest.model.width == MAX_DESIGN_WIDTH
    words = refused(plan(MAX_DESIGN_WIDTH + 1))
    assert "manifest field plan.model.covariates: make a design of 65 columns, more than 64" in words


def test_design_column_names_are_distinct() -> None:
    plan = {
        "cohort": [],
        "strata": [],
        "variables": [
            {"column": "sex", "kind": "categorical", "categories": ["F", "M"]},
            {"column": "sex=M", "kind": "numeric", "bounds": [0, 1]},
        ],
        "model": {"family": "logistic", "outcome": "y", "covariates": ["sex", "sex=M"]},
    }
    assert "make two design columns named 'sex=M'" in refused(plan)


def test_the_release_has_three_blocks_with_their_sensitivities() -> None:
    plan = parse_plan(PLAN)
    release = layout(plan, TaskKind.DP_GLM)
    count, score, information = release.blocks
    assert [block.name for block in release.blocks] == [GLM_COUNT, GLM_SCORE, GLM_INFORMATION]
    assert count.cells == ("included", "excluded") and count.sensitivity == 1.0
    assert score.cells == ("0", "1", "2", "3", "4", "5") and score.sensitivity == 2.0  # sqrt(4)
    assert information.cells[:7] == ("0,0", "0,1", "0,2", "0,3", "0,4", "0,5", "1,1")
    assert information.cells[-1] == "5,5" and len(information.cells) == 21
    assert information.sensitivity == 1.0  # 4 / 4
    # One stratum whatever the plan's strata; its size is the included count.
    assert release.strata == 1 and release.size_cells == (0,)
    assert analysed(plan, TaskKind.DP_GLM).strata == () and analysed(plan, TaskKind.DP_DESCRIBE) == plan
    names = list(release.scalar_names())
    assert names[:3] == ["glm.count[0][0]", "glm.count[0][1]", "glm.score[0][0]"]
    assert "glm.score[0][5]" in names and "glm.information[0][20]" in names and len(names) == 2 + 6 + 21
    assert release.noise_std(score, 2.0) == pytest.approx(2.0 * math.sqrt(3) * 2.0)
    assert release.noise_std(information, 2.0) == pytest.approx(2.0 * math.sqrt(3) * 1.0)


def manifest(plan: dict[str, Any], kinds: list[str]) -> dict[str, Any]:
    return {
        "format_version": 1,
        "name": "acme/glm-study",
        "version": "1.0.0",
        "publisher": "acme",
        "description": "",
        "task_kinds": kinds,
        "plan": plan,
        "hyperparameters": {"noise_multiplier": {"min": 0.5, "max": 10}},
    }


def test_a_plan_package_with_a_model_takes_the_coefficients_for_dp_glm_only() -> None:
    parsed = parse_manifest(manifest(PLAN, ["dp_describe", "dp_glm"]))
    assert parsed.task_parameters(TaskKind.DP_GLM) == (ParameterDecl(COEFFICIENTS, (6,), "float64"),)
    assert parsed.task_parameters(TaskKind.DP_DESCRIBE) == ()
    # Derived from the signed plan, not written beside it: the manifest's JSON has no parameters.
    assert parsed.parameters == () and "parameters" not in parsed.to_json()
    assert parsed.outcome_columns == ("death_1y",)
    (decl,) = parsed.task_parameters(TaskKind.DP_GLM)
    assert decl.accepts("float64") and decl.accepts("float32")
    assert not decl.accepts("int64") and not ParameterDecl("w", (2,)).accepts("float64")
    assert served_kinds(parsed.plan) == (TaskKind.DP_DESCRIBE, TaskKind.DP_GLM)  # type: ignore[arg-type]


def test_dp_glm_needs_the_plans_model() -> None:
    no_model = {k: v for k, v in PLAN.items() if k != "model"}
    with pytest.raises(PackageRejected) as caught:
        parse_manifest(manifest(no_model, ["dp_describe", "dp_glm"]))
    assert "manifest field task_kinds[1]: dp_glm needs the plan's model (plan.model)" in str(caught.value)
    assert served_kinds(parse_plan(no_model)) == (TaskKind.DP_DESCRIBE,)
    with pytest.raises(ValueError, match=r"dp_glm needs the plan's model"):
        layout(parse_plan(no_model), TaskKind.DP_GLM)


def test_the_reviewer_reads_the_model_and_what_dp_glm_releases() -> None:
    lines = plan_lines(parse_manifest(manifest(PLAN, ["dp_describe", "dp_glm"])))
    assert (
        "  model:       logistic regression of death_1y (0 or 1) on age, sex, stage; 6 coefficients: "
        "(intercept), age, sex=M, stage=II, stage=III, stage=IV; the plan's strata are pooled"
    ) in lines
    releases = [line for line in lines if line.startswith("  releases:    dp_glm")]
    assert releases == [
        "  releases:    dp_glm: 29 numbers in 3 blocks per task, each patient in one stratum; noise SD per unit "
        "of noise_multiplier: glm.count 1.73, glm.score 3.46, glm.information 1.73"
    ]
    assert any("one task per Newton-Raphson step, each charged" in line for line in lines)


def test_the_reviewer_reads_a_cox_model_its_cap_and_what_it_releases() -> None:
    plan = copy.deepcopy(PLAN)
    plan["survival"] = {"time_column": "days", "event_column": "died", "grid": [180, 365]}
    plan["model"] = {"family": "cox", "covariates": ["age", "sex"], "max_cumulative_hazard": 1.5}
    lines = plan_lines(parse_manifest(manifest(plan, ["dp_describe", "dp_survival", "dp_glm"])))
    assert (
        "  model:       cox proportional hazards of the survival outcome, a baseline hazard per grid interval, "
        "each patient's cumulative hazard capped at 1.5 on age, sex; 4 coefficients: (baseline) [0, 180], "
        "(baseline) (180, 365], age, sex=M; the plan's strata are pooled"
    ) in lines
    releases = [line for line in lines if line.startswith("  releases:    dp_glm")]
    # Six blocks at σ·Δ·√(100/w), weights 1, 15, 30, 10, 14, 30: counts 1, baseline score
    # √(1 + 1.5²), covariates' score √2·1.5, baseline information 1.5, cross 1.5·√2, covariates'
    # information 1.5·2.
    assert releases == [
        "  releases:    dp_glm: 16 numbers in 6 blocks per task, each patient in one stratum; noise SD per unit "
        "of noise_multiplier: glm.count 10, glm.baseline.score 4.65, glm.score 3.87, glm.baseline.information "
        "4.74, glm.baseline.cross 5.67, glm.information 5.48"
    ]
