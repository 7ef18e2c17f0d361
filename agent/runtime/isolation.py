"""The isolation wrapper: the agent's own ONNX graph around a package's single-example graph.

A package carries a graph for *one* example. The agent never hands it a batch; it builds::

    agent::sum = Scan(over rows of agent::x, agent::y; state starts at zeros)
        body:  package graph (all names in package::*, see agent.runtime.namespace)
               -> per-example outputs -> agent-added tail -> state + tail result

For gradients the agent-added tail (:func:`_clip_tail`) reshapes every ``grad_<p>`` to
the size its parameter declares (a different size stops the run: ``Reshape`` never
broadcasts), concatenates them, and, in float64, computes the example's global L2 norm,
zeroes the whole example if any value is NaN or infinite, scales it by ``min(1, C/norm)``
and adds it to the running sum. So each example moves the sum by at most ``C`` in L2,
whatever the package computes. For eval graphs (:func:`_metric_tail`) each metric is
reshaped to one value, a non-finite value becomes 0, and the value is clamped into the
metric's declared ``[low, high]`` (a non-finite metric therefore contributes
``clamp(0, low, high)``, the range point nearest zero).

The package sees one row at a time (its ``x`` and ``y`` are the Scan's per-iteration
slices) and the parameters; nothing of the running sum, the clip norm or other rows is
nameable from inside it. The wrapper passes ``onnx.checker.check_model(full_check=True)``
before any session exists.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.packages.manifest import Manifest
from agent.runtime.contribution import bounded_metric_groups
from agent.runtime.errors import WrapperBuildError
from agent.runtime.namespace import AGENT_PREFIX, NamespacedGraph, namespaced

DOUBLE = TensorProto.DOUBLE
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64

X = AGENT_PREFIX + "x"
Y = AGENT_PREFIX + "y"
CLIP_NORM = AGENT_PREFIX + "clip_norm"
SUM = AGENT_PREFIX + "sum"
UNIT_END = AGENT_PREFIX + "unit_end"
"""With ``units=True``: bool ``[N]``, true on the last row of each privacy unit (a unit's rows are contiguous)."""


class GraphRole(StrEnum):
    GRADIENT = "grad"
    EVALUATION = "eval"


def parameter_input(name: str) -> str:
    """The wrapper input carrying parameter ``name``."""
    return f"{AGENT_PREFIX}param::{name}"


@dataclass(frozen=True)
class Slot:
    """Where one parameter (or metric) lies in the wrapper's flat output."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class WrapperLayout:
    """The flat float64 output of a wrapper, cut into named slots in manifest order."""

    role: GraphRole
    slots: tuple[Slot, ...]

    @property
    def size(self) -> int:
        return sum(slot.size for slot in self.slots)

    @staticmethod
    def of(role: GraphRole, entries: Sequence[tuple[str, tuple[int, ...]]]) -> WrapperLayout:
        slots: list[Slot] = []
        offset = 0
        for name, shape in entries:
            slots.append(Slot(name, shape, offset))
            offset += math.prod(shape)
        return WrapperLayout(role, tuple(slots))


def layout_for(manifest: Manifest, role: GraphRole) -> WrapperLayout:
    """Parameters (gradients) or metrics (evaluation), in manifest order."""
    return gradient_layout(manifest) if role is GraphRole.GRADIENT else metric_layout(manifest)


def gradient_layout(manifest: Manifest) -> WrapperLayout:
    return WrapperLayout.of(GraphRole.GRADIENT, [(p.name, p.shape) for p in manifest.parameters])


def metric_layout(manifest: Manifest) -> WrapperLayout:
    return WrapperLayout.of(GraphRole.EVALUATION, [(m.name, ()) for m in manifest.metrics])


class _Body:
    """Agent-added nodes of the Scan body, with fresh ``agent::`` names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._count = 0

    def op(self, op_type: str, *inputs: str, **attributes: Any) -> str:
        self._count += 1
        output = f"{AGENT_PREFIX}{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output

    def constant(self, value: np.ndarray) -> str:
        self._count += 1
        output = f"{AGENT_PREFIX}const_{self._count}"
        self.nodes.append(
            helper.make_node("Constant", [], [output], name=output, value=numpy_helper.from_array(value, output))
        )
        return output


def _label_type(manifest: Manifest) -> int:
    return INT64 if manifest.label.dtype == "int64" else FLOAT


def _flat_outputs(body: _Body, package: NamespacedGraph, names: Sequence[tuple[str, int]]) -> str:
    """Concatenates the package outputs ``names`` (each reshaped to exactly its declared
    size) into one float64 vector."""
    pieces: list[str] = []
    for name, size in names:
        value = package.outputs.get(name)
        if value is None:
            raise WrapperBuildError(f"the package graph has no output {name!r}")
        # Reshape to [size] fails at run time if the element count differs: a gradient of
        # shape [1] for a parameter of shape [64] stops the task instead of broadcasting.
        pieces.append(body.op("Reshape", value, body.constant(np.array([size], np.int64))))
    joined = pieces[0] if len(pieces) == 1 else body.op("Concat", *pieces, axis=0)
    # float64 from here on: squares of float32 values cannot overflow, and the norm,
    # the scale and the running sum keep ~1e-16 relative error.
    return body.op("Cast", joined, to=DOUBLE)


def _finite(body: _Body, g: str) -> tuple[str, str]:
    """``g`` and its sum of squares, or zeros and 0 where any value of ``g`` is NaN or infinite."""
    zero = body.constant(np.array(0.0, np.float64))
    squares = body.op("ReduceSumSquare", g, keepdims=0)
    # Any NaN makes the sum of squares NaN and any +-Inf makes it Inf (float64 squares of
    # finite float32 values cannot overflow), so this one test covers every element.
    bad = body.op("Or", body.op("IsNaN", squares), body.op("IsInf", squares))
    # A non-finite example becomes all zeros (Where, not a multiply: 0 * NaN is NaN).
    return body.op("Where", bad, zero, g), body.op("Where", bad, zero, squares)


def _clip(body: _Body, g: str) -> str:
    """``clip(g)``: zeros if ``g`` is not finite, else ``g`` scaled to L2 norm at most C."""
    safe, squares = _finite(body, g)
    norm = body.op("Sqrt", squares)
    # min(1, C / norm) as C / max(norm, C): exactly 1 when norm <= C, no division by 0.
    scale = body.op("Div", CLIP_NORM, body.op("Max", norm, CLIP_NORM))
    return body.op("Mul", safe, scale)


def _clip_tail(body: _Body, g: str, state_in: str) -> str:
    """``state_in + clip(g)``: the security-relevant part of the gradient wrapper."""
    return body.op("Add", state_in, _clip(body, g))


def _metric_tail(body: _Body, m: str, state_in: str, manifest: Manifest) -> str:
    """``state_in + clamp(finite(m), low, high)`` per metric."""
    zero = body.constant(np.array(0.0, np.float64))
    low = body.constant(np.array([metric.low for metric in manifest.metrics], np.float64))
    high = body.constant(np.array([metric.high for metric in manifest.metrics], np.float64))
    bad = body.op("Or", body.op("IsNaN", m), body.op("IsInf", m))
    # NaN is replaced before Max/Min, whose NaN handling is not specified by ONNX.
    finite = body.op("Where", bad, zero, m)
    clamped = body.op("Min", body.op("Max", finite, low), high)
    bounded = bounded_metric_groups(
        lambda op_type, inputs: body.op(op_type, *inputs),
        body.constant,
        clamped,
        len(manifest.metrics),
        manifest.metric_groups,
    )
    return body.op("Add", state_in, bounded)


def _unit_clip_tail(body: _Body, g: str, total_in: str, partial_in: str, end: str) -> tuple[str, str]:
    """``(total, partial)`` after one row of a unit: the row (zeros if non-finite) joins the
    unit's partial sum; on the unit's last row the partial sum is clipped like one example
    in :func:`_clip_tail` and added to the total, and the partial sum starts again at zero."""
    zero = body.constant(np.array(0.0, np.float64))
    partial = body.op("Add", partial_in, _finite(body, g)[0])
    total = body.op("Add", total_in, body.op("Where", end, _clip(body, partial), zero))
    return total, body.op("Where", end, zero, partial)


def _unit_metric_tail(body: _Body, m: str, total_in: str, end: str, manifest: Manifest) -> tuple[str, str, str]:
    """``(total, partial, count)`` after one row of a unit: the row's clamped metrics join
    the unit's partial sum (:data:`_PARTIAL_IN`) and row count (:data:`_COUNT_IN`); on the
    unit's last row the unit's mean is added to the total."""
    zero = body.constant(np.array(0.0, np.float64))
    partial = body.op("Add", _PARTIAL_IN, _metric_tail(body, m, zero, manifest))
    count = body.op("Add", _COUNT_IN, body.constant(np.array(1.0, np.float64)))
    total = body.op("Add", total_in, body.op("Where", end, body.op("Div", partial, count), zero))
    return total, body.op("Where", end, zero, partial), body.op("Where", end, zero, count)


@dataclass(frozen=True)
class _Carried:
    """A value the Scan carries from row to row besides the running sum."""

    name_in: str
    name_out: str
    size: int


def _example_tail(
    package: NamespacedGraph, manifest: Manifest, role: GraphRole, *, units: bool
) -> tuple[_Body, list[_Carried]]:
    """The agent's nodes after the package's, from its outputs to ``state_out`` (and the
    carried values' outputs)."""
    layout = layout_for(manifest, role)
    tail = _Body()
    carried: list[tuple[str, str, int]] = []
    if role is GraphRole.GRADIENT:
        flat = _flat_outputs(tail, package, [(f"grad_{slot.name}", slot.size) for slot in layout.slots])
        if units:
            result, partial = _unit_clip_tail(tail, flat, _STATE_IN, _PARTIAL_IN, _END_ROW)
            carried.append((_PARTIAL_IN, partial, layout.size))
        else:
            result = _clip_tail(tail, flat, _STATE_IN)
    else:
        flat = _flat_outputs(tail, package, [(slot.name, 1) for slot in layout.slots])
        if units:
            result, partial, count = _unit_metric_tail(tail, flat, _STATE_IN, _END_ROW, manifest)
            carried += [(_PARTIAL_IN, partial, layout.size), (_COUNT_IN, count, 1)]
        else:
            result = _metric_tail(tail, flat, _STATE_IN, manifest)
    tail.nodes.append(helper.make_node("Identity", [result], [_STATE_OUT], name=_STATE_OUT))
    values = []
    for index, (name_in, value, size) in enumerate(carried):
        name_out = f"{AGENT_PREFIX}carried_{index}"
        tail.nodes.append(helper.make_node("Identity", [value], [name_out], name=name_out))
        values.append(_Carried(name_in, name_out, size))
    return tail, values


_STATE_IN, _STATE_OUT = AGENT_PREFIX + "state_in", AGENT_PREFIX + "state_out"
_PARTIAL_IN, _COUNT_IN = AGENT_PREFIX + "partial_in", AGENT_PREFIX + "count_in"
_X_ROW, _Y_ROW, _END_ROW = AGENT_PREFIX + "x_row", AGENT_PREFIX + "y_row", AGENT_PREFIX + "end_row"


def _load(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends on hostile bytes
        raise WrapperBuildError(f"the package graph is not an ONNX model ({type(exc).__name__})") from None
    return model


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    others = [o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")]
    if len(versions) != 1 or others or len(model.functions) > 0:
        raise WrapperBuildError("the package graph must import the default ONNX domain only, once")
    return versions[0]


def build_wrapper(graph_onnx: bytes, manifest: Manifest, role: GraphRole, *, units: bool = False) -> onnx.ModelProto:
    """The checked wrapper model for the package's grad (or eval) graph.

    Inputs: ``agent::param::<p>`` (float32, declared shape) for every parameter,
    ``agent::x`` float32 ``[N, F]``, ``agent::y`` (label dtype) ``[N, *label shape]`` and,
    for gradients, ``agent::clip_norm`` float64 scalar (> 0). Output: ``agent::sum``,
    float64 ``[size of the layout]``.

    With ``units``, rows are grouped by privacy unit (input ``agent::unit_end``, see
    :data:`UNIT_END`) and the sum is over units, as :mod:`agent.runtime.contribution`
    describes: a unit's gradient rows are summed, then clipped; a unit's metrics are averaged.
    """
    package_model = _load(graph_onnx)
    opset = _default_opset(package_model)
    package = namespaced(package_model.graph)
    layout = layout_for(manifest, role)
    if layout.size == 0:
        raise WrapperBuildError("the manifest declares nothing for this graph to produce")

    # The package's declared inputs are the only package:: values the agent defines.
    feeds = {p.name: parameter_input(p.name) for p in manifest.parameters} | {"x": _X_ROW, "y": _Y_ROW}
    if set(package.inputs) != set(feeds):
        raise WrapperBuildError(
            f"the package graph's inputs {sorted(package.inputs)[:20]} differ from the manifest's {sorted(feeds)[:20]}"
        )
    head = [
        helper.make_node("Identity", [source], [package.inputs[name]], name=f"{AGENT_PREFIX}feed::{name}")
        for name, source in feeds.items()
    ]
    tail, carried = _example_tail(package, manifest, role, units=units)

    label = _label_type(manifest)
    label_shape = list(manifest.label.shape)
    row_inputs = [
        helper.make_tensor_value_info(_X_ROW, FLOAT, [manifest.num_features]),
        helper.make_tensor_value_info(_Y_ROW, label, label_shape),
    ]
    if units:
        row_inputs.append(helper.make_tensor_value_info(_END_ROW, TensorProto.BOOL, []))
    scan_body = helper.make_graph(
        [*head, *package.nodes, *tail.nodes],
        AGENT_PREFIX + "example",
        [
            helper.make_tensor_value_info(_STATE_IN, DOUBLE, [layout.size]),
            *(helper.make_tensor_value_info(value.name_in, DOUBLE, [value.size]) for value in carried),
            *row_inputs,
        ],
        [
            helper.make_tensor_value_info(_STATE_OUT, DOUBLE, [layout.size]),
            *(helper.make_tensor_value_info(value.name_out, DOUBLE, [value.size]) for value in carried),
        ],
        initializer=list(package.initializers),
    )
    initial: list[onnx.NodeProto] = []
    initializers = []
    starts: list[str] = []
    for index, size in enumerate([layout.size, *(value.size for value in carried)]):
        shape, zero = f"{AGENT_PREFIX}state_shape_{index}", f"{AGENT_PREFIX}state_zero_{index}"
        initializers.append(numpy_helper.from_array(np.array([size], np.int64), shape))
        initial.append(
            helper.make_node("ConstantOfShape", [shape], [zero], value=numpy_helper.from_array(np.zeros(1, np.float64)))
        )
        starts.append(zero)
    scanned = [X, Y, UNIT_END] if units else [X, Y]
    scan = helper.make_node(
        "Scan",
        [*starts, *scanned],
        [SUM, *(f"{AGENT_PREFIX}final_{i}" for i in range(len(carried)))],
        name=AGENT_PREFIX + "scan",
        body=scan_body,
        num_scan_inputs=len(scanned),
    )
    inputs = [helper.make_tensor_value_info(parameter_input(p.name), FLOAT, list(p.shape)) for p in manifest.parameters]
    inputs += [
        helper.make_tensor_value_info(X, FLOAT, ["N", manifest.num_features]),
        helper.make_tensor_value_info(Y, label, ["N", *label_shape]),
    ]
    if units:
        inputs.append(helper.make_tensor_value_info(UNIT_END, TensorProto.BOOL, ["N"]))
    if role is GraphRole.GRADIENT:
        inputs.append(helper.make_tensor_value_info(CLIP_NORM, DOUBLE, []))
    graph = helper.make_graph(
        [*initial, scan],
        AGENT_PREFIX + "wrapper",
        inputs,
        [helper.make_tensor_value_info(SUM, DOUBLE, [layout.size])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=max(package_model.ir_version, 7),
        producer_name="edge-agent.runtime.isolation",
    )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WrapperBuildError(f"the wrapped package graph fails onnx.checker: {first_line[:300]}") from None
    return model
