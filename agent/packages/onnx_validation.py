"""Static validation of a package's ONNX graphs, before any onnxruntime session exists.

Every graph must:

* parse as an ONNX ``ModelProto`` of at most ``limits.max_graph_bytes``;
* use IR version and default-domain opset within the limits, and import no other
  domain (not even ``ai.onnx.ml``: no zoo model needs it, and its operators, such as
  tree ensembles and string label encoders, are outside what the agent can batch and
  bound);
* define no model-local functions;
* use only default-domain operators from :data:`ALLOWED_OPERATORS`; control flow
  (``If``, ``Loop``, ``Scan``, ``SequenceMap`` or any attribute holding a subgraph),
  random operators and string operators are never allowed;
* keep every tensor inline (no external data) and free of strings and sparse tensors;
* stay within the node-count and initializer/constant byte limits;
* declare exactly the inputs and outputs the manifest implies (names, order, element
  types and fixed shapes, see :func:`validate_graphs`); no initializer may shadow an input;
* pass ``onnx.checker.check_model(full_check=True)`` (which includes strict shape inference).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NoReturn

import onnx
from onnx import AttributeProto, TensorProto

from agent.packages.errors import PackageRejected, RejectionCode
from agent.packages.limits import PackageLimits
from agent.packages.manifest import BATCH_DIM, Manifest

ALLOWED_OPERATORS: frozenset[str] = frozenset(
    {
        # element-wise arithmetic
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Exp", "Log", "Sqrt", "Pow", "Reciprocal",
        "Sign", "Floor", "Ceil", "Round", "Erf", "Sum", "Mean", "Max", "Min", "Clip", "Mod",
        # activations
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
        "HardSwish", "Tanh", "Softplus", "Softsign", "Softmax", "LogSoftmax", "Gelu",
        # linear algebra
        "MatMul", "Gemm",
        # shapes and indexing
        "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Concat", "Split", "Slice",
        "Gather", "GatherElements", "Expand", "Tile", "Shape", "Size", "ConstantOfShape", "Range",
        # reductions
        "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare",
        "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ArgMax", "ArgMin",
        # comparison and logic
        "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "Not", "And", "Or", "Xor",
        "Where", "IsNaN", "IsInf",
        # conversions and constants
        "OneHot", "Cast", "CastLike", "Identity", "Constant",
    }
)  # fmt: skip
"""Operators of the default domain a package graph may use (any version in the opset range)."""

CONTROL_FLOW_OPERATORS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_FORBIDDEN_ELEM_TYPES = frozenset({TensorProto.STRING, TensorProto.UNDEFINED})
_SUBGRAPH_ATTRIBUTES = frozenset({AttributeProto.GRAPH, AttributeProto.GRAPHS})
_ITEM_BYTES = {"float_data": 4, "int32_data": 4, "int64_data": 8, "double_data": 8, "uint64_data": 8}
_MAX_MESSAGE = 300

Dim = int | str | None
Signature = tuple[str, int, tuple[Dim, ...]]


def _reject(code: RejectionCode, message: str) -> NoReturn:
    raise PackageRejected(code, message)


def validate_graphs(manifest: Manifest, graphs: Mapping[str, bytes], limits: PackageLimits) -> None:
    """Validates each graph of a package against the limits and the manifest.

    ``graphs`` maps role (``grad``, ``eval``, ``model``) to ONNX bytes and must hold
    exactly the roles the manifest declares.
    """
    if set(graphs) != set(manifest.graphs):
        _reject(RejectionCode.MANIFEST_INVALID, "the archive's graph files differ from manifest field graphs")
    num_features = manifest.num_features
    params: list[Signature] = [(p.name, TensorProto.FLOAT, p.shape) for p in manifest.parameters]
    label_type = TensorProto.INT64 if manifest.label.dtype == "int64" else TensorProto.FLOAT
    single_inputs = [*params, ("x", TensorProto.FLOAT, (num_features,)), ("y", label_type, manifest.label.shape)]
    for role in ("grad", "eval", "model"):
        if role not in graphs:
            continue
        model = load_checked_model(graphs[role], f"{role}.onnx", limits)
        if role == "grad":
            gradients = [(p.gradient_name, TensorProto.FLOAT, p.shape) for p in manifest.parameters]
            _check_single_example(model, "grad.onnx", single_inputs, [*gradients, ("loss", TensorProto.FLOAT, ())])
            _check_data_independent(model, "grad.onnx")
        elif role == "eval":
            metrics = [(m.name, TensorProto.FLOAT, ()) for m in manifest.metrics]
            _check_single_example(model, "eval.onnx", single_inputs, metrics)
            _check_data_independent(model, "eval.onnx")
        else:
            outputs = [
                (o.name, TensorProto.INT64 if o.dtype == "int64" else TensorProto.FLOAT, o.shape)
                for o in manifest.graphs["model"].outputs
            ]
            _check_batched(model, [("x", TensorProto.FLOAT, (BATCH_DIM, num_features))], outputs)
        _run_checker(model, f"{role}.onnx")


# Inputs that select elements: taken from data, an out-of-range value fails the run.
_INDEX_INPUTS: Mapping[str, int] = {"Gather": 1, "GatherElements": 1}
_INTEGER_TYPES = frozenset(
    {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
     TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}
)  # fmt: skip


def _check_data_independent(model: onnx.ModelProto, label: str) -> None:
    """Whether the graph runs, how long it runs and how much memory it takes must not depend on a row.

    A graph that sizes a tensor from a row's value (Range, Expand, Reshape, Tile,
    ConstantOfShape, Slice), indexes with it (Gather) or divides integers by it
    could fail or stall on chosen rows: a signal outside the noisy aggregate.
    So every value must have a static shape, indices must be constants, and
    integer division is refused.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        _reject(RejectionCode.ONNX_CHECK_FAILED, f"{label}: shape inference failed: {str(exc)[:_MAX_MESSAGE]}")
    graph = inferred.graph
    values = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        for output in node.output:
            info = values.get(output)
            tensor = info.type.tensor_type if info is not None else None
            if tensor is None or not tensor.HasField("shape") or not all(
                dim.HasField("dim_value") for dim in tensor.shape.dim
            ):
                _reject(
                    RejectionCode.DYNAMIC_SHAPE,
                    f"{label}: {node.op_type} output {output!r} has no static shape; every value of a "
                    "single-example graph must have a shape known before it runs",
                )
            if node.op_type in ("Div", "Mod") and tensor.elem_type in _INTEGER_TYPES:
                _reject(RejectionCode.DATA_DEPENDENT_INDEX, f"{label}: integer {node.op_type} is not allowed")
        index = _INDEX_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] not in constants:
            _reject(
                RejectionCode.DATA_DEPENDENT_INDEX,
                f"{label}: {node.op_type} indices {node.input[index]!r} must be constants, not computed from a row",
            )
        # Constants propagate: a node fed only by constants (or by static shapes) yields constants.
        if node.op_type in ("Constant", "Shape", "Size") or (node.input and all(i in constants for i in node.input)):
            constants.update(node.output)


