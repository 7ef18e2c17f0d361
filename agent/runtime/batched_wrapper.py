"""The batched wrapper: the agent's compiled batch of a single-example graph plus its clipping.

Same interface as the ``Scan`` wrapper (:func:`agent.runtime.isolation.build_wrapper`):
inputs ``agent::param::<p>``, ``agent::x`` ``[N, F]``, ``agent::y`` ``[N, *label]``
(and ``agent::clip_norm``), output ``agent::sum`` float64 ``[layout size]``; the same
numbers up to float rounding. Instead of a ``Scan`` it contains the package graph
rewritten by :func:`agent.runtime.batching.batch_graph` (row i of every value depends
only on row i), followed by the agent's tail on the ``[N, P]`` per-example results:

* gradients: per row, in float64, the global L2 norm over all parameters; a row with
  any NaN or infinity becomes zeros; each row scaled by ``C / max(norm, C)``; the rows
  summed (the only operation across rows, and it is the agent's);
* metrics: per row and metric, non-finite becomes 0, then clamped into ``[low, high]``;
  summed over rows.

A graph the compiler cannot batch raises :class:`~agent.runtime.batching.BatchingRefused`
(the session layer then builds the ``Scan`` wrapper).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.packages.manifest import Manifest
from agent.runtime.batching import BATCH_DIM, BatchedGraph, BatchingRefused, Emitter, batch_graph, check_layout
from agent.runtime.errors import WrapperBuildError
from agent.runtime.isolation import CLIP_NORM, SUM, GraphRole, X, Y, layout_for, parameter_input
from agent.runtime.namespace import AGENT_PREFIX

DOUBLE = TensorProto.DOUBLE
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
ROW_INPUTS = frozenset({"x", "y"})


def _load(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends on hostile bytes
        raise WrapperBuildError(f"the package graph is not an ONNX model ({type(exc).__name__})") from None
    return model


def _batch_size(emitter: Emitter, x: str) -> list[onnx.NodeProto]:
    """Nodes defining ``emitter.batch_size`` = ``Shape(x)[0:1]`` (placed before everything)."""
    shape, zero, one = (AGENT_PREFIX + name for name in ("rows_shape", "rows_start", "rows_end"))
    return [
        helper.make_node("Shape", [x], [shape], name=shape),
        helper.make_node("Constant", [], [zero], name=zero, value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Constant", [], [one], name=one, value=numpy_helper.from_array(np.array([1], np.int64))),
        helper.make_node("Slice", [shape, zero, one], [emitter.batch_size], name=emitter.batch_size),
    ]


def _reduce(emitter: Emitter, op: str, value: str, axes: list[int], keepdims: int) -> str:
    """A reduction in the attribute or input form the opset requires."""
    if emitter.opset >= (13 if op == "ReduceSum" else 18):
        return emitter.op(op, [value, emitter.ints(axes)], keepdims=keepdims)
    return emitter.op(op, [value], axes=axes, keepdims=keepdims)


def _rows(emitter: Emitter, batched: BatchedGraph, name: str, size: int) -> str:
    """Package output ``name`` as ``[N, size]`` (an unbatched output is copied into every row)."""
    value = batched.outputs.get(name)
    if value is None:
        raise WrapperBuildError(f"the package graph has no output {name!r}")
    if math.prod(batched.output_shapes[name]) != size:
        # The Scan wrapper fails such a graph at run time; keep that behaviour there.
        raise BatchingRefused(f"output {name!r} does not have {size} elements")
    if name in batched.batched_outputs:
        return emitter.op("Reshape", [value, emitter.ints([0, size])])
    flat = emitter.op("Reshape", [value, emitter.ints([1, size])])
    return emitter.op("Expand", [flat, emitter.op("Concat", [emitter.batch_size, emitter.ints([size])], axis=0)])


def _flat_rows(emitter: Emitter, batched: BatchedGraph, names: Iterable[tuple[str, int]]) -> str:
    pieces = [_rows(emitter, batched, name, size) for name, size in names]
    joined = pieces[0] if len(pieces) == 1 else emitter.op("Concat", pieces, axis=1)
    # float64 from here on, as in the Scan wrapper.
    return emitter.op("Cast", [joined], to=DOUBLE)


def _clip_rows(emitter: Emitter, g: str) -> str:
    """``sum_i clip(g_i)`` over the rows of ``g`` ``[N, P]``: the security-relevant tail."""
    zero = emitter.constant(np.array(0.0, np.float64))
    squares = _reduce(emitter, "ReduceSumSquare", g, [1], keepdims=1)  # [N, 1], one per row
    # NaN or +-Inf anywhere in a row makes its sum of squares NaN or Inf.
    bad = emitter.op("Or", [emitter.op("IsNaN", [squares]), emitter.op("IsInf", [squares])])
    safe = emitter.op("Where", [bad, zero, g])  # Where, not a multiply: 0 * NaN is NaN
    norm = emitter.op("Sqrt", [emitter.op("Where", [bad, zero, squares])])
    scale = emitter.op("Div", [CLIP_NORM, emitter.op("Max", [norm, CLIP_NORM])])  # min(1, C / norm)
    return _reduce(emitter, "ReduceSum", emitter.op("Mul", [safe, scale]), [0], keepdims=0)


def _metric_rows(emitter: Emitter, m: str, manifest: Manifest) -> str:
    zero = emitter.constant(np.array(0.0, np.float64))
    low = emitter.constant(np.array([metric.low for metric in manifest.metrics], np.float64))
    high = emitter.constant(np.array([metric.high for metric in manifest.metrics], np.float64))
    bad = emitter.op("Or", [emitter.op("IsNaN", [m]), emitter.op("IsInf", [m])])
    finite = emitter.op("Where", [bad, zero, m])
    clamped = emitter.op("Min", [emitter.op("Max", [finite, low]), high])
    return _reduce(emitter, "ReduceSum", clamped, [0], keepdims=0)


def _checked(model: onnx.ModelProto, batched: BatchedGraph) -> onnx.ModelProto:
    check_layout(model, batched.layout)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BatchingRefused(f"the batched graph fails onnx.checker: {first_line[:300]}") from None
    return model


def build_batched_wrapper(graph_onnx: bytes, manifest: Manifest, role: GraphRole) -> onnx.ModelProto:
    """The checked batched wrapper for the package's grad (or eval) graph.

    Raises :class:`BatchingRefused` when the compiler cannot batch the graph, and
    :class:`WrapperBuildError` when the graph does not fit the manifest at all.
    """
    package_model = _load(graph_onnx)
    layout = layout_for(manifest, role)
    if layout.size == 0:
        raise WrapperBuildError("the manifest declares nothing for this graph to produce")
    feeds = {p.name: parameter_input(p.name) for p in manifest.parameters} | {"x": X, "y": Y}
    declared = {value.name for value in package_model.graph.input}
    if declared != set(feeds):
        raise WrapperBuildError(f"the package graph's inputs {sorted(declared)[:20]} differ from the manifest's")
    emitter = Emitter(0, AGENT_PREFIX + "rows", AGENT_PREFIX + "tail::")
    batched = batch_graph(package_model, ROW_INPUTS, emitter.batch_size)
    emitter.opset = batched.opset
    head = _batch_size(emitter, X)
    head += [
        helper.make_node("Identity", [source], [batched.inputs[name]], name=f"{AGENT_PREFIX}feed::{name}")
        for name, source in feeds.items()
    ]
    if role is GraphRole.GRADIENT:
        flat = _flat_rows(emitter, batched, [(f"grad_{slot.name}", slot.size) for slot in layout.slots])
        result = _clip_rows(emitter, flat)
    else:
        flat = _flat_rows(emitter, batched, [(slot.name, 1) for slot in layout.slots])
        result = _metric_rows(emitter, flat, manifest)
    emitter.op("Identity", [result], SUM)

    label = INT64 if manifest.label.dtype == "int64" else FLOAT
    inputs = [helper.make_tensor_value_info(parameter_input(p.name), FLOAT, list(p.shape)) for p in manifest.parameters]
    inputs += [
        helper.make_tensor_value_info(X, FLOAT, [BATCH_DIM, manifest.num_features]),
        helper.make_tensor_value_info(Y, label, [BATCH_DIM, *manifest.label.shape]),
    ]
    if role is GraphRole.GRADIENT:
        inputs.append(helper.make_tensor_value_info(CLIP_NORM, DOUBLE, []))
    graph = helper.make_graph(
        [*head, *batched.nodes, *emitter.nodes],
        AGENT_PREFIX + "batched_wrapper",
        inputs,
        [helper.make_tensor_value_info(SUM, DOUBLE, [layout.size])],
        initializer=list(batched.initializers),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", batched.opset)],
        ir_version=max(package_model.ir_version, 7),
        producer_name="edge-agent.runtime.batched_wrapper",
    )
    return _checked(model, batched)


def build_per_row_model(graph_onnx: bytes) -> onnx.ModelProto:
    """The batched package graph alone, for differential tests and inspection.

    Inputs: the package's own, with ``x`` and ``y`` given a leading batch axis. Outputs:
    the package's, each ``[N, *shape]`` (an unbatched output copied into every row), so
    that row i can be compared with the single-example graph run on row i.
    """
    package_model = _load(graph_onnx)
    emitter = Emitter(0, AGENT_PREFIX + "rows", AGENT_PREFIX + "tail::")
    batched = batch_graph(package_model, ROW_INPUTS, emitter.batch_size)
    emitter.opset = batched.opset
    head = _batch_size(emitter, "x")
    inputs: list[onnx.ValueInfoProto] = []
    for value in package_model.graph.input:
        tensor = value.type.tensor_type
        dims: list[int | str] = [d.dim_value for d in tensor.shape.dim]
        if value.name in ROW_INPUTS:
            dims.insert(0, BATCH_DIM)
        inputs.append(helper.make_tensor_value_info(value.name, tensor.elem_type, dims))
        head.append(helper.make_node("Identity", [value.name], [batched.inputs[value.name]]))
    outputs: list[onnx.ValueInfoProto] = []
    for value in package_model.graph.output:
        name, shape = value.name, batched.output_shapes[value.name]
        source = batched.outputs[name]
        if name not in batched.batched_outputs:
            target = emitter.op("Concat", [emitter.batch_size, emitter.ints(shape)], axis=0)
            source = emitter.op("Expand", [emitter.op("Unsqueeze", [source, emitter.ints([0])]), target])
        emitter.op("Identity", [source], name)
        outputs.append(helper.make_tensor_value_info(name, value.type.tensor_type.elem_type, [BATCH_DIM, *shape]))
    graph = helper.make_graph(
        [*head, *batched.nodes, *emitter.nodes],
        AGENT_PREFIX + "per_row",
        inputs,
        outputs,
        initializer=list(batched.initializers),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", batched.opset)], ir_version=max(package_model.ir_version, 7)
    )
    return _checked(model, batched)
