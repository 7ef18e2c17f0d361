"""Running a single-example graph row by row and its compiled batch, for the batching tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from agent.runtime.batched_wrapper import ROW_INPUTS, _batch_size, _checked, _load
from agent.runtime.batching import BATCH_DIM, Emitter, batch_graph
from agent.runtime.namespace import AGENT_PREFIX

Arrays = dict[str, np.ndarray]


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def output_names(graph: bytes) -> list[str]:
    return [o.name for o in onnx.load_from_string(graph).graph.output]


def row_by_row(graph: bytes, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Each output of the single-example graph, run once per row, stacked: ``[N, *shape]``."""
    session = _session(graph)
    names = output_names(graph)
    runs = [session.run(names, {**params, "x": x[i], "y": np.asarray(y[i])}) for i in range(x.shape[0])]
    return [np.stack([np.asarray(run[k]) for run in runs]) for k in range(len(names))]


def build_per_row_model(graph_onnx: bytes) -> onnx.ModelProto:
    """The agent's batched package graph alone, for the differential tests.

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


class Batched:
    """The compiled per-row model of a single-example graph, in an onnxruntime session."""

    def __init__(self, graph: bytes) -> None:
        self.model = build_per_row_model(graph)
        self.names = output_names(graph)
        self._session = _session(self.model.SerializeToString())

    def run(self, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self._session.run(self.names, {**params, "x": x, "y": y})]


def assert_rows_close(got: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float = 1e-5) -> None:
    """Row i of every output equal to the single-example result for row i, within float32
    rounding of a different accumulation order: ``rtol`` relative to the element and to
    the largest magnitude of that row's output."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape, (g.shape, e.shape)
        if not np.issubdtype(e.dtype, np.floating):
            np.testing.assert_array_equal(g, e)
            continue
        g64, e64 = g.astype(np.float64).reshape(len(g), -1), e.astype(np.float64).reshape(len(e), -1)
        finite = np.where(np.isfinite(e64), np.abs(e64), 0.0)
        scale = np.maximum(1.0, finite.max(axis=1, keepdims=True)) if finite.size else 1.0
        np.testing.assert_array_equal(np.isnan(g64), np.isnan(e64))
        same = (g64 == e64) | np.isnan(e64)
        close = np.abs(g64 - e64) <= rtol * (np.abs(e64) + scale)
        assert np.all(same | close), f"max difference {np.nanmax(np.abs(g64 - e64))}"


def assert_isolated(batched: Batched, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
    """Perturbing row j changes no other row's outputs, bit for bit, for every j."""
    base = batched.run(params, x, y)
    rng = np.random.default_rng(99)
    for j in range(x.shape[0]):
        x2, y2 = x.copy(), y.copy()
        x2[j] = x2[j] + rng.normal(size=x2[j].shape).astype(x.dtype) * 3 + 1
        if np.issubdtype(y.dtype, np.floating):
            y2[j] = y2[j] * -2 + 1
        moved = batched.run(params, x2, y2)
        others = np.arange(x.shape[0]) != j
        for before, after in zip(base, moved, strict=True):
            np.testing.assert_array_equal(before[others], after[others])
