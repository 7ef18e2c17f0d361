"""The analysis plan (format version 1): typed model, strict parser, JSON writer.

A plan is the declarative half of a package: what a statistics task may compute on a
hospital's dataset, and nothing else. It rides in the signed manifest as its ``plan``
field (a plan package has no graphs, parameters or inputs), so it is signed, verified,
trusted, approved and audited as a model package is. The agent, not the plan, computes
and noises every statistic (:mod:`agent.statistics`); what a task releases is derived
from the plan by :mod:`agent.packages.release_layout`.

Everything a plan declares is public: the cohort filters, the strata and their
categories, each variable's bounds, bins or categories, the survival time grid and the
regression model (its outcome column and which variables are its covariates).
The agent never looks at the data to choose them (a bound taken from the data would
leak it); values outside a variable's bounds are clamped into them, values outside
its categories are counted as "other".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.packages.json_fields import (
    JsonObject,
    array_field,
    column_field,
    enum_field,
    fail,
    integer_field,
    number_field,
    printable_field,
)

# Limits that keep a plan's release and its computation small whatever a publisher writes.
MAX_FILTERS = 16
MAX_FILTER_VALUES = 1024
MAX_STRATA_COLUMNS = 3
MAX_STRATUM_CATEGORIES = 64
MAX_STRATA = 256
MAX_VARIABLES = 64
MAX_CATEGORIES = 256
MAX_BINS = 200
MAX_GRID = 1000
# A regression model: its covariates and its coefficients (the intercept or a Cox model's
# baseline intervals, one per numeric covariate, one per non-reference category). The
# information releases at most p (p + 1) / 2 numbers: 2080 at the cap.
MAX_COVARIATES = 32
MAX_DESIGN_WIDTH = 64
# Bounds, filter values and grid times: within ±1e9, so that sums of squares over
# millions of patients stay exact enough in float64 and sensitivities stay finite.
MAX_MAGNITUDE = 1e9

# The labels a release gives the cells that no declared category fills
# (agent.packages.release_layout): reserved, so that a table's labels are distinct.
OTHER_LABEL = "(other)"
MISSING_LABEL = "(missing)"
RESERVED_LABELS = frozenset({OTHER_LABEL, MISSING_LABEL})
# The name of the design's first column (ModelSpec.design_names; a model whose columns would
# repeat a name is refused).
INTERCEPT_LABEL = "(intercept)"
# What a Cox model's baseline columns' names start with (before the interval).
BASELINE_LABEL = "(baseline)"

Category = str | int | bool
"""A public category value: a JSON string, integer or boolean."""


class FilterOp(StrEnum):
    EQ = "=="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    IN = "in"
    NOT_NULL = "not_null"


COMPARISONS = frozenset({FilterOp.LT, FilterOp.LE, FilterOp.GT, FilterOp.GE})


@dataclass(frozen=True)
class CohortFilter:
    """One condition a patient's row must meet to be in the cohort (a null never meets one)."""

    column: str
    op: FilterOp
    # == and != take one value (number, string or boolean); <, <=, >, >= a number;
    # ``in`` one or more; ``not_null`` none.
    values: tuple[float | str | bool, ...] = ()


@dataclass(frozen=True)
class Stratum:
    """A column whose declared categories split the cohort; a patient whose value is null or
    not listed is in no stratum and so not in the analysis."""

    column: str
    categories: tuple[Category, ...]


class VariableKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