def load_checked_model(data: bytes, label: str, limits: PackageLimits) -> onnx.ModelProto:
    """Parses ``data`` and applies the structural checks (not the interface or checker)."""
    if len(data) > limits.max_graph_bytes:
        _reject(RejectionCode.ONNX_TOO_LARGE, f"{label} has {len(data)} bytes, over {limits.max_graph_bytes}")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends on hostile bytes
        _reject(RejectionCode.ONNX_MALFORMED, f"{label} is not an ONNX model ({type(exc).__name__})")
    if not model.HasField("graph"):
        _reject(RejectionCode.ONNX_MALFORMED, f"{label} has no graph")
    if not limits.min_ir_version <= model.ir_version <= limits.max_ir_version:
        _reject(
            RejectionCode.OPSET_UNSUPPORTED,
            f"{label} has IR version {model.ir_version}; allowed {limits.min_ir_version}-{limits.max_ir_version}",
        )
    _check_opsets(model, label, limits)
    if len(model.functions) > 0:
        _reject(RejectionCode.FUNCTIONS_NOT_ALLOWED, f"{label} defines model-local functions")
    graph = model.graph
    if len(graph.node) > limits.max_nodes:
        _reject(RejectionCode.ONNX_TOO_LARGE, f"{label} has {len(graph.node)} nodes, over {limits.max_nodes}")
    if len(graph.sparse_initializer) > 0:
        _reject(RejectionCode.DISALLOWED_TENSOR, f"{label} has sparse initializers")
    tensor_bytes = 0
    for tensor in graph.initializer:
        tensor_bytes += _checked_tensor(tensor, label, f"initializer {tensor.name!r}")
    for node in graph.node:
        tensor_bytes += _checked_node(node, label)
    if tensor_bytes > limits.max_initializer_bytes:
        _reject(
            RejectionCode.ONNX_TOO_LARGE,
            f"{label} holds {tensor_bytes} bytes of initializers and constants, over {limits.max_initializer_bytes}",
        )
    inputs = {value.name for value in graph.input}
    for tensor in graph.initializer:
        if tensor.name in inputs:
            _reject(RejectionCode.GRAPH_INTERFACE_MISMATCH, f"{label}: initializer {tensor.name!r} shadows an input")
    return model


