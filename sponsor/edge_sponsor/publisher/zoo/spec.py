"""What a zoo builder hands back: the graphs of one model and the facts around them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt
import onnx

FloatArray = npt.NDArray[np.float32]

InferenceBuilder = Callable[[Mapping[str, FloatArray]], onnx.ModelProto]
ParameterInitializer = Callable[[np.random.Generator], dict[str, FloatArray]]


@dataclass(frozen=True)
class ParameterSpec:
    """One trainable tensor: a graph input of the grad and eval graphs."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LabelSpec:
    """The ``y`` input of the grad and eval graphs (one example's label)."""

    dtype: str
    shape: tuple[int, ...]
    description: str


@dataclass(frozen=True, eq=False)
class ZooModel:
    """A model of the zoo: its single-example graphs and how to make parameters for it.

    ``grad_graph`` has inputs ``(*parameters, x, y)`` and outputs ``grad_<name>`` for each
    parameter (same shape) followed by ``loss`` (float32 scalar). ``eval_graph`` has the
    same inputs and one float32 scalar output per key of ``eval_metric_ranges``, each
    already clamped into its declared ``(low, high)`` range. ``x`` is float32 of shape
    ``[num_features]``; ``y`` follows ``label_spec``.

    Instances are compared by identity (ONNX protos are mutable and unhashable); treat the
    graphs as read-only.
    """

    name: str
    description: str
    num_features: int
    parameters: tuple[ParameterSpec, ...]
    label_spec: LabelSpec
    grad_graph: onnx.ModelProto = field(repr=False)
    eval_graph: onnx.ModelProto = field(repr=False)
    eval_metric_ranges: Mapping[str, tuple[float, float]]
    inference_outputs: tuple[str, ...]
    _build_inference: InferenceBuilder = field(repr=False)
    _initialize: ParameterInitializer = field(repr=False)
    eval_metric_groups: Mapping[str, str] = field(default_factory=dict)
    """The group of each eval metric that has one (``MetricDecl.group``): bounded together by the agent."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_metric_ranges", MappingProxyType(dict(self.eval_metric_ranges)))
        object.__setattr__(self, "eval_metric_groups", MappingProxyType(dict(self.eval_metric_groups)))

    def init_parameters(self, rng: np.random.Generator) -> dict[str, FloatArray]:
        """Fresh starting values, float32, keyed and shaped as ``parameters``."""
        return self._initialize(rng)

    def inference_model(self, params: Mapping[str, npt.ArrayLike]) -> onnx.ModelProto:
        """A batched inference model with ``params`` baked in as initializers.

        Input ``x`` is float32 ``[N, num_features]`` with dynamic ``N``; the outputs are
        named in ``inference_outputs``. Raises ``ValueError`` when ``params`` does not
        match ``parameters`` exactly or holds non-finite values.
        """
        return self._build_inference(self.checked_parameters(params))

    def checked_parameters(self, params: Mapping[str, npt.ArrayLike]) -> dict[str, FloatArray]:
        """``params`` as float32 arrays after checking names, shapes and finiteness."""
        expected = [spec.name for spec in self.parameters]
        if sorted(params) != sorted(expected):
            raise ValueError(f"{self.name}: expected parameters {expected}, got {sorted(params)}")
        checked: dict[str, FloatArray] = {}
        for spec in self.parameters:
            value = np.asarray(params[spec.name], dtype=np.float32)
            if value.shape != spec.shape:
                raise ValueError(f"{self.name}: parameter {spec.name!r} has shape {value.shape}, expected {spec.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{self.name}: parameter {spec.name!r} has non-finite values")
            checked[spec.name] = value
        return checked


# -- builder argument checks (raise ValueError, never assert) ----------------------------


def positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_float(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def positive_float(name: str, value: float) -> float:
    number = non_negative_float(name, value)
    if number == 0.0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def metric_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} must be a finite (low, high) with low < high, got {value!r}")
    return low, high


def zero_parameters(parameters: tuple[ParameterSpec, ...]) -> dict[str, FloatArray]:
    """All-zero float32 values for ``parameters`` (the natural start of convex models)."""
    return {spec.name: np.zeros(spec.shape, np.float32) for spec in parameters}