@dataclass(frozen=True)
class NumericVariable:
    """A number with public bounds (values are clamped into them) and optional histogram bins.

    ``bins`` are edges from ``low`` to ``high``, strictly increasing: bin ``k`` holds
    ``edges[k] <= v < edges[k+1]``, the last bin also ``v == high``.
    """

    column: str
    low: float
    high: float
    bins: tuple[float, ...] = ()

    @property
    def centre(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def half_width(self) -> float:
        """The most a clamped value lies from the centre: the sensitivity of a centred sum."""
        return (self.high - self.low) / 2.0


@dataclass(frozen=True)
class CategoricalVariable:
    """A column whose values are counted per declared category (others as "other")."""

    column: str
    categories: tuple[Category, ...]


Variable = NumericVariable | CategoricalVariable


@dataclass(frozen=True)
class SurvivalSpec:
    """A time-to-event outcome on a public grid.

    ``grid`` holds times ``t_1 < ... < t_J`` (all > 0). A patient leaves the risk set in
    exactly one interval: ``[0, t_1]``, ``(t_{j-1}, t_j]``, or after ``t_J``; the event
    column says whether they left by the event (any non-zero value or true) or were censored.
    """

    time_column: str
    event_column: str
    grid: tuple[float, ...]

    def interval_labels(self) -> tuple[str, ...]:
        """``[0, t_1]``, ``(t_1, t_2]``, …, ``(t_{J-1}, t_J]``: the grid's intervals (the time after
        ``t_J``, which only dp_survival counts, is not among them)."""
        grid = [number_label(t) for t in self.grid]
        return (f"[0, {grid[0]}]", *(f"({grid[j - 1]}, {grid[j]}]" for j in range(1, len(grid))))


class ModelFamily(StrEnum):
    LOGISTIC = "logistic"
    """A 0/1 outcome: log odds linear in the design row, which starts with an intercept."""
    COX = "cox"
    """The plan's survival outcome: proportional hazards, with a baseline hazard constant on
    each interval of the survival grid (a piecewise-exponential model; follow-up ends at the
    grid's last time)."""


# A Cox model's default cap on one patient's cumulative hazard over their follow-up
# (ModelSpec.max_cumulative_hazard): every sensitivity of the release grows with it.
DEFAULT_MAX_CUMULATIVE_HAZARD = 2.0
MAX_CUMULATIVE_HAZARD = 1000.0
# A cap this small would round the scaled hazards by more than the margin the release keeps
# below it (at a subnormal cap each rounds to a whole subnormal step).
MIN_CUMULATIVE_HAZARD = 1e-3


@dataclass(frozen=True)
class ModelSpec:
    """A regression on some of the plan's variables (``dp_glm``): of the 0/1 ``outcome``
    (logistic), or of the plan's survival outcome (Cox).

    Each patient's **design row** (docs/statistics.md, "dp_glm"): for each covariate in
    order ``(clamp(v, low, high) - centre) / half_width`` (a numeric variable, in [-1, 1])
    or one indicator per category but the first (a categorical one; the first is the
    reference). A logistic model's row starts with 1 for the intercept; a Cox model has a
    baseline log-hazard per interval of the survival grid instead, whose columns come
    first. The bounds and categories are the variables' own, public, so one patient's row
    has a public bound on its norm; a Cox model also caps each patient's cumulative hazard
    at ``max_cumulative_hazard`` (public), so the released sums need no other clipping.
    """

    family: ModelFamily
    outcome: str | None
    """The logistic model's 0/1 column; None for Cox, whose outcome is :attr:`survival`."""
    covariates: tuple[Variable, ...]
    """The plan's variables the model uses, in model order."""
    survival: SurvivalSpec | None = None
    """Cox: the plan's survival outcome and grid; None for logistic."""
    max_cumulative_hazard: float = DEFAULT_MAX_CUMULATIVE_HAZARD
    """Cox: the most hazard one patient's follow-up may carry in the release (a larger one is
    scaled down to it); unused for logistic."""

    def __post_init__(self) -> None:
        if (self.family is ModelFamily.LOGISTIC) != (self.outcome is not None):
            raise ValueError("a logistic model has an outcome column, a Cox model none")
        if (self.family is ModelFamily.COX) != (self.survival is not None):
            raise ValueError("a Cox model has the plan's survival outcome, a logistic model none")
        if not MIN_CUMULATIVE_HAZARD <= self.max_cumulative_hazard <= MAX_CUMULATIVE_HAZARD:
            raise ValueError(f"max_cumulative_hazard must be in [{MIN_CUMULATIVE_HAZARD:g}, {MAX_CUMULATIVE_HAZARD:g}]")

    @property
    def baseline_names(self) -> tuple[str, ...]:
        """Cox: ``(baseline) <interval>`` for each interval of the grid; () for logistic."""
        if self.survival is None:
            return ()
        return tuple(f"{BASELINE_LABEL} {interval}" for interval in self.survival.interval_labels())

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """A numeric covariate's column, a categorical one's ``<column>=<category>`` for each
        category but the reference (the first)."""
        names: list[str] = []
        for variable in self.covariates:
            if isinstance(variable, CategoricalVariable):
                names += [f"{variable.column}={category_label(c)}" for c in variable.categories[1:]]
            else:
                names.append(variable.column)
        return tuple(names)

    @property
    def design_names(self) -> tuple[str, ...]:
        """The coefficients' names, in the order a task sends them: ``(intercept)`` and the
        covariates' (logistic), or the baseline intervals' and the covariates' (Cox)."""
        if self.family is ModelFamily.COX:
            return self.baseline_names + self.covariate_names
        return (INTERCEPT_LABEL, *self.covariate_names)

    @property
    def width(self) -> int:
        """``p``: the length of the coefficients a task sends (a logistic design row's, too)."""
        return len(self.design_names)

    @property
    def max_covariate_norm_squared(self) -> float:
        """The most a row of covariate columns' squared L2 norm can be: 1 per numeric covariate
        (a centred, scaled value lies in [-1, 1]) and 1 per categorical one (a patient has at
        most one of its indicators)."""
        return float(len(self.covariates))

    @property
    def max_row_norm_squared(self) -> float:
        """Logistic: the most a design row's squared L2 norm can be, the intercept's 1 included."""
        return 1.0 + self.max_covariate_norm_squared

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"family": self.family.value}
        if self.outcome is not None:
            value["outcome"] = self.outcome
        value["covariates"] = [variable.column for variable in self.covariates]
        if self.family is ModelFamily.COX:
            value["max_cumulative_hazard"] = self.max_cumulative_hazard
        return value