def _check_opsets(model: onnx.ModelProto, label: str, limits: PackageLimits) -> None:
    default_versions: list[int] = []
    for opset in model.opset_import:
        if opset.domain not in DEFAULT_DOMAINS:
            _reject(RejectionCode.CUSTOM_DOMAIN, f"{label} imports operator domain {opset.domain!r}")
        default_versions.append(opset.version)
    if len(default_versions) != 1:
        _reject(RejectionCode.OPSET_UNSUPPORTED, f"{label} must import the default domain exactly once")
    version = default_versions[0]
    if not limits.min_opset <= version <= limits.max_opset:
        _reject(
            RejectionCode.OPSET_UNSUPPORTED,
            f"{label} uses opset {version}; allowed {limits.min_opset}-{limits.max_opset}",
        )


def _checked_node(node: onnx.NodeProto, label: str) -> int:
    where = f"{label}: node {node.name or node.op_type!r} ({node.op_type})"
    if node.domain not in DEFAULT_DOMAINS:
        _reject(RejectionCode.CUSTOM_DOMAIN, f"{where} is in custom domain {node.domain!r}")
    if node.op_type in CONTROL_FLOW_OPERATORS or any(a.type in _SUBGRAPH_ATTRIBUTES for a in node.attribute):
        _reject(RejectionCode.CONTROL_FLOW, f"{where}: control flow and subgraphs are not allowed")
    if node.op_type not in ALLOWED_OPERATORS:
        _reject(RejectionCode.DISALLOWED_OPERATOR, f"{where}: operator {node.op_type!r} is not on the allow-list")
    size = 0
    for attribute in node.attribute:
        if attribute.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
            _reject(RejectionCode.DISALLOWED_TENSOR, f"{where}: sparse tensors are not allowed")
        if attribute.type == AttributeProto.TENSOR or attribute.HasField("t"):
            size += _checked_tensor(attribute.t, label, f"{where} attribute {attribute.name!r}")
        for tensor in attribute.tensors:
            size += _checked_tensor(tensor, label, f"{where} attribute {attribute.name!r}")
        if node.op_type == "Constant" and attribute.name in ("value_string", "value_strings"):
            _reject(RejectionCode.DISALLOWED_TENSOR, f"{where}: string constants are not allowed")
        if (
            node.op_type in ("Cast", "ConstantOfShape", "CastLike")
            and attribute.name == "to"
            and (attribute.i in _FORBIDDEN_ELEM_TYPES)
        ):
            _reject(RejectionCode.DISALLOWED_TENSOR, f"{where}: casts to strings are not allowed")
    return size


