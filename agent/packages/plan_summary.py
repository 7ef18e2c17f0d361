"""A plan in words, for the hospital's reviewer: who is counted, and exactly what leaves.

``edge-agent package inspect|verify|pending`` print these lines for a plan package, so a
reviewer approving it reads the cohort, the strata, each variable with its public
bounds, the regression model and its design, and for each task kind how many numbers a
task releases and how much noise each carries per unit of the noise multiplier. Values are shown at full precision and
booleans as the release labels them; the plan format refuses characters that could make
a terminal show something else (agent.packages.json_fields.printable_field).
"""

from __future__ import annotations

from agent.packages.manifest import Manifest, TaskKind
from agent.packages.plan import CategoricalVariable, CohortFilter, FilterOp, category_label, number_label
from agent.packages.release_layout import ReleaseLayout, layout


def plan_lines(manifest: Manifest) -> list[str]:
    """Indented lines describing ``manifest``'s plan and its releases; [] for a model package."""
    plan = manifest.plan
    if plan is None:
        return []
    lines = [
        f"  cohort:      {'; '.join(_filter_words(f) for f in plan.cohort) or 'every patient'}",
        f"  strata:      {', '.join(plan.stratum_labels()) if plan.strata else '-'}",
    ]
    for variable in plan.variables:
        if isinstance(variable, CategoricalVariable):
            words = f"counts of {', '.join(category_label(c) for c in variable.categories)}, other, missing"
        else:
            bounds = f"[{number_label(variable.low)}, {number_label(variable.high)}]"
            words = f"mean and SD within {bounds} (values clamped), missing"
            if variable.bins:
                words += f", histogram of {len(variable.bins) - 1} bins"
        lines.append(f"  variable:    {variable.column}: {words}")
    if plan.survival is not None:
        survival = plan.survival
        grid = ", ".join(number_label(t) for t in survival.grid)
        lines.append(
            f"  survival:    time {survival.time_column}, event {survival.event_column}; "
            f"exits per interval up to {grid}"
        )
    if plan.model is not None:
        model = plan.model
        covariates = ", ".join(variable.column for variable in model.covariates)
        if model.outcome is not None:
            regression = f"{model.family.value} regression of {model.outcome} (0 or 1)"
        else:
            regression = (
                f"{model.family.value} proportional hazards of the survival outcome, a baseline hazard per grid "
                f"interval, each patient's cumulative hazard capped at {number_label(model.max_cumulative_hazard)}"
            )
        lines.append(
            f"  model:       {regression} on {covariates}; "
            f"{model.width} coefficients: {', '.join(model.design_names)}; the plan's strata are pooled"
        )
    if plan.weighting is not None:
        weighting = plan.weighting
        control, treated = (category_label(c) for c in weighting.treatment.categories)
        covariates = ", ".join(variable.column for variable in weighting.covariates)
        lines.append(
            f"  weighting:   by {weighting.treatment.column} (control {control}, treated {treated}); propensity: "
            f"logistic regression on {covariates}; estimand {weighting.estimand.value.upper()}; each weight cut "
            f"at {number_label(weighting.max_weight)}, so a patient moves a weighted number at most that many "
            "times an unweighted one; describe and survival are per arm"
        )
    for kind in manifest.task_kinds:
        release = layout(plan, kind)
        numbers = sum(len(block.cells) for block in release.blocks) * release.strata
        blocks = f"{len(release.blocks)} block" + ("s" if len(release.blocks) != 1 else "")
        lines.append(
            f"  releases:    {kind.value}: {numbers} numbers in {blocks} per task, each patient "
            f"in one stratum; noise SD per unit of noise_multiplier: {_noise_words(release)}"
        )
        if kind in (TaskKind.DP_GLM, TaskKind.DP_PROPENSITY):
            # What a reviewer must weigh: the coordinator chooses how many steps to run.
            whose = "the propensity model's" if kind is TaskKind.DP_PROPENSITY else "the"
            lines.append(
                f"               {kind.value}: {whose} score and information at coefficients the coordinator "
                "sends; one task per Newton-Raphson step, each charged"
            )
    return lines


def _noise_words(release: ReleaseLayout) -> str:
    shown = [f"{block.name} {release.noise_std(block, 1.0):.3g}" for block in release.blocks[:6]]
    more = len(release.blocks) - len(shown)
    return ", ".join(shown) + (f" (+{more} more blocks)" if more > 0 else "")


def _filter_words(item: CohortFilter) -> str:
    if item.op is FilterOp.NOT_NULL:
        return f"{item.column} present"
    if item.op is FilterOp.IN:
        return f"{item.column} in {{{', '.join(_value(v) for v in item.values)}}}"
    return f"{item.column} {item.op.value} {_value(item.values[0])}"


def _value(value: float | str | bool) -> str:
    if isinstance(value, str):
        return value
    return category_label(value) if isinstance(value, bool) else number_label(value)
