"""The package manifest (format version 1): typed model, strict parser, JSON writer.

``parse_manifest`` accepts exactly the schema of ``docs/package-format.md``: unknown or
missing fields, wrong types and inconsistent declarations are refused with
``RejectionCode.MANIFEST_INVALID`` and a message naming the field (``inputs.features[2].
preprocessing.std``). ``Manifest.to_json`` gives back the JSON object; its canonical
bytes (:func:`agent.packages.canonical.canonical_json`) are what publishers sign.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.json_fields import (
    JsonObject,
    array_field,
    column_field,
    enum_field,
    fail,
    integer_field,
    number_field,
    string_field,
)
from agent.packages.plan import AnalysisPlan, parse_plan
from agent.packages.semver import SemVer

FORMAT_VERSION = 1

GRAPH_FILES: Mapping[str, str] = {"grad": "grad.onnx", "eval": "eval.onnx", "model": "model.onnx"}
"""Graph role -> archive member name (fixed by the format)."""

PUBLISHER_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MODEL_NAME_PATTERN = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?$")
IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
RESERVED_NAMES = frozenset({"x", "y", "loss"})
MAX_DESCRIPTION = 8192
MAX_FEATURES = 4096
MAX_FEATURE_WIDTH = 1_000_000
MAX_CATEGORIES = 1024
MAX_PARAMETERS = 256
# 2^28 float32 values: a 1 GiB model. What a task may use is the policy's task_memory_mb.
MAX_PARAMETER_ELEMENTS = 2**28
MAX_RANK = 8
MAX_METRICS = 256
MAX_METRIC_BOUND = 1e100
"""The largest |low| or |high| of a metric's range."""
MIN_GROUP_BOUND = 1e-100
"""The smallest bound (max(|low|, |high|)) of a metric group."""
MAX_OUTPUTS = 16
BATCH_DIM = "N"


class TaskKind(StrEnum):
    DP_GRADIENT = "dp_gradient"
    DP_LOCAL_TRAINING = "dp_local_training"
    DP_EVALUATE = "dp_evaluate"
    DP_DESCRIBE = "dp_describe"
    DP_SURVIVAL = "dp_survival"
    DP_GLM = "dp_glm"
    DP_PROPENSITY = "dp_propensity"


PLAN_KINDS = (TaskKind.DP_DESCRIBE, TaskKind.DP_SURVIVAL, TaskKind.DP_GLM, TaskKind.DP_PROPENSITY)
"""The kinds an analysis plan offers: the agent computes them itself, a plan package has no graph."""

NOISY_COUNT = "noisy_count"
"""The scalar a task with ``release_noisy_count`` releases beside its sums: the size of its
Poisson sample, in units, plus Gaussian noise of SD ``noise_multiplier``."""
DROPPED_UNITS = "dropped_units"
"""The scalar a task with ``release_dropped_units`` (dp_evaluate at ``sampling_rate`` 1 only)
releases: how many privacy units (patients where the dataset declares a unit column, rows
otherwise) had at least one row left out for a missing value (null, NaN, infinite) in a column
the package reads, plus Gaussian noise of SD ``noise_multiplier``. Noisy: it can be negative or
fractional."""
DROPPED_UNITS_CAPABILITY = "dropped-units"
"""What an agent whose dp_evaluate releases DROPPED_UNITS lists in GetInfo.capabilities (one
without it ignores the switch, as proto3 does, and charges the task without the count)."""
RELEASED_COUNTS = (NOISY_COUNT, DROPPED_UNITS)
"""Names a task's counts take among its released scalars: no metric may be named so."""

COEFFICIENTS = "coefficients"
"""The one parameter tensor of a ``dp_glm`` task: the model's coefficients β, shape ``[p]``
(``ModelSpec.width``), on the design's scale (agent.packages.plan.ModelSpec); of a
``dp_propensity`` task, the propensity model's (``WeightingSpec.propensity_model``)."""
PROPENSITY = "propensity"
"""The parameter tensor every task on a weighted plan (one with ``weighting``) sends but
``dp_propensity``: the propensity model's coefficients, from which the agent computes each
patient's weight (agent.statistics.weighting)."""


