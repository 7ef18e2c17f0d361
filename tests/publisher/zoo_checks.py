"""Shared checks for the model-zoo tests: sessions, finite differences, float64 graphs.

Independent float64 NumPy references of each loss live in the per-model test modules;
this module only knows generic things about graphs and gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from edge_sponsor.publisher.zoo import ZooModel

# The operator allow-list of the brief; every zoo graph must stay inside it.
ALLOWED_OPS = frozenset(
    {
        "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Neg", "Exp", "Log", "Sigmoid",
        "Relu", "Tanh", "Softmax", "LogSoftmax", "Reshape", "Transpose", "Unsqueeze",
        "Squeeze", "ReduceSum", "ReduceMean", "Where", "Greater", "Less", "Cast", "Abs",
        "Pow", "Sqrt", "Clip", "Max", "Min", "Identity", "Constant", "OneHot", "Concat",
        "Expand", "Shape", "Floor", "Equal",
    }
)  # fmt: skip

FD_STEP = 1e-6
GRADIENT_TOLERANCE = 1e-4

Arrays = dict[str, np.ndarray]


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: Mapping[str, Any]) -> Arrays:
    names = [output.name for output in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def as_float32(arrays: Mapping[str, Any]) -> Arrays:
    return {name: np.asarray(value, dtype=np.float32) for name, value in arrays.items()}


def as_float64(arrays: Mapping[str, Any]) -> Arrays:
    return {name: np.asarray(value, dtype=np.float64) for name, value in arrays.items()}


def random_parameters(model: ZooModel, rng: np.random.Generator, scale: float = 0.5) -> Arrays:
    return {
        spec.name: rng.normal(0.0, scale, spec.shape).astype(np.float32)
        for spec in model.parameters
    }


def central_differences(loss: Callable[[Arrays], float], params: Arrays) -> Arrays:
    """Central finite differences of ``loss`` with step ``FD_STEP`` in every coordinate."""
    gradients: Arrays = {}
    for name, value in params.items():
        gradient = np.zeros(value.shape, dtype=np.float64)
        for index in np.ndindex(value.shape):
            shifted = {key: array.copy() for key, array in params.items()}
            shifted[name][index] = value[index] + FD_STEP
            upper = loss(shifted)
            shifted[name][index] = value[index] - FD_STEP
            lower = loss(shifted)
            gradient[index] = (upper - lower) / (2 * FD_STEP)
        gradients[name] = gradient
    return gradients


def relative_error(
    gradients: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], floor: float = 1e-8
) -> float:
    """``||g - g_ref|| / max(||g_ref||, floor)`` over all parameters at once."""
    names = sorted(reference)
    got = np.concatenate([np.ravel(np.asarray(gradients[n], np.float64)) for n in names])
    want = np.concatenate([np.ravel(np.asarray(reference[n], np.float64)) for n in names])
    return float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), floor))


def graph_gradients(model: ZooModel, outputs: Mapping[str, np.ndarray]) -> Arrays:
    return {spec.name: outputs[f"grad_{spec.name}"] for spec in model.parameters}


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph computing in float64: float tensors, constants and casts retyped."""
    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    graph = converted.graph
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            array = numpy_helper.to_array(tensor).astype(np.float64)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    for node in graph.node:
        for attribute in node.attribute:
            is_float = attribute.t.data_type == TensorProto.FLOAT
            if node.op_type == "Constant" and attribute.name == "value" and is_float:
                array = numpy_helper.to_array(attribute.t).astype(np.float64)
                attribute.t.CopyFrom(numpy_helper.from_array(array, attribute.t.name))
            float_cast = attribute.name == "to" and attribute.i == TensorProto.FLOAT
            if node.op_type == "Cast" and float_cast:
                attribute.i = TensorProto.DOUBLE
    onnx.checker.check_model(converted, full_check=True)
    return converted


def check_against_reference(
    model: ZooModel,
    grad_session: ort.InferenceSession,
    params: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    reference_loss: Callable[[Arrays, np.ndarray, np.ndarray], float],
    floor: float = 1e-8,
) -> float:
    """Compares the float32 grad graph with a float64 NumPy loss and its finite differences.

    Asserts finite outputs, a loss matching the reference and a norm-wise relative gradient
    error (denominator at least ``floor``) below ``GRADIENT_TOLERANCE``; returns that error.
    """
    params32 = as_float32(params)
    x32 = np.asarray(x, np.float32)
    outputs = run(grad_session, {**params32, "x": x32, "y": y})
    assert all(np.all(np.isfinite(value)) for value in outputs.values()), outputs
    # The reference sees exactly the float32 values the graph saw.
    params64 = as_float64(params32)
    x64 = x32.astype(np.float64)
    y64 = y.astype(np.float64) if y.dtype == np.float32 else y
    expected_loss = reference_loss(params64, x64, y64)
    assert float(outputs["loss"]) == pytest.approx(expected_loss, rel=2e-5, abs=2e-5)
    finite = central_differences(lambda p: reference_loss(p, x64, y64), params64)
    error = relative_error(graph_gradients(model, outputs), finite, floor)
    assert error < GRADIENT_TOLERANCE, (error, outputs, finite)
    return error


def assert_metrics_in_ranges(model: ZooModel, metrics: Mapping[str, np.ndarray]) -> None:
    assert list(metrics) == list(model.eval_metric_ranges)
    for name, (low, high) in model.eval_metric_ranges.items():
        value = metrics[name]
        assert value.shape == () and value.dtype == np.float32, name
        assert np.isfinite(value) and low <= float(value) <= high, (name, value, low, high)