class Estimand(StrEnum):
    """Whose treatment effect a weighted analysis estimates (:class:`WeightingSpec`)."""

    ATE = "ate"
    """The whole cohort's: treated patients weigh 1/e(x), controls 1/(1 - e(x))."""
    ATT = "att"
    """The treated patients': they weigh 1, controls e(x)/(1 - e(x)) (an external control arm
    made to look like the trial's)."""


# A weighted plan's default cap on one patient's weight (WeightingSpec.max_weight): every
# weighted block's sensitivity is its unweighted one times the cap.
DEFAULT_MAX_WEIGHT = 10.0
MAX_WEIGHT = 1000.0


@dataclass(frozen=True)
class WeightingSpec:
    """Inverse probability of treatment weighting: which column is the treatment, the
    propensity model's covariates, the estimand and the public cap on a weight.

    ``treatment`` is a categorical variable of the plan with exactly two categories: the
    first is the control (the reference), the second the treated arm. The propensity
    ``e(x)`` is the probability of the treated arm given the covariates, a logistic model
    on their design row (:attr:`propensity_model`) whose coefficients the coordinator fits
    (``dp_propensity``) and then sends with each weighted task. Each patient's weight
    (:class:`Estimand`) is cut to ``max_weight``: public, so one patient moves a weighted sum
    by at most the cap times what they move the unweighted one.
    """

    treatment: CategoricalVariable
    covariates: tuple[Variable, ...]
    estimand: Estimand
    max_weight: float = DEFAULT_MAX_WEIGHT

    def __post_init__(self) -> None:
        if len(self.treatment.categories) != 2:
            raise ValueError("a treatment has exactly two categories: control, then treated")
        if not 1.0 <= self.max_weight <= MAX_WEIGHT:
            raise ValueError(f"max_weight must be in [1, {MAX_WEIGHT:g}]")

    @property
    def arm(self) -> Stratum:
        """The treatment as a stratum (control, then treated): weighted releases are per arm."""
        return Stratum(self.treatment.column, self.treatment.categories)

    @property
    def propensity_model(self) -> ModelSpec:
        """The logistic model of the treated arm on the covariates (its outcome is the treatment
        column, read as 0 for the control category and 1 for the treated one)."""
        return ModelSpec(ModelFamily.LOGISTIC, self.treatment.column, self.covariates)

    def to_json(self) -> dict[str, Any]:
        return {
            "treatment": self.treatment.column,
            "covariates": [variable.column for variable in self.covariates],
            "estimand": self.estimand.value,
            "max_weight": self.max_weight,
        }


