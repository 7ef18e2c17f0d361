"""The analysis-plan format: what a plan may declare, and the hostile plans it may not.

Every refusal names the field at fault, as the manifest's do; a plan read back from its
JSON is the same plan (property-tested); the release layout follows from the plan.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.errors import PackageInputError, PackageRejected, RejectionCode
from agent.packages.manifest import PLAN_KINDS, TaskKind, parse_manifest, plan_lacks
from agent.packages.plan import MAX_BINS, MAX_GRID, MAX_STRATA, AnalysisPlan, parse_plan
from agent.packages.release_layout import SURVIVAL_EXITS, layout
from agent.tasks.kinds import registry

PLAN: dict[str, Any] = {
    "cohort": [{"column": "age", "op": ">=", "value": 18}, {"column": "stage", "op": "in", "values": ["II", "III"]}],
    "strata": [{"column": "arm", "categories": ["control", "treatment"]}, {"column": "sex", "categories": ["F", "M"]}],
    "variables": [
        {"column": "age", "kind": "numeric", "bounds": [18, 100], "bins": [18, 40, 60, 80, 100]},
        {"column": "smoker", "kind": "categorical", "categories": [True, False]},
    ],
    "survival": {"time_column": "months", "event_column": "died", "grid": [6, 12, 24]},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """PLAN with the field at ``path`` (dots and [i]) set to ``value``, or deleted when ``value`` is ...."""
    plan = copy.deepcopy(PLAN)
    *parents, last = path.replace("[", ".").replace("]", "").split(".")
    node: Any = plan
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return plan


def refused(plan: Any) -> str:
    with pytest.raises(PackageRejected) as caught:
        parse_plan(plan)
    assert caught.value.code is RejectionCode.MANIFEST_INVALID
    return str(caught.value)


def test_a_plan_reads_and_writes_back() -> None:
    plan = parse_plan(PLAN)
    assert plan.columns == ("age", "stage", "arm", "sex", "smoker", "months", "died")
    assert plan.outcome_columns == ("months", "died")
    assert plan.stratum_count == 4
    assert plan.stratum_labels() == (
        "arm=control, sex=F",
        "arm=control, sex=M",
        "arm=treatment, sex=F",
        "arm=treatment, sex=M",
    )
    assert parse_plan(parse_strict_json(canonical_json(plan.to_json()))) == plan


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("variables[0].bounds", [0, 1e300], "plan.variables[0].bounds[1]: must be within ±1e+09"),
        ("variables[0].bounds", [5, 5], "plan.variables[0].bounds: must be [low, high] with low < high"),
        # Half a width that rounds to 0 (0/0 would fail a task on one patient's value) or to a
        # denormal (the noise's few bits of precision would not hide a patient): refused.
        ("variables[0].bounds", [0, 5e-324], "plan.variables[0].bounds: [0.0, 5e-324] are too close"),
        ("variables[0].bounds", [-1e-160, 1e-160], "are too close: high - low must be at least"),
        ("variables[0].bounds", [1e6, 1e6 + 1e-7], "are too close"),
        ("variables[0].bins", list(range(18, 18 + MAX_BINS + 2)), "plan.variables[0].bins: must have 2 to 201"),
        ("variables[0].bins", [18, 50, 40, 100], "plan.variables[0].bins[2]: must be greater"),
        ("variables[0].bins", [20, 60, 100], "must start at the lower bound 18"),
        ("variables[0].kind", "text", "plan.variables[0].kind: must be one of"),
        ("variables[1].categories", ["a", 1], "must all be strings, all integers or all booleans"),
        ("variables[1].categories", [True, True], "plan.variables[1].categories[1]: is listed twice"),
        ("variables[1].categories", [1.5], "must be a string, an integer or a boolean"),
        ("variables[1].categories", ["yes", "(other)"], "plan.variables[1].categories[1]: '(other)' labels the cells"),
        # Characters that would make the reviewer's terminal show another plan than the signed one.
        ("cohort[1].values", ["II", "F\r  cohort:      every patient"], "plan.cohort[1].values[1]: must not contain"),
        ("variables[1].categories", ["a\x1b[1A\x1b[2K"], "plan.variables[1].categories[0]: must not contain"),
        ("strata[0].categories", ["control\u202e"], "plan.strata[0].categories[0]: must not contain"),
        ("survival.grid", [0, 12], "plan.survival.grid[0]: must be greater than 0"),
        ("survival.grid", [12, 6], "plan.survival.grid[1]: must be greater than the value before it"),
        ("survival.grid", [float(t) for t in range(1, MAX_GRID + 2)], "plan.survival.grid: must have 1 to 1000"),
        ("survival.event_column", "months", "must differ from time_column"),
        ("cohort[0].op", "like", "plan.cohort[0].op: must be one of"),
        ("cohort[0].value", "eighteen", "plan.cohort[0].value: must be a number"),
        ("cohort[1].values", ["II", 3], "plan.cohort[1].values: must all be numbers, all strings or all booleans"),
        ("strata[0].categories", [f"c{i}" for i in range(65)], "plan.strata[0].categories: must have 1 to 64"),
        ("variables[0].column", "arm", "column 'arm' is used more than once"),
        ("survival.time_column", "age", "column 'age' is used more than once"),
        ("variables[0].unknown", 1, "plan.variables[0].unknown: is not part of the format"),
        ("cohort", ..., "plan.cohort: is required"),
    ],
)
def test_hostile_and_malformed_plans_are_refused_naming_the_field(path: str, value: Any, words: str) -> None:
    assert words in refused(changed(path, value))


def test_strata_that_would_isolate_patients_are_capped() -> None:
    # Three columns of 64 categories each would make 262,144 strata: tiny cells by design.
    strata = [{"column": f"s{i}", "categories": list(range(64))} for i in range(3)]
    assert f"more than {MAX_STRATA}" in refused(dict(PLAN, strata=strata))


def test_a_plan_must_ask_for_something() -> None:
    assert "declares nothing to compute" in refused({"cohort": [], "strata": [], "variables": []})


def test_the_release_gives_each_patient_one_cell_per_block() -> None:
    plan = parse_plan(PLAN)
    describe = layout(plan, TaskKind.DP_DESCRIBE)
    names = [block.name for block in describe.blocks]
    assert names == ["count", "age.n", "age.sum", "age.sumsq", "age.histogram", "smoker.counts"]
    assert describe.block("age.sum").sensitivity == 41.0  # half of [18, 100]
    assert describe.block("age.sumsq").sensitivity == 41.0**2
    assert describe.block("smoker.counts").cells == ("true", "false", "(other)", "(missing)")
    # k blocks: each number's noise is sigma * sqrt(k) * sensitivity.
    assert describe.noise_std(describe.block("count"), 2.0) == pytest.approx(2.0 * 6**0.5)
    survival = layout(plan, TaskKind.DP_SURVIVAL)
    (exits,) = survival.blocks
    assert exits.name == SURVIVAL_EXITS and exits.sensitivity == 1.0
    assert exits.cells[:2] == ("[0, 6] event", "[0, 6] censored") and exits.cells[-1] == "(missing)"
    assert len(exits.cells) == 2 * 4 + 1
    assert len(list(survival.scalar_names())) == 4 * 9


def test_every_table_s_labels_are_distinct() -> None:
    # Edges that ":g" would both print as "1", and a category spelled like the reserved cells.
    plan = parse_plan(
        {
            "cohort": [],
            "strata": [],
            "variables": [
                {"column": "x", "kind": "numeric", "bounds": [1, 2], "bins": [1, 1.0000001, 1.0000002, 2]},
                {"column": "c", "kind": "categorical", "categories": ["other", "missing", "Other"]},
            ],
        }
    )
    for block in layout(plan, TaskKind.DP_DESCRIBE).blocks:
        assert len(set(block.cells)) == len(block.cells), block.cells
    histogram = layout(plan, TaskKind.DP_DESCRIBE).block("x.histogram")
    assert histogram.cells == ("[1, 1.0000001)", "[1.0000001, 1.0000002)", "[1.0000002, 2]")


def test_the_plan_kinds_are_the_registry_s_graphless_kinds() -> None:
    assert {kind.value for kind in PLAN_KINDS} == set(registry.plan_kinds())


def manifest(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "format_version": 1,
        "name": "acme/study",
        "version": "1.0.0",
        "publisher": "acme",
        "description": "",
        "task_kinds": ["dp_describe", "dp_survival"],
        "plan": PLAN,
        "hyperparameters": {"noise_multiplier": {"min": 0.5, "max": 10}},
    }
    value.update(changes)
    return {k: v for k, v in value.items() if v is not ...}


def test_a_plan_manifest_has_no_graph_and_offers_only_plan_kinds() -> None:
    parsed = parse_manifest(manifest())
    assert parsed.plan == parse_plan(PLAN) and parsed.graphs == {} and parsed.parameters == ()
    assert parsed.columns == parse_plan(PLAN).columns and parsed.outcome_columns == ("months", "died")
    assert parse_manifest(parse_strict_json(canonical_json(parsed.to_json()))) == parsed
    with pytest.raises(ValueError, match="analysis plan"):
        _ = parsed.label
    for changes, words in (
        ({"task_kinds": ["dp_gradient"]}, "an analysis plan offers only dp_describe, dp_survival"),
        ({"plan": dict(PLAN, survival="months")}, "plan.survival: must be a JSON object"),
        ({"graphs": {}}, "graphs: is not part of the format"),
        ({"hyperparameters": {"clip_norm": {"min": 1, "max": 2}}}, "hyperparameters.noise_multiplier: is required"),
    ):
        with pytest.raises(PackageRejected) as caught:
            parse_manifest(manifest(**changes))
        assert words in str(caught.value)
    no_survival = {k: v for k, v in PLAN.items() if k != "survival"}
    with pytest.raises(PackageRejected, match="dp_survival needs the plan's survival outcome"):
        parse_manifest(manifest(plan=no_survival))


def test_a_model_manifest_may_not_offer_plan_kinds() -> None:
    from tests.packages.package_builders import logistic, manifest_and_graphs

    fields, _ = manifest_and_graphs(logistic())
    fields = dict(fields, task_kinds=[TaskKind.DP_DESCRIBE.value])
    with pytest.raises(PackageRejected, match="dp_describe is offered by analysis plans"):
        parse_manifest(fields)


PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Zl", "Zp", "Cs"))


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    columns = iter(f"c{i}" for i in range(100))
    strata = [
        {
            "column": next(columns),
            "categories": draw(
                st.lists(st.text(PRINTABLE, min_size=1, max_size=4), min_size=1, max_size=4, unique=True)
            ),
        }
        for _ in range(draw(st.integers(0, 2)))
    ]
    variables: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            low = draw(st.floats(-1e6, 1e6, allow_nan=False))
            high = low + draw(st.floats(1e-3, 1e6, allow_nan=False))
            entry: dict[str, Any] = {"column": next(columns), "kind": "numeric", "bounds": [low, high]}
            if draw(st.booleans()) and high - low > 1e-2:
                entry["bins"] = [low, (low + high) / 2, high]
            variables.append(entry)
        else:
            categories = draw(st.lists(st.integers(-50, 50), min_size=1, max_size=6, unique=True))
            variables.append({"column": next(columns), "kind": "categorical", "categories": categories})
    plan: dict[str, Any] = {"cohort": [{"column": "c99", "op": "not_null"}], "strata": strata, "variables": variables}
    if draw(st.booleans()) or not (strata or variables):
        grid = sorted(set(draw(st.lists(st.floats(0.5, 1e4, allow_nan=False), min_size=1, max_size=8))))
        plan["survival"] = {"time_column": next(columns), "event_column": next(columns), "grid": grid}
    if variables and draw(st.booleans()):
        covariates = draw(st.lists(st.sampled_from([v["column"] for v in variables]), min_size=1, unique=True))
        plan["model"] = {"family": "logistic", "outcome": next(columns), "covariates": covariates}
    return plan


@given(plans())
@settings(max_examples=60, deadline=None)
def test_every_valid_plan_round_trips_and_its_layout_is_consistent(raw: dict[str, Any]) -> None:
    plan: AnalysisPlan = parse_plan(raw)
    assert parse_plan(parse_strict_json(canonical_json(plan.to_json()))) == plan
    for kind in PLAN_KINDS:
        lacking = plan_lacks(plan, kind)
        if lacking is not None:
            with pytest.raises(ValueError, match=re.escape(lacking)):
                layout(plan, kind)
            continue
        release = layout(plan, kind)
        names = list(release.scalar_names())
        assert len(names) == len(set(names)) == release.strata * sum(len(b.cells) for b in release.blocks)
        assert all(block.sensitivity > 0 for block in release.blocks)


def test_a_plan_whose_release_would_not_fit_is_refused_before_anything_is_charged() -> None:
    """18 strata by a 1000-point grid: 36,054 numbers, more than a task's result header holds.
    Refused when the package is built and when it is uploaded (verified), not charged and lost."""
    from agent.packages.limits import PackageLimits
    from agent.packages.verification import verify_package
    from edge_sponsor.publisher.packaging import assemble_package
    from edge_sponsor.publisher.plans import build_plan_package, plan_manifest_fields
    from tests.packages.package_builders import new_key, trust_for

    wide = dict(
        PLAN,
        strata=[{"column": "arm", "categories": ["a", "b", "c"]}, {"column": "sex", "categories": list("ABCDEF")}],
        survival={"time_column": "months", "event_column": "died", "grid": [float(t) for t in range(1, 1001)]},
    )
    fields = plan_manifest_fields(wide, name="acme/wide", version="1.0.0", publisher="acme")
    with pytest.raises(PackageInputError, match=r"a dp_survival task would release 36054 numbers"):
        build_plan_package(fields)
    key = new_key()
    archive = assemble_package(fields, {}, [key])
    with pytest.raises(PackageRejected, match="use fewer strata, categories, bins or grid times") as caught:
        verify_package(archive, trust_for(key), PackageLimits(), dt.datetime.now(dt.UTC))
    assert caught.value.code is RejectionCode.MANIFEST_INVALID
    # The largest release that fits still builds: 3 strata by the same grid.
    narrow = dict(wide, strata=[{"column": "arm", "categories": ["a", "b", "c"]}])
    build_plan_package(plan_manifest_fields(narrow, name="acme/narrow", version="1.0.0", publisher="acme"))