def _checked_tensor(tensor: TensorProto, label: str, where: str) -> int:
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
        _reject(RejectionCode.EXTERNAL_DATA, f"{label}: {where} refers to external data")
    if tensor.data_type in _FORBIDDEN_ELEM_TYPES:
        _reject(RejectionCode.DISALLOWED_TENSOR, f"{label}: {where} is a string or untyped tensor")
    size = len(tensor.raw_data) + sum(len(s) for s in tensor.string_data)
    for field, item_bytes in _ITEM_BYTES.items():
        size += item_bytes * len(getattr(tensor, field))
    return size


def _signature(value: onnx.ValueInfoProto) -> tuple[int, tuple[Dim, ...] | None] | None:
    if not value.type.HasField("tensor_type"):
        return None
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return tensor_type.elem_type, None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tensor_type.elem_type, tuple(dims)


def _type_text(elem_type: int, shape: Iterable[Dim] | None) -> str:
    name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)
    return f"{name.lower()}{list(shape) if shape is not None else '[unknown rank]'}"


def _check_names(label: str, what: str, values: Sequence[onnx.ValueInfoProto], expected: Sequence[Signature]) -> None:
    names = [v.name for v in values]
    wanted = [name for name, _, _ in expected]
    if names != wanted:
        _reject(
            RejectionCode.GRAPH_INTERFACE_MISMATCH,
            f"{label} {what} are {names[:20]}; the manifest requires {wanted[:20]} (in this order)",
        )


def _check_single_example(
    model: onnx.ModelProto, label: str, inputs: Sequence[Signature], outputs: Sequence[Signature]
) -> None:
    graph = model.graph
    _check_names(label, "inputs", graph.input, inputs)
    _check_names(label, "outputs", graph.output, outputs)
    for values, expected in ((graph.input, inputs), (graph.output, outputs)):
        for value, (name, elem_type, shape) in zip(values, expected, strict=True):
            found = _signature(value)
            wanted = _type_text(elem_type, shape)
            if found is None or found[0] != elem_type:
                _reject(RejectionCode.GRAPH_INTERFACE_MISMATCH, f"{label}: {name!r} must be {wanted}")
            if found[1] != tuple(shape):
                code = RejectionCode.GRAPH_INTERFACE_MISMATCH
                if label == "grad.onnx" and name.startswith("grad_"):
                    code = RejectionCode.GRADIENT_SHAPE_MISMATCH
                dynamic = found[1] is None or any(not isinstance(d, int) for d in found[1])
                _reject(
                    code,
                    f"{label}: {name!r} is {_type_text(found[0], found[1])}, the manifest requires {wanted}"
                    + (" (single-example graphs need fixed shapes)" if dynamic else ""),
                )


def _check_batched(model: onnx.ModelProto, inputs: Sequence[Signature], outputs: Sequence[Signature]) -> None:
    graph = model.graph
    label = "model.onnx"
    _check_names(label, "inputs", graph.input, inputs)
    _check_names(label, "outputs", graph.output, outputs)
    for values, expected in ((graph.input, inputs), (graph.output, outputs)):
        for value, (name, elem_type, shape) in zip(values, expected, strict=True):
            found = _signature(value)
            wanted = _type_text(elem_type, shape)
            if found is None or found[0] != elem_type or found[1] is None or len(found[1]) != len(shape):
                _reject(RejectionCode.GRAPH_INTERFACE_MISMATCH, f"{label}: {name!r} must be {wanted}")
            for got, want in zip(found[1], shape, strict=True):
                ok = isinstance(got, str) or got is None if want == BATCH_DIM else got == want
                if not ok:
                    _reject(
                        RejectionCode.GRAPH_INTERFACE_MISMATCH,
                        f"{label}: {name!r} is {_type_text(found[0], found[1])}, the manifest requires {wanted} "
                        f"({BATCH_DIM!r} is a dynamic batch dimension)",
                    )


def _run_checker(model: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _reject(RejectionCode.ONNX_CHECK_FAILED, f"{label} fails onnx.checker: {first_line[:_MAX_MESSAGE]}")