@dataclass(frozen=True)
class AnalysisPlan:
    cohort: tuple[CohortFilter, ...]
    strata: tuple[Stratum, ...]
    variables: tuple[Variable, ...]
    survival: SurvivalSpec | None
    model: ModelSpec | None = None
    weighting: WeightingSpec | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every dataset column the plan reads, each once, in plan order."""
        named = [f.column for f in self.cohort] + [s.column for s in self.strata]
        named += [v.column for v in self.variables]
        named += self.outcome_columns
        return tuple(dict.fromkeys(named))

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """The columns read as an outcome (survival time and event, the model's outcome), which a
        policy may restrict."""
        named: tuple[str, ...] = ()
        if self.survival is not None:
            named += (self.survival.time_column, self.survival.event_column)
        if self.model is not None and self.model.outcome is not None:
            named += (self.model.outcome,)
        return named

    @property
    def stratum_count(self) -> int:
        """How many strata the release has: the product of the strata's category counts (1 without strata)."""
        return math.prod(len(s.categories) for s in self.strata)

    def stratum_labels(self) -> tuple[str, ...]:
        """Each stratum's name (``arm=control, sex=F``), in release order (the last column varies fastest)."""
        labels = [""]
        for stratum in self.strata:
            labels = [
                f"{prefix}, {stratum.column}={category_label(c)}" if prefix else f"{stratum.column}={category_label(c)}"
                for prefix in labels
                for c in stratum.categories
            ]
        return tuple(label or "all" for label in labels)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the manifest's ``plan`` field."""
        value: dict[str, Any] = {
            "cohort": [_filter_json(f) for f in self.cohort],
            "strata": [{"column": s.column, "categories": list(s.categories)} for s in self.strata],
            "variables": [_variable_json(v) for v in self.variables],
        }
        if self.survival is not None:
            value["survival"] = {
                "time_column": self.survival.time_column,
                "event_column": self.survival.event_column,
                "grid": list(self.survival.grid),
            }
        if self.model is not None:
            value["model"] = self.model.to_json()
        if self.weighting is not None:
            value["weighting"] = self.weighting.to_json()
        return value


def category_label(value: Category) -> str:
    """A declared category as a label (booleans as JSON writes them)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def number_label(value: float) -> str:
    """A public number (a bound, a bin edge, a grid time, a filter value) as a label: the
    shortest text that reads back as the same float, so two distinct numbers never share one."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _filter_json(item: CohortFilter) -> dict[str, Any]:
    value: dict[str, Any] = {"column": item.column, "op": item.op.value}
    if item.op is FilterOp.IN:
        value["values"] = list(item.values)
    elif item.op is not FilterOp.NOT_NULL:
        value["value"] = item.values[0]
    return value


def _variable_json(variable: Variable) -> dict[str, Any]:
    if isinstance(variable, CategoricalVariable):
        return {"column": variable.column, "kind": "categorical", "categories": list(variable.categories)}
    value: dict[str, Any] = {"column": variable.column, "kind": "numeric", "bounds": [variable.low, variable.high]}
    if variable.bins:
        value["bins"] = list(variable.bins)
    return value


# -- parsing ---------------------------------------------------------------------------


def parse_plan(value: Any, path: str = "plan") -> AnalysisPlan:
    """Validates a plan JSON object; PackageRejected (manifest_invalid) names the field at fault."""
    top = JsonObject(value, path)
    filters = array_field(top.get("cohort"), top.field("cohort"), min_items=0, max_items=MAX_FILTERS)
    cohort = tuple(_filter(item, f"{path}.cohort[{i}]") for i, item in enumerate(filters))
    strata_items = array_field(top.get("strata"), top.field("strata"), min_items=0, max_items=MAX_STRATA_COLUMNS)
    strata = tuple(_stratum(item, f"{path}.strata[{i}]") for i, item in enumerate(strata_items))
    count = math.prod(len(s.categories) for s in strata)
    if count > MAX_STRATA:
        fail(top.field("strata"), f"make {count} strata, more than {MAX_STRATA}")
    variable_items = array_field(top.get("variables"), top.field("variables"), min_items=0, max_items=MAX_VARIABLES)
    variables = tuple(_variable(item, f"{path}.variables[{i}]") for i, item in enumerate(variable_items))
    survival = _survival(top.get("survival"), top.field("survival")) if top.has("survival") else None
    model = _model(top.get("model"), top.field("model"), variables, survival) if top.has("model") else None
    weighting = _weighting(top.get("weighting"), top.field("weighting"), variables) if top.has("weighting") else None
    top.finish()
    if not variables and survival is None and not strata:
        fail(path, "declares nothing to compute: give strata, variables or survival")
    # A column is one role: a stratum, a variable or an outcome (filters may name any column;
    # the model's covariates are variables already).
    roles = [s.column for s in strata] + [v.column for v in variables]
    if survival is not None:
        roles += [survival.time_column, survival.event_column]
    if model is not None and model.outcome is not None:
        roles.append(model.outcome)
    for column in roles:
        if roles.count(column) > 1:
            fail(path, f"column {column!r} is used more than once among strata, variables, survival and model outcome")
    return AnalysisPlan(cohort, strata, variables, survival, model, weighting)


def _bounded(value: Any, field: str) -> float:
    number = number_field(value, field)
    if abs(number) > MAX_MAGNITUDE:
        fail(field, f"must be within ±{MAX_MAGNITUDE:g}")
    return number


def _scalar(value: Any, field: str) -> float | str | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return printable_field(value, field)
    return _bounded(value, field)


def _filter(value: Any, path: str) -> CohortFilter:
    obj = JsonObject(value, path)
    column = column_field(obj.get("column"), obj.field("column"))
    op = enum_field(obj.get("op"), obj.field("op"), FilterOp)
    values: tuple[float | str | bool, ...] = ()
    if op is FilterOp.IN:
        items = array_field(obj.get("values"), obj.field("values"), min_items=1, max_items=MAX_FILTER_VALUES)
        values = tuple(_scalar(item, f"{obj.field('values')}[{i}]") for i, item in enumerate(items))
        if len({type(v) for v in values}) > 1:
            fail(obj.field("values"), "must all be numbers, all strings or all booleans")
    elif op in COMPARISONS:
        values = (_bounded(obj.get("value"), obj.field("value")),)
    elif op is not FilterOp.NOT_NULL:
        values = (_scalar(obj.get("value"), obj.field("value")),)
    obj.finish()
    return CohortFilter(column, op, values)


def _categories(value: Any, field: str, limit: int) -> tuple[Category, ...]:
    items = array_field(value, field, min_items=1, max_items=limit)
    result: list[Category] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if isinstance(item, bool):
            result.append(item)
        elif isinstance(item, int):
            result.append(integer_field(item, where, -(2**53) + 1, 2**53 - 1))
        elif isinstance(item, str):
            result.append(printable_field(item, where))
            if item in RESERVED_LABELS:
                fail(where, f"{item!r} labels the cells no declared category fills; name the category otherwise")
        else:
            fail(where, "must be a string, an integer or a boolean")
        if any(type(result[-1]) is type(other) and result[-1] == other for other in result[:-1]):
            fail(where, "is listed twice")
    if len({type(c) for c in result}) > 1:
        fail(field, "must all be strings, all integers or all booleans")
    return tuple(result)


def _stratum(value: Any, path: str) -> Stratum:
    obj = JsonObject(value, path)
    column = column_field(obj.get("column"), obj.field("column"))
    categories = _categories(obj.get("categories"), obj.field("categories"), MAX_STRATUM_CATEGORIES)
    obj.finish()
    return Stratum(column, categories)


def _increasing(values: Sequence[float], field: str) -> None:
    for index in range(1, len(values)):
        if not values[index] > values[index - 1]:
            fail(f"{field}[{index}]", "must be greater than the value before it")


# The release's noise is σ times a sensitivity computed from the bounds (half the width, its
# square); the values it covers are centred on (low + high) / 2 and, for a model, divided by
# half the width. Bounds closer than this make those numbers round to nothing, or to denormal
# floats with a few bits of precision, where the noise no longer hides one patient (or a
# division by zero fails a task on one patient's value): they are refused.
MIN_WIDTH_RELATIVE = 1e-12
MIN_WIDTH = 1e-150


def _wide_enough(low: float, high: float) -> bool:
    width = high - low
    return width >= MIN_WIDTH and width >= MIN_WIDTH_RELATIVE * max(abs(low), abs(high))


def _variable(value: Any, path: str) -> Variable:
    obj = JsonObject(value, path)
    column = column_field(obj.get("column"), obj.field("column"))
    kind = enum_field(obj.get("kind"), obj.field("kind"), VariableKind)
    if kind is VariableKind.CATEGORICAL:
        categories = _categories(obj.get("categories"), obj.field("categories"), MAX_CATEGORIES)
        obj.finish()
        return CategoricalVariable(column, categories)
    bounds_field = obj.field("bounds")
    bounds = array_field(obj.get("bounds"), bounds_field, min_items=2, max_items=2)
    low, high = (_bounded(b, f"{bounds_field}[{i}]") for i, b in enumerate(bounds))
    if not low < high:
        fail(bounds_field, "must be [low, high] with low < high")
    if not _wide_enough(low, high):
        fail(
            bounds_field,
            f"[{low!r}, {high!r}] are too close: high - low must be at least {MIN_WIDTH_RELATIVE:g} of their "
            f"magnitude and at least {MIN_WIDTH:g}",
        )
    bins: tuple[float, ...] = ()
    if obj.has("bins"):
        bins_field = obj.field("bins")
        edges = array_field(obj.get("bins"), bins_field, min_items=2, max_items=MAX_BINS + 1)
        bins = tuple(_bounded(e, f"{bins_field}[{i}]") for i, e in enumerate(edges))
        _increasing(bins, bins_field)
        if bins[0] != low or bins[-1] != high:
            fail(bins_field, f"must start at the lower bound {low:g} and end at the upper bound {high:g}")
    obj.finish()
    return NumericVariable(column, low, high, bins)


def _survival(value: Any, path: str) -> SurvivalSpec:
    obj = JsonObject(value, path)
    time_column = column_field(obj.get("time_column"), obj.field("time_column"))
    event_column = column_field(obj.get("event_column"), obj.field("event_column"))
    if time_column == event_column:
        fail(obj.field("event_column"), "must differ from time_column")
    grid_field = obj.field("grid")
    grid = tuple(
        _bounded(t, f"{grid_field}[{i}]")
        for i, t in enumerate(array_field(obj.get("grid"), grid_field, min_items=1, max_items=MAX_GRID))
    )
    if grid[0] <= 0:
        fail(f"{grid_field}[0]", "must be greater than 0 (the first interval starts at time 0)")
    _increasing(grid, grid_field)
    obj.finish()
    return SurvivalSpec(time_column, event_column, grid)


def _declared_covariates(
    value: Any, field: str, variables: Sequence[Variable], outcome: str | None
) -> tuple[Variable, ...]:
    """The plan variables a model's ``covariates`` array names, in its order (each once, not the outcome)."""
    items = array_field(value, field, min_items=1, max_items=MAX_COVARIATES)
    declared = {variable.column: variable for variable in variables}
    covariates: list[Variable] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        column = column_field(item, where)
        if column == outcome:
            fail(where, f"{column!r} is the model's outcome; an outcome cannot be its own covariate")
        if column not in declared:
            # The bounds or categories that make a design row bounded are the variable's.
            fail(where, f"{column!r} is not a variable of the plan; declare it in plan.variables")
        if any(other.column == column for other in covariates):
            fail(where, f"{column!r} is listed twice")
        covariates.append(declared[column])
    return tuple(covariates)


def _check_design(model: ModelSpec, field: str) -> None:
    """Refuses a design wider than MAX_DESIGN_WIDTH, or with two columns of one name."""
    if model.width > MAX_DESIGN_WIDTH:
        fail(
            field,
            f"make a design of {model.width} columns, more than {MAX_DESIGN_WIDTH}; use fewer covariates or categories"
            + (" or survival grid times" if model.family is ModelFamily.COX else ""),
        )
    names = model.design_names
    for name in names:
        # Reports name each coefficient by its column: a numeric column called "sex=F" next to
        # sex's category F would make two coefficients indistinguishable.
        if names.count(name) > 1:
            fail(field, f"make two design columns named {name!r}; rename a column or category")


def _weighting(value: Any, path: str, variables: Sequence[Variable]) -> WeightingSpec:
    obj = JsonObject(value, path)
    treatment_field = obj.field("treatment")
    column = column_field(obj.get("treatment"), treatment_field)
    treatment = next((variable for variable in variables if variable.column == column), None)
    if treatment is None:
        fail(treatment_field, f"{column!r} is not a variable of the plan; declare it in plan.variables")
    if not isinstance(treatment, CategoricalVariable) or len(treatment.categories) != 2:
        fail(
            treatment_field,
            f"{column!r} is not binary: the treatment must be a categorical variable with exactly two "
            "categories (the control first, then the treated arm)",
        )
    estimand = enum_field(obj.get("estimand"), obj.field("estimand"), Estimand)
    max_weight = DEFAULT_MAX_WEIGHT
    if obj.has("max_weight"):
        weight_field = obj.field("max_weight")
        max_weight = number_field(obj.get("max_weight"), weight_field)
        if not 1.0 <= max_weight <= MAX_WEIGHT:
            fail(weight_field, f"must be at least 1 and at most {MAX_WEIGHT:g}")
    covariates_field = obj.field("covariates")
    covariates = _declared_covariates(obj.get("covariates"), covariates_field, variables, column)
    obj.finish()
    weighting = WeightingSpec(treatment, covariates, estimand, max_weight)
    _check_design(weighting.propensity_model, covariates_field)
    return weighting


def _model(value: Any, path: str, variables: Sequence[Variable], survival: SurvivalSpec | None) -> ModelSpec:
    obj = JsonObject(value, path)
    family = enum_field(obj.get("family"), obj.field("family"), ModelFamily)
    outcome: str | None = None
    cox_survival: SurvivalSpec | None = None
    max_hazard = DEFAULT_MAX_CUMULATIVE_HAZARD
    if family is ModelFamily.LOGISTIC:
        outcome = column_field(obj.get("outcome"), obj.field("outcome"))
    else:
        if obj.has("outcome"):
            fail(obj.field("outcome"), "a cox model's outcome is the plan's survival (time and event): remove it")
        if survival is None:
            fail(obj.field("family"), "cox needs the plan's survival outcome: declare plan.survival")
        cox_survival = survival
        if obj.has("max_cumulative_hazard"):
            hazard_field = obj.field("max_cumulative_hazard")
            max_hazard = number_field(obj.get("max_cumulative_hazard"), hazard_field)
            if not MIN_CUMULATIVE_HAZARD <= max_hazard <= MAX_CUMULATIVE_HAZARD:
                fail(hazard_field, f"must be at least {MIN_CUMULATIVE_HAZARD:g} and at most {MAX_CUMULATIVE_HAZARD:g}")
    field = obj.field("covariates")
    covariates = _declared_covariates(obj.get("covariates"), field, variables, outcome)
    obj.finish()
    model = ModelSpec(family, outcome, covariates, cox_survival, max_hazard)
    if family is ModelFamily.COX and not model.covariate_names:
        # A hazard ratio needs a column to be the ratio of (a one-category covariate makes none).
        fail(field, "make no design column for a covariate (a categorical covariate needs two or more categories)")
    _check_design(model, field)
    return model
