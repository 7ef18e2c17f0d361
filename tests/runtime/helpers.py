"""Manifests, data and NumPy references for the runtime tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from agent.runtime.rows import DEFAULT_BATCH_SIZE, RowBatch
from edge_sponsor.publisher.packaging import FeatureColumn, complete_manifest, zoo_graphs, zoo_manifest_fields
from edge_sponsor.publisher.zoo import (
    ZooModel,
    build_linear_regression,
    build_logistic_regression,
    build_mlp_classifier,
    build_weibull_survival,
)

Arrays = dict[str, np.ndarray]


def manifest_for(model: ZooModel, graphs: dict[str, bytes] | None = None) -> Manifest:
    features = [FeatureColumn(f"f{i}", "float64") for i in range(model.num_features)]
    labels = ("time", "event") if model.label_spec.shape == (2,) else ("label",)
    fields = zoo_manifest_fields(
        model, name="acme/test-model", version="1.0.0", publisher="acme", features=features, label_columns=labels
    )
    manifest = complete_manifest(fields, graphs or zoo_graphs(model))
    return parse_manifest(parse_strict_json(canonical_json(manifest)))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], ZooModel]
    draw_labels: Callable[[np.random.Generator, int], np.ndarray]


def _binary(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n).astype(np.float32)


def _regression(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.normal(size=n) * 3).astype(np.float32)


def _classes(k: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.integers(0, k, n).astype(np.int64)


def _survival(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([np.exp(rng.normal(size=n)), rng.integers(0, 2, n)], axis=1).astype(np.float32)


CASES = (
    Case("logistic", lambda: build_logistic_regression(4, l2=0.01), _binary),
    Case("linear", lambda: build_linear_regression(4), _regression),
    Case("mlp_tanh", lambda: build_mlp_classifier(5, (8, 6), 3, activation="tanh"), _classes(3)),
    Case("mlp_30_64_64_2", lambda: build_mlp_classifier(30, (64, 64), 2), _classes(2)),
    Case("weibull", lambda: build_weibull_survival(3, l2=0.01), _survival),
)


def data_for(case: Case, model: ZooModel, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = (rng.normal(size=(n, model.num_features)) * 2).astype(np.float32)
    return x, case.draw_labels(rng, n)


def random_parameters(model: ZooModel, rng: np.random.Generator) -> Arrays:
    return {p.name: rng.normal(0.0, 0.5, p.shape).astype(np.float32) for p in model.parameters}


def per_example_outputs(graph: bytes, params: Arrays, x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Runs the package graph itself once per row: ``[n, sum of output sizes]`` float64."""
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    rows = []
    for i in range(x.shape[0]):
        outputs = session.run(list(names), {**params, "x": x[i], "y": np.asarray(y[i])})
        rows.append(np.concatenate([np.asarray(o, np.float64).reshape(-1) for o in outputs]))
    return np.array(rows)


def clipped_sum_reference(per_example: np.ndarray, clip_norm: float) -> np.ndarray:
    """Zero non-finite examples, scale each to L2 norm <= C, sum (float64)."""
    total = np.zeros(per_example.shape[1])
    for g in per_example:
        with np.errstate(over="ignore", invalid="ignore"):
            norm = float(np.sqrt(np.sum(g * g)))
        if not np.isfinite(norm):
            continue
        total += g * min(1.0, clip_norm / norm) if norm > 0 else g
    return total


def metric_sum_reference(per_example: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    values = np.where(np.isfinite(per_example), per_example, 0.0)
    low = np.array([r[0] for r in ranges])
    high = np.array([r[1] for r in ranges])
    return np.clip(values, low, high).sum(axis=0)


# -- hand-written (possibly hostile) graphs for a manifest with w [F], b [] -----------------

F = 4


def hostile_manifest() -> Manifest:
    return manifest_for(build_logistic_regression(F))


def single_example_graph(
    nodes: Sequence[onnx.NodeProto],
    *,
    outputs: Sequence[tuple[str, Sequence[int]]] = (("grad_w", (F,)), ("grad_b", ()), ("loss", ())),
    check: bool = True,
    opset: int = 17,
) -> bytes:
    """A grad graph with the logistic interface (w, b, x, y) and the given nodes."""
    graph = helper.make_graph(
        list(nodes),
        "hostile",
        [
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [F]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [F]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype), name))


def node(op: str, inputs: Sequence[str], output: str, **attributes: Any) -> onnx.NodeProto:
    return helper.make_node(op, list(inputs), [output], **attributes)


def zero_loss() -> list[onnx.NodeProto]:
    return [const("loss", 0.0)]


def hostile_params(rng: np.random.Generator) -> Arrays:
    return {"w": rng.normal(size=F).astype(np.float32), "b": np.array(rng.normal(), np.float32)}


class ArrayRowSource:
    """Rows already preprocessed in memory, served in batches (the agent reads datasets: agent.runtime.rows)."""

    def __init__(self, x: npt.NDArray[np.float32], y: npt.NDArray[Any], *, batch_size: int = DEFAULT_BATCH_SIZE):
        self._whole = RowBatch(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y))
        self._batch_size = batch_size

    def batches(self) -> Iterator[RowBatch]:
        for start in range(0, self._whole.size, self._batch_size):
            end = start + self._batch_size
            yield RowBatch(self._whole.x[start:end], self._whole.y[start:end])


def int64_constant(name: str, values: list[int]) -> onnx.NodeProto:
    return const(name, values, np.int64)


def outer_gradient_graph(scale: float) -> bytes:
    """A gradient graph for the MLP 5-(8, 6)-3: grad_W1 = outer(x, v) with
    v = scale * [x, x[:3]] (the compiled batch takes it as its factors and never
    materialises it), grad_b1 = v, and every other gradient the (row-independent)
    parameter itself."""
    model = build_mlp_classifier(5, (8, 6), 3, activation="tanh")
    params = [(p.name, list(p.shape)) for p in model.parameters]
    nodes = [
        int64_constant("a0", [0]),
        int64_constant("a1", [1]),
        int64_constant("st", [0]),
        int64_constant("en", [3]),
        const("k", scale),
        node("Slice", ["x", "st", "en"], "head"),
        node("Concat", ["x", "head"], "xx", axis=0),
        node("Mul", ["xx", "k"], "v"),
        node("Unsqueeze", ["x", "a1"], "col"),
        node("Unsqueeze", ["v", "a0"], "row"),
        node("MatMul", ["col", "row"], "outer"),
        node("Identity", ["outer"], "grad_W1"),
        node("Identity", ["v"], "grad_b1"),
        *(node("Identity", [name], f"grad_{name}") for name, _ in params if name not in ("W1", "b1")),
        const("loss", 0.0),
    ]
    graph = helper.make_graph(
        nodes,
        "outer",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in params]
        + [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [5]),
            helper.make_tensor_value_info("y", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(f"grad_{name}", TensorProto.FLOAT, shape) for name, shape in params]
        + [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