def plan_lacks(plan: AnalysisPlan, kind: TaskKind) -> str | None:
    """What ``plan`` lacks to serve the plan kind ``kind``, in words; None when it can serve it."""
    if kind is TaskKind.DP_SURVIVAL and plan.survival is None:
        return "the plan's survival outcome (plan.survival)"
    if kind is TaskKind.DP_GLM and plan.model is None:
        return "the plan's model (plan.model)"
    if kind is TaskKind.DP_PROPENSITY and plan.weighting is None:
        return "the plan's weighting (plan.weighting)"
    return None


def served_kinds(plan: AnalysisPlan) -> tuple[TaskKind, ...]:
    """The plan kinds ``plan`` can serve, in PLAN_KINDS order (what a plan package offers by default)."""
    return tuple(kind for kind in PLAN_KINDS if plan_lacks(plan, kind) is None)


class ColumnType(StrEnum):
    """Logical type the package expects of a source column."""

    FLOAT64 = "float64"
    FLOAT32 = "float32"
    INT64 = "int64"
    INT32 = "int32"
    BOOL = "bool"
    STRING = "string"

    @property
    def numeric(self) -> bool:
        return self not in (ColumnType.STRING, ColumnType.BOOL)


class LabelKind(StrEnum):
    BINARY = "binary"
    REGRESSION = "regression"
    CLASS_INDEX = "class_index"
    SURVIVAL = "survival"


HYPERPARAMETERS = ("clip_norm", "noise_multiplier", "sampling_rate", "local_steps", "learning_rate")


@dataclass(frozen=True)
class ParameterDecl:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def gradient_name(self) -> str:
        return f"grad_{self.name}"

    def accepts(self, dtype: str) -> bool:
        """Whether a task may send this tensor in ``dtype``: the declared one, or float32 where
        float64 is declared (widening is exact; narrowing would round, so float64 is never
        taken for a float32 parameter)."""
        return dtype == self.dtype or (self.dtype == "float64" and dtype == "float32")


@dataclass(frozen=True)
class NoPreprocessing:
    """The value itself, cast to float32 (bool: 1.0 / 0.0)."""

    kind: str = "none"

    @property
    def width(self) -> int:
        return 1


@dataclass(frozen=True)
class Standardise:
    """``(value - mean) / std``, in float64 then cast to float32."""

    mean: float
    std: float
    kind: str = "standardise"

    @property
    def width(self) -> int:
        return 1


@dataclass(frozen=True)
class OneHot:
    """One float32 slot per category (1.0 where equal); other values give all zeros."""

    categories: tuple[str | int | bool, ...]
    kind: str = "one_hot"

    @property
    def width(self) -> int:
        return len(self.categories)


Preprocessing = NoPreprocessing | Standardise | OneHot


@dataclass(frozen=True)
class Missing:
    """What becomes of a row whose value of a feature is missing: null, or NaN or an infinity
    in a floating column (how pandas, Spark and R often write a value that was not measured).

    The default drops the row: it feeds no graph and counts in no sum. ``impute`` keeps it:
    a numeric column (``none`` or ``standardise``) feeds ``value`` instead, in the column's own
    units, before standardisation; a one-hot column's category slots are all 0.0, and it must
    have the indicator, so that a missing value is its own category rather than the one a
    row outside the categories also gets. ``indicator`` adds one slot after the feature's,
    1.0 where the value was missing and 0.0 elsewhere.
    """

    impute: bool = False
    value: float = 0.0
    indicator: bool = False

    @property
    def drops(self) -> bool:
        return not self.impute


DROP = Missing()


@dataclass(frozen=True)
class FeatureDecl:
    column: str
    dtype: ColumnType
    preprocessing: Preprocessing
    missing: Missing = DROP

    @property
    def width(self) -> int:
        """Slots of ``x``: the preprocessing's, and one for a missing indicator."""
        return self.preprocessing.width + (1 if self.missing.indicator else 0)


