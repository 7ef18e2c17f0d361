"""Hypothesis-generated single-example graphs over the operators the compiler batches.

Each graph is a random DAG over ``x`` ``[F]``, ``y`` (scalar), two parameters of random
static shapes and constants: element-wise, broadcasting, MatMul, reductions over random
axes (or all), Softmax, Transpose, Reshape (incl. ``-1``), Flatten, (Un)Squeeze, Concat,
Slice, Gather, Where and Shape/Size-derived constants. A node whose shapes do not fit is
dropped (ONNX shape inference decides). The compiled batch must equal the graph run row
by row, and perturbing one row must leave every other row's outputs bit-for-bit unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from agent.runtime.batching import BatchingRefused
from tests.runtime.batching_helpers import Batched, assert_isolated, assert_rows_close, row_by_row

UNARY = ("Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Softsign", "Exp", "Identity")
BINARY = ("Add", "Mul", "Sub", "Max", "Min")
REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp")
KINDS = (
    "unary", "binary", "matmul", "reduce", "softmax", "transpose", "reshape", "flatten", "unsqueeze", "squeeze",
    "concat", "slice", "gather", "where", "shape",
)  # fmt: skip


@dataclass
class Builder:
    opset: int
    inputs: list[onnx.ValueInfoProto]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    count: int = 0

    def fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def constant(self, value: np.ndarray) -> str:
        name = self.fresh()
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        return name

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "random",
            self.inputs,
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(self.shapes[o])) for o in outputs],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)

    def try_add(self, added: list[onnx.NodeProto], output: str) -> bool:
        """Appends ``added`` if ONNX infers a static float shape of at most 64 elements for ``output``."""
        candidate = self.nodes + added
        graph = helper.make_graph(candidate, "probe", self.inputs, [])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception:
            return False
        for info in inferred.graph.value_info:
            tensor = info.type.tensor_type
            if info.name == output and tensor.elem_type == TensorProto.FLOAT:
                dims = tensor.shape.dim
                if all(d.HasField("dim_value") for d in dims):
                    shape = tuple(int(d.dim_value) for d in dims)
                    if math.prod(shape) <= 64 and len(shape) <= 4:
                        self.nodes = candidate
                        self.shapes[output] = shape
                        return True
        return False


def _axes(builder: Builder, op: str, value: str, axes: list[int], keepdims: int) -> list[onnx.NodeProto]:
    out = builder.fresh()
    if op == "ReduceSum" or builder.opset >= 18:
        inputs = [value] if not axes else [value, builder.constant(np.array(axes, np.int64))]
        return [helper.make_node(op, inputs, [out], keepdims=keepdims)]
    attributes = {"axes": axes} if axes else {}
    return [helper.make_node(op, [value], [out], keepdims=keepdims, **attributes)]


@st.composite
def random_graphs(draw: st.DrawFn) -> tuple[bytes, dict[str, np.ndarray], int]:
    opset = draw(st.sampled_from([13, 17, 18]))
    features = draw(st.integers(1, 4))
    p_shape = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)))
    q_shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [features]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("p", TensorProto.FLOAT, list(p_shape)),
        helper.make_tensor_value_info("q", TensorProto.FLOAT, list(q_shape)),
    ]
    b = Builder(opset, inputs, shapes={"x": (features,), "y": (), "p": p_shape, "q": q_shape})
    for _ in range(draw(st.integers(3, 14))):
        names = sorted(b.shapes)
        a = draw(st.sampled_from(names))
        other = draw(st.sampled_from(names))
        shape = b.shapes[a]
        rank = len(shape)
        kind = draw(st.sampled_from(KINDS))
        out = b.fresh()
        added: list[onnx.NodeProto]
        if kind == "unary":
            added = [helper.make_node(draw(st.sampled_from(UNARY)), [a], [out])]
        elif kind == "binary":
            added = [helper.make_node(draw(st.sampled_from(BINARY)), [a, other], [out])]
        elif kind == "matmul":
            added = [helper.make_node("MatMul", [a, other], [out])]
        elif kind == "reduce":
            axes = (
                draw(st.lists(st.integers(-rank, rank - 1), unique_by=lambda i, r=rank: i % r, max_size=rank))
                if rank
                else []
            )
            added = _axes(b, draw(st.sampled_from(REDUCE)), a, axes, draw(st.sampled_from([0, 1])))
            out = added[-1].output[0]
        elif kind == "softmax" and rank:
            op = draw(st.sampled_from(["Softmax", "LogSoftmax"]))
            added = [helper.make_node(op, [a], [out], axis=draw(st.integers(-rank, rank - 1)))]
        elif kind == "transpose" and rank:
            perm = draw(st.permutations(list(range(rank))))
            added = [helper.make_node("Transpose", [a], [out], perm=list(perm))]
        elif kind == "reshape":
            size = math.prod(shape)
            divisors = [d for d in range(1, size + 1) if size % d == 0]
            first = draw(st.sampled_from(divisors))
            target = draw(st.sampled_from([[-1], [first, -1], [first, size // first], [size, 1, 1]]))
            added = [helper.make_node("Reshape", [a, b.constant(np.array(target, np.int64))], [out])]
        elif kind == "flatten":
            added = [helper.make_node("Flatten", [a], [out], axis=draw(st.integers(0, rank)))]
        elif kind == "unsqueeze":
            axis = draw(st.integers(-rank - 1, rank))
            added = [helper.make_node("Unsqueeze", [a, b.constant(np.array([axis], np.int64))], [out])]
        elif kind == "squeeze" and 1 in shape:
            added = [helper.make_node("Squeeze", [a], [out])]
        elif kind == "concat" and rank:
            added = [helper.make_node("Concat", [a, other], [out], axis=draw(st.integers(-rank, rank - 1)))]
        elif kind == "slice" and rank:
            axis = draw(st.integers(0, rank - 1))
            start = draw(st.integers(0, shape[axis] - 1))
            consts = [b.constant(np.array([v], np.int64)) for v in (start, shape[axis], axis)]
            added = [helper.make_node("Slice", [a, *consts], [out])]
        elif kind == "gather" and rank:
            axis = draw(st.integers(0, rank - 1))
            picks = draw(st.lists(st.integers(-shape[axis], shape[axis] - 1), min_size=1, max_size=3))
            added = [helper.make_node("Gather", [a, b.constant(np.array(picks, np.int64))], [out], axis=axis)]
        elif kind == "where":
            zero = b.constant(np.array(0.0, np.float32))
            condition = b.fresh()
            added = [
                helper.make_node("Greater", [a, zero], [condition]),
                helper.make_node("Where", [condition, a, other], [out]),
            ]
        elif kind == "shape":
            size, cast, shaped = b.fresh(), b.fresh(), b.fresh()
            added = [
                helper.make_node("Shape", [a], [shaped]),
                helper.make_node("Size", [other], [size]),
                helper.make_node("Cast", [size], [cast], to=TensorProto.FLOAT),
                helper.make_node("Mul", [a, cast], [out]),
            ]
        else:
            continue
        b.try_add(added, out)
    produced = [name for name in b.shapes if name not in ("x", "y", "p", "q")]
    if not produced:
        produced = ["x"]
        b.nodes.append(helper.make_node("Identity", ["x"], ["v0"]))
        b.shapes["v0"] = b.shapes["x"]
        produced = ["v0"]
    outputs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))
    model = b.model(outputs)
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    params = {name: rng.normal(size=b.shapes[name]).astype(np.float32) for name in ("p", "q")}
    return model.SerializeToString(), params, features


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_graphs(), rows=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_random_graphs_batch_row_by_row_and_isolated(
    case: tuple[bytes, dict[str, np.ndarray], int], rows: int, seed: int
) -> None:
    graph, params, features = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    y = rng.normal(size=rows).astype(np.float32)
    try:
        batched = Batched(graph)
    except BatchingRefused as refused:
        raise AssertionError(f"every operator drawn here has a rule; refused: {refused}") from None
    assert_rows_close(batched.run(params, x, y), row_by_row(graph, params, x, y))
    assert_isolated(batched, params, x, y)