@dataclass(frozen=True)
class LabelDecl:
    """The ``y`` input: ``column`` (or ``time_column`` and ``event_column`` for survival)."""

    kind: LabelKind
    dtype: str
    shape: tuple[int, ...]
    column: str | None = None
    num_classes: int | None = None
    time_column: str | None = None
    event_column: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        if self.kind is LabelKind.SURVIVAL:
            return (str(self.time_column), str(self.event_column))
        return (str(self.column),)


@dataclass(frozen=True)
class MetricDecl:
    name: str
    low: float
    high: float
    # Metrics of one group are bounded together: each example's vector of them has L2 norm
    # at most the group's bound (agent.runtime.contribution), e.g. a one-hot histogram of
    # scores, which then costs the noise of one metric instead of one per cell.
    group: str | None = None

    @property
    def bound(self) -> float:
        """``max(|low|, |high|)``: how far one example (or patient) moves this metric's sum."""
        return max(abs(self.low), abs(self.high))


@dataclass(frozen=True)
class MetricGroup:
    """Metrics bounded together: one example's values of ``members`` (indices into the
    manifest's metrics, each clamped into the group's range) are scaled to L2 norm at most ``bound``."""

    name: str
    members: tuple[int, ...]
    bound: float


@dataclass(frozen=True)
class OutputDecl:
    """An output of the inference model; ``shape[0]`` is the batch dimension ``"N"``."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class GraphRef:
    role: str
    file: str
    sha256: str
    outputs: tuple[OutputDecl, ...] = ()


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Manifest:
    name: str
    version: SemVer
    publisher: str
    description: str
    task_kinds: tuple[TaskKind, ...]
    parameters: tuple[ParameterDecl, ...]
    features: tuple[FeatureDecl, ...]
    # None in a plan package: use ``label``, which only a model package has.
    model_label: LabelDecl | None
    metrics: tuple[MetricDecl, ...]
    graphs: Mapping[str, GraphRef]
    hyperparameters: Mapping[str, Bounds]
    # A plan package's analysis plan (and then no parameters, inputs, metrics or graphs).
    plan: AnalysisPlan | None = None
    format_version: int = FORMAT_VERSION

    @property
    def label(self) -> LabelDecl:
        """The model's label; ValueError for a plan package (it feeds no graph)."""
        if self.model_label is None:
            raise ValueError(f"{self.name} is an analysis plan: it has no label")
        return self.model_label

    @property
    def num_features(self) -> int:
        """``F``: the length of the graphs' ``x`` input."""
        return sum(feature.width for feature in self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every dataset column the package reads (features, then label columns; or the plan's)."""
        if self.plan is not None:
            return self.plan.columns
        return tuple(f.column for f in self.features) + self.label.columns

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The columns a row must have a value in to be used: features whose missing values
        drop the row, and the label's (or every column of a plan's, which handles its own)."""
        if self.plan is not None:
            return self.plan.columns
        return tuple(f.column for f in self.features if f.missing.drops) + self.label.columns

    @property
    def outcome_columns(self) -> tuple[str, ...]:
        """The columns read as an outcome: the label's, or the plan's survival time and event and model outcome."""
        return self.plan.outcome_columns if self.plan is not None else self.label.columns

    @property
    def metric_groups(self) -> tuple[MetricGroup, ...]:
        """The groups of metrics bounded together, in order of their first member."""
        members: dict[str, list[int]] = {}
        for index, metric in enumerate(self.metrics):
            if metric.group is not None:
                members.setdefault(metric.group, []).append(index)
        return tuple(
            MetricGroup(name, tuple(indices), self.metrics[indices[0]].bound) for name, indices in members.items()
        )

    def metric_noise_scales(self) -> tuple[float, ...]:
        """Per metric, the standard deviation of ``dp_evaluate``'s noise on its sum per unit of
        noise multiplier σ: ``sqrt(B) · bound``, with B the number of blocks, a group or an
        ungrouped metric each. Divided by its bound, each block moves by at most 1 in L2 when a
        patient is removed, so the whole release by at most ``sqrt(B)``: noise of ``σ·sqrt(B)``
        per normalised coordinate is the Gaussian mechanism at multiplier σ."""
        blocks = len(self.metric_groups) + sum(1 for metric in self.metrics if metric.group is None)
        return tuple(math.sqrt(blocks) * metric.bound for metric in self.metrics)

    def task_parameters(self, kind: TaskKind) -> tuple[ParameterDecl, ...]:
        """The parameter tensors a task of ``kind`` sends with this package, in order.

        A model package's graphs take its ``parameters`` whatever the kind. A plan package's
        tensors are derived from the signed plan rather than declared beside it, so the two
        cannot disagree (float64; float32 accepted): ``dp_glm`` takes the model's coefficients,
        ``dp_propensity`` the propensity model's; on a weighted plan every kind but
        ``dp_propensity`` also takes the propensity model's coefficients, as ``propensity``.
        """
        plan = self.plan
        if plan is None:
            return self.parameters
        declared: tuple[ParameterDecl, ...] = ()
        if kind is TaskKind.DP_GLM and plan.model is not None:
            declared = (ParameterDecl(COEFFICIENTS, (plan.model.width,), "float64"),)
        if plan.weighting is not None:
            width = (plan.weighting.propensity_model.width,)
            if kind is TaskKind.DP_PROPENSITY:
                return (ParameterDecl(COEFFICIENTS, width, "float64"),)
            declared += (ParameterDecl(PROPENSITY, width, "float64"),)
        return declared

    def to_json(self) -> dict[str, Any]:
        """The JSON object whose canonical bytes are signed."""
        common = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version.text,
            "publisher": self.publisher,
            "description": self.description,
            "task_kinds": [kind.value for kind in self.task_kinds],
            "hyperparameters": {name: {"min": b.low, "max": b.high} for name, b in self.hyperparameters.items()},
        }
        if self.plan is not None:
            return common | {"plan": self.plan.to_json()}
        graphs: dict[str, Any] = {}
        for role, ref in self.graphs.items():
            entry: dict[str, Any] = {"file": ref.file, "sha256": ref.sha256}
            if role == "model":
                entry["outputs"] = [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape)} for o in ref.outputs]
            graphs[role] = entry
        label: dict[str, Any] = {
            "kind": self.label.kind.value,
            "dtype": self.label.dtype,
            "shape": list(self.label.shape),
        }
        if self.label.kind is LabelKind.SURVIVAL:
            label["time_column"] = self.label.time_column
            label["event_column"] = self.label.event_column
        else:
            label["column"] = self.label.column
        if self.label.kind is LabelKind.CLASS_INDEX:
            label["num_classes"] = self.label.num_classes
        return common | {
            "parameters": [{"name": p.name, "dtype": p.dtype, "shape": list(p.shape)} for p in self.parameters],
            "inputs": {
                "features": [_feature_json(f) for f in self.features],
                "label": label,
            },
            "metrics": [
                {"name": m.name, "range": [m.low, m.high]} | ({} if m.group is None else {"group": m.group})
                for m in self.metrics
            ],
            "graphs": graphs,
        }


def _feature_json(feature: FeatureDecl) -> dict[str, Any]:
    pre = feature.preprocessing
    preprocessing: dict[str, Any] = {"kind": pre.kind}
    if isinstance(pre, Standardise):
        preprocessing.update(mean=pre.mean, std=pre.std)
    elif isinstance(pre, OneHot):
        preprocessing["categories"] = list(pre.categories)
    result = {"column": feature.column, "dtype": feature.dtype.value, "preprocessing": preprocessing}
    # Absent when rows are dropped (the default): a package without it signs the same bytes.
    if feature.missing.impute and isinstance(pre, OneHot):
        result["missing"] = {"indicator": True}
    elif feature.missing.impute:
        result["missing"] = {"value": feature.missing.value, "indicator": feature.missing.indicator}
    return result


# -- parsing ---------------------------------------------------------------------------


def _shape(value: Any, field: str) -> tuple[int, ...]:
    dims = array_field(value, field, min_items=0, max_items=MAX_RANK)
    return tuple(integer_field(d, f"{field}[{i}]", 1, MAX_PARAMETER_ELEMENTS) for i, d in enumerate(dims))


def parse_manifest(value: Any) -> Manifest:
    """Validates a parsed manifest JSON object against format version 1."""
    top = JsonObject(value, "")
    version_field = top.get("format_version")
    if isinstance(version_field, bool) or version_field != FORMAT_VERSION:
        raise PackageRejected(
            RejectionCode.UNSUPPORTED_FORMAT_VERSION,
            f"manifest format_version {version_field!r} is not supported (this agent reads {FORMAT_VERSION})",
        )
    publisher = top.string("publisher", max_length=64, pattern=PUBLISHER_PATTERN)
    name = top.string("name", max_length=192)
    prefix, _, model = name.partition("/")
    if prefix != publisher or not MODEL_NAME_PATTERN.match(model):
        fail("name", f"must be '{publisher}/<model>' with <model> matching {MODEL_NAME_PATTERN.pattern}")
    try:
        version = SemVer.parse(top.string("version", max_length=64))
    except ValueError as exc:
        fail("version", str(exc))
    description = top.get("description")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        fail("description", f"must be a string of at most {MAX_DESCRIPTION} characters")

    kinds_raw = array_field(top.get("task_kinds"), "task_kinds", min_items=1, max_items=len(TaskKind))
    kinds: list[TaskKind] = []
    for index, kind in enumerate(kinds_raw):
        parsed_kind = enum_field(kind, f"task_kinds[{index}]", TaskKind)
        if parsed_kind in kinds:
            fail(f"task_kinds[{index}]", "is listed twice")
        kinds.append(parsed_kind)

    if top.has("plan"):
        return _plan_manifest(
            top, name=name, version=version, publisher=publisher, description=description, kinds=tuple(kinds)
        )
    for index, kind in enumerate(kinds):
        if kind in PLAN_KINDS:
            fail(f"task_kinds[{index}]", f"{kind.value} is offered by analysis plans (a manifest with a plan field)")
    parameters = _parameters(top.get("parameters"))
    inputs = JsonObject(top.get("inputs"), "inputs")
    features = _features(inputs.get("features"))
    label = _label(JsonObject(inputs.get("label"), "inputs.label"))
    inputs.finish()
    width = sum(f.width for f in features)
    if width > MAX_FEATURE_WIDTH:
        fail("inputs.features", f"give {width} graph features, more than {MAX_FEATURE_WIDTH}")
    used = [f.column for f in features] + list(label.columns)
    for column in used:
        if used.count(column) > 1:
            fail("inputs", f"column {column!r} is used more than once")

    metrics = _metrics(top.get("metrics"))
    graphs = _graphs(JsonObject(top.get("graphs"), "graphs"))
    if TaskKind.DP_EVALUATE in kinds and "eval" not in graphs:
        fail("task_kinds", "dp_evaluate needs an eval graph (graphs.eval)")
    if ("eval" in graphs) != bool(metrics):
        fail("metrics", "an eval graph needs at least one metric, and metrics need an eval graph")
    hyper = _hyperparameters(JsonObject(top.get("hyperparameters"), "hyperparameters"))
    top.finish()
    return Manifest(
        name=name,
        version=version,
        publisher=publisher,
        description=description,
        task_kinds=tuple(kinds),
        parameters=parameters,
        features=features,
        model_label=label,
        metrics=metrics,
        graphs=graphs,
        hyperparameters=hyper,
    )


def _plan_manifest(
    top: JsonObject, *, name: str, version: SemVer, publisher: str, description: str, kinds: tuple[TaskKind, ...]
) -> Manifest:
    """A plan package: the plan, and bounds on the one hyperparameter its kinds take (the noise multiplier)."""
    plan = parse_plan(top.get("plan"))
    for index, kind in enumerate(kinds):
        if kind not in PLAN_KINDS:
            fail(
                f"task_kinds[{index}]",
                f"an analysis plan offers only {', '.join(PLAN_KINDS)}, not {kind.value}",
            )
        lacking = plan_lacks(plan, kind)
        if lacking is not None:
            fail(f"task_kinds[{index}]", f"{kind.value} needs {lacking}")
    hyper = JsonObject(top.get("hyperparameters"), "hyperparameters")
    entry = JsonObject(hyper.get("noise_multiplier"), hyper.field("noise_multiplier"))
    low, high = entry.number("min"), entry.number("max")
    entry.finish()
    hyper.finish()
    if not 0.0 <= low <= high:
        fail(hyper.field("noise_multiplier"), "must have 0 <= min <= max")
    top.finish()
    return Manifest(
        name=name,
        version=version,
        publisher=publisher,
        description=description,
        task_kinds=kinds,
        parameters=(),
        features=(),
        model_label=None,
        metrics=(),
        graphs={},
        hyperparameters={"noise_multiplier": Bounds(low, high)},
        plan=plan,
    )


def _parameters(value: Any) -> tuple[ParameterDecl, ...]:
    items = array_field(value, "parameters", min_items=1, max_items=MAX_PARAMETERS)
    result: list[ParameterDecl] = []
    total = 0
    for index, item in enumerate(items):
        obj = JsonObject(item, f"parameters[{index}]")
        name = obj.string("name", max_length=64, pattern=IDENTIFIER_PATTERN)
        if name in RESERVED_NAMES or any(p.name == name for p in result):
            fail(obj.field("name"), f"{name!r} is reserved or used twice")
        if obj.get("dtype") != "float32":
            fail(obj.field("dtype"), "must be 'float32'")
        shape = _shape(obj.get("shape"), obj.field("shape"))
        total += math.prod(shape)
        if total > MAX_PARAMETER_ELEMENTS:
            fail("parameters", f"more than {MAX_PARAMETER_ELEMENTS} elements in total")
        obj.finish()
        result.append(ParameterDecl(name, shape))
    names = {p.name for p in result}
    for p in result:
        if p.gradient_name in names:
            fail("parameters", f"{p.gradient_name!r} would clash with the gradient of {p.name!r}")
    return tuple(result)


def _features(value: Any) -> tuple[FeatureDecl, ...]:
    items = array_field(value, "inputs.features", min_items=1, max_items=MAX_FEATURES)
    result: list[FeatureDecl] = []
    for index, item in enumerate(items):
        obj = JsonObject(item, f"inputs.features[{index}]")
        column = column_field(obj.get("column"), obj.field("column"))
        dtype = enum_field(obj.get("dtype"), obj.field("dtype"), ColumnType)
        pre = JsonObject(obj.get("preprocessing"), obj.field("preprocessing"))
        kind = pre.get("kind")
        preprocessing: Preprocessing
        if kind == "none":
            if dtype is ColumnType.STRING:
                fail(pre.field("kind"), "a string column needs one_hot")
            preprocessing = NoPreprocessing()
        elif kind == "standardise":
            if not dtype.numeric:
                fail(pre.field("kind"), "standardise needs a numeric column")
            mean = pre.number("mean")
            std = pre.number("std")
            if std <= 0.0:
                fail(pre.field("std"), "must be > 0")
            preprocessing = Standardise(mean, std)
        elif kind == "one_hot":
            preprocessing = OneHot(_categories(pre.get("categories"), pre.field("categories"), dtype))
        else:
            fail(pre.field("kind"), "must be 'none', 'standardise' or 'one_hot'")
        pre.finish()
        missing = DROP
        if obj.has("missing"):
            missing = _missing(obj.get("missing"), obj.field("missing"), dtype, preprocessing)
        obj.finish()
        result.append(FeatureDecl(column, dtype, preprocessing, missing))
    return tuple(result)


def _missing(value: Any, field: str, dtype: ColumnType, preprocessing: Preprocessing) -> Missing:
    """``{"value": V, "indicator": bool}``: impute the number V (in the column's own units) in a
    numeric column; ``{"indicator": true}``: a one-hot column's missing value is a category of
    its own (:class:`Missing`)."""
    obj = JsonObject(value, field)
    if isinstance(preprocessing, OneHot):
        if obj.has("value"):
            fail(obj.field("value"), "a one-hot column imputes no value: a missing one is its own category")
        if obj.get("indicator") is not True:
            fail(obj.field("indicator"), "must be true: a one-hot column keeps a row missing it only with an indicator")
        obj.finish()
        return Missing(True, 0.0, True)
    if not dtype.numeric:
        fail(field, "missing values can be imputed in numeric columns only (preprocessing none or standardise)")
    imputed = number_field(obj.get("value"), obj.field("value"))
    indicator = obj.get("indicator")
    if not isinstance(indicator, bool):
        fail(obj.field("indicator"), "must be true or false")
    obj.finish()
    return Missing(True, imputed, indicator)


def _categories(value: Any, field: str, dtype: ColumnType) -> tuple[str | int | bool, ...]:
    items = array_field(value, field, min_items=1, max_items=MAX_CATEGORIES)
    result: list[str | int | bool] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if dtype is ColumnType.STRING:
            result.append(string_field(item, where, max_length=256))
        elif dtype is ColumnType.BOOL:
            if not isinstance(item, bool):
                fail(where, "must be true or false")
            result.append(item)
        elif dtype in (ColumnType.INT64, ColumnType.INT32):
            result.append(integer_field(item, where, -(2**53) + 1, 2**53 - 1))
        else:
            fail(field, "one_hot needs a string, integer or bool column")
        if result[-1] in result[:-1]:
            fail(where, "is listed twice")
    return tuple(result)


_LABEL_TYPES: Mapping[LabelKind, tuple[str, tuple[int, ...]]] = {
    LabelKind.BINARY: ("float32", ()),
    LabelKind.REGRESSION: ("float32", ()),
    LabelKind.CLASS_INDEX: ("int64", ()),
    LabelKind.SURVIVAL: ("float32", (2,)),
}


def _label(obj: JsonObject) -> LabelDecl:
    kind = enum_field(obj.get("kind"), obj.field("kind"), LabelKind)
    dtype, shape = _LABEL_TYPES[kind]
    if obj.get("dtype") != dtype:
        fail(obj.field("dtype"), f"must be {dtype!r} for a {kind.value} label")
    if _shape(obj.get("shape"), obj.field("shape")) != shape:
        fail(obj.field("shape"), f"must be {list(shape)} for a {kind.value} label")
    if kind is LabelKind.SURVIVAL:
        label = LabelDecl(
            kind,
            dtype,
            shape,
            time_column=column_field(obj.get("time_column"), obj.field("time_column")),
            event_column=column_field(obj.get("event_column"), obj.field("event_column")),
        )
    else:
        classes = None
        if kind is LabelKind.CLASS_INDEX:
            classes = integer_field(obj.get("num_classes"), obj.field("num_classes"), 2, 1_000_000)
        label = LabelDecl(
            kind, dtype, shape, column=column_field(obj.get("column"), obj.field("column")), num_classes=classes
        )
    obj.finish()
    return label


def _metrics(value: Any) -> tuple[MetricDecl, ...]:
    items = array_field(value, "metrics", min_items=0, max_items=MAX_METRICS)
    result: list[MetricDecl] = []
    for index, item in enumerate(items):
        obj = JsonObject(item, f"metrics[{index}]")
        name = obj.string("name", max_length=64, pattern=IDENTIFIER_PATTERN)
        if name in ("x", "y", *RELEASED_COUNTS) or any(m.name == name for m in result):
            fail(obj.field("name"), f"{name!r} is reserved or used twice")
        bounds = array_field(obj.get("range"), obj.field("range"), min_items=2, max_items=2)
        low = number_field(bounds[0], obj.field("range") + "[0]")
        high = number_field(bounds[1], obj.field("range") + "[1]")
        if not low < high:
            fail(obj.field("range"), "must be [low, high] with low < high")
        bound = MetricDecl(name, low, high).bound
        if bound > MAX_METRIC_BOUND:
            # A sum over many patients, and its noise scale sqrt(blocks)·bound, must stay finite.
            fail(obj.field("range"), f"must lie within [-{MAX_METRIC_BOUND:g}, {MAX_METRIC_BOUND:g}]")
        group = obj.string("group", max_length=64, pattern=IDENTIFIER_PATTERN) if obj.has("group") else None
        if group is not None and bound < MIN_GROUP_BOUND:
            # The agent divides a group's values by its bound: 1 / bound must be finite and exact enough.
            fail(obj.field("range"), f"of a grouped metric must reach at least {MIN_GROUP_BOUND:g} in absolute value")
        first = next((m for m in result if group is not None and m.group == group), None)
        if first is not None and (first.low, first.high) != (low, high):
            fail(
                obj.field("range"),
                f"must equal the range of {first.name!r}, [{first.low!r}, {first.high!r}]: "
                f"the metrics of group {group!r} share one bound",
            )
        obj.finish()
        result.append(MetricDecl(name, low, high, group))
    return tuple(result)


def _graphs(obj: JsonObject) -> dict[str, GraphRef]:
    graphs: dict[str, GraphRef] = {}
    for role, file in GRAPH_FILES.items():
        if not obj.has(role):
            if role == "grad":
                fail(obj.field("grad"), "is required")
            continue
        entry = JsonObject(obj.get(role), obj.field(role))
        if entry.get("file") != file:
            fail(entry.field("file"), f"must be {file!r}")
        digest = entry.string("sha256", max_length=64, pattern=SHA256_HEX)
        outputs: tuple[OutputDecl, ...] = ()
        if role == "model":
            outputs = _outputs(entry.get("outputs"), entry.field("outputs"))
        entry.finish()
        graphs[role] = GraphRef(role, file, digest, outputs)
    obj.finish()
    return graphs


def _outputs(value: Any, field: str) -> tuple[OutputDecl, ...]:
    items = array_field(value, field, min_items=1, max_items=MAX_OUTPUTS)
    result: list[OutputDecl] = []
    for index, item in enumerate(items):
        obj = JsonObject(item, f"{field}[{index}]")
        name = obj.string("name", max_length=64, pattern=IDENTIFIER_PATTERN)
        if name == "x" or any(o.name == name for o in result):
            fail(obj.field("name"), f"{name!r} is reserved or used twice")
        dtype = obj.get("dtype")
        if dtype not in ("float32", "int64"):
            fail(obj.field("dtype"), "must be 'float32' or 'int64'")
        dims = array_field(obj.get("shape"), obj.field("shape"), min_items=1, max_items=MAX_RANK)
        if dims[0] != BATCH_DIM:
            fail(obj.field("shape") + "[0]", f"must be {BATCH_DIM!r} (the batch dimension)")
        rest = tuple(
            integer_field(d, f"{obj.field('shape')}[{i + 1}]", 1, MAX_PARAMETER_ELEMENTS)
            for i, d in enumerate(dims[1:])
        )
        obj.finish()
        result.append(OutputDecl(name, dtype, (BATCH_DIM, *rest)))
    return tuple(result)


def _hyperparameters(obj: JsonObject) -> dict[str, Bounds]:
    result: dict[str, Bounds] = {}
    for name in HYPERPARAMETERS:
        entry = JsonObject(obj.get(name), obj.field(name))
        low = entry.number("min")
        high = entry.number("max")
        entry.finish()
        if low > high:
            fail(obj.field(name), "min must be <= max")
        if name == "clip_norm" and low <= 0.0:
            fail(entry.field("min"), "must be > 0")
        if name == "noise_multiplier" and low < 0.0:
            fail(entry.field("min"), "must be >= 0")
        if name == "sampling_rate" and not (low > 0.0 and high <= 1.0):
            fail(obj.field(name), "must lie in (0, 1]")
        if name == "local_steps" and (low < 1 or not low.is_integer() or not high.is_integer()):
            fail(obj.field(name), "must be whole numbers >= 1")
        if name == "learning_rate" and low <= 0.0:
            fail(entry.field("min"), "must be > 0")
        result[name] = Bounds(low, high)
    obj.finish()
    return result
