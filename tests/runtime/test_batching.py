"""The batching compiler: differential against the single-example graph, row isolation, refusals.

* every zoo graph (grad and eval): row i of the compiled batch equals the single-example
  graph run on row i, perturbing one row changes no other row, and the batched wrapper's
  clipped sums equal the Scan wrapper's;
* hostile graphs that would mix rows if batched naively: compiled to a row-isolated
  graph (checked by perturbation and against the single-example result) or refused;
* refusals make ``AUTO`` fall back to Scan with the reason logged.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.packages.manifest import Manifest
from agent.runtime.batched_wrapper import build_batched_wrapper
from agent.runtime.batching import RULES, BatchingRefused
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo.mlp import build_mlp_classifier
from tests.runtime.batching_helpers import Batched, assert_isolated, assert_rows_close, row_by_row
from tests.runtime.helpers import (
    CASES,
    Case,
    F,
    const,
    data_for,
    hostile_manifest,
    hostile_params,
    manifest_for,
    node,
    outer_gradient_graph,
    random_parameters,
    single_example_graph,
    zero_loss,
)

ROWS = 11


@pytest.mark.parametrize("role", ["grad", "eval"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_zoo_graphs_batch_row_by_row_and_isolated(case: Case, role: str) -> None:
    rng = np.random.default_rng(11)
    model = case.build()
    graph = zoo_graphs(model)[role]
    params = random_parameters(model, rng)
    x, y = data_for(case, model, rng, ROWS)
    batched = Batched(graph)
    assert_rows_close(batched.run(params, x, y), row_by_row(graph, params, x, y))
    assert_isolated(batched, params, x, y)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_zoo_batched_sums_equal_scan_sums(case: Case) -> None:
    rng = np.random.default_rng(12)
    model = case.build()
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    params = random_parameters(model, rng)
    x, y = data_for(case, model, rng, 600)  # more than one batched run (256 rows each)
    for role, graph, clip in ((GraphRole.GRADIENT, graphs["grad"], 0.8), (GraphRole.EVALUATION, graphs["eval"], None)):
        scan = CompiledWrapper(graph, manifest, role, mode=RuntimeMode.SCAN)
        fast = CompiledWrapper(graph, manifest, role, mode=RuntimeMode.BATCHED)
        assert fast.mode is RuntimeMode.BATCHED and fast.fallback_reason is None
        expected = scan.clipped_sum(params, RowBatch(x, y), clip)
        got = fast.clipped_sum(params, RowBatch(x, y), clip)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
def test_mlp_batches_across_the_allowed_opset_range(opset: int) -> None:
    """Reductions take axes as attributes below opset 18 and as inputs from 18 on."""
    case = CASES[2]
    model = case.build()
    graphs = zoo_graphs(model)
    proto = onnx.load_from_string(graphs["grad"])
    proto.opset_import[0].version = opset
    graph = proto.SerializeToString()
    manifest = manifest_for(model, graphs)
    rng = np.random.default_rng(opset)
    params = random_parameters(model, rng)
    x, y = data_for(case, model, rng, 40)
    scan = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.SCAN)
    fast = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    np.testing.assert_allclose(
        fast.clipped_sum(params, RowBatch(x, y), 0.5), scan.clipped_sum(params, RowBatch(x, y), 0.5), atol=1e-5
    )


# -- hostile graphs: each would mix rows if batched naively (batch axis = axis 0) ------------


def _i64(name: str, values: list[int]) -> onnx.NodeProto:
    return const(name, values, np.int64)


def _with_b(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """grad_b from grad_w's sum (so every hostile value reaches the clipped result) and loss."""
    return [*nodes, node("ReduceSum", ["grad_w"], "grad_b", keepdims=0), *zero_loss()]


NAIVE_MIXERS: dict[str, list[onnx.NodeProto]] = {
    # ReduceSum without axes reduces everything: naively, all rows into one number.
    "reduce_all": [node("ReduceSum", ["x"], "s", keepdims=0), node("Mul", ["x", "s"], "grad_w")],
    "reduce_all_keepdims": [node("ReduceMax", ["x"], "s", keepdims=1), node("Sub", ["x", "s"], "grad_w")],
    "reduce_axis0": [_i64("a", [0]), node("ReduceSum", ["x", "a"], "s", keepdims=1), node("Add", ["x", "s"], "grad_w")],
    "reduce_negative_axis": [
        _i64("a", [-1]),
        node("ReduceLogSumExp", ["x"], "s", axes=[-1], keepdims=0),
        node("Mul", ["x", "s"], "grad_w"),
    ],
    # Softmax over axis 0 of a vector: naively over the rows.
    "softmax_axis0": [node("Softmax", ["x"], "grad_w", axis=0)],
    "logsoftmax_default": [node("LogSoftmax", ["x"], "grad_w")],
    "argmax_axis0": [
        node("ArgMax", ["x"], "i", axis=0, keepdims=1),
        node("Cast", ["i"], "f", to=TensorProto.FLOAT),
        node("Mul", ["x", "f"], "grad_w"),
    ],
    # Reshape to [-1] / Flatten(axis=0): naively one long row of all rows.
    "reshape_minus_one": [
        _i64("s", [2, 2]),
        node("Reshape", ["x", "s"], "m"),
        node("Transpose", ["m"], "t"),
        _i64("flat", [-1]),
        node("Reshape", ["t", "flat"], "grad_w"),
    ],
    "reshape_zero_copy": [
        _i64("s", [0]),
        node("Reshape", ["x", "s"], "grad_w"),
    ],
    "flatten_axis0": [
        node("Flatten", ["x"], "f", axis=0),
        node("Transpose", ["f"], "t"),
        node("Flatten", ["t"], "f2", axis=0),
        _i64("flat", [F]),
        node("Reshape", ["f2", "flat"], "grad_w"),
    ],
    # Shape of x: naively [N, F], so N would leak into the value.
    "shape_trick": [
        node("Shape", ["x"], "shape"),
        node("Cast", ["shape"], "fs", to=TensorProto.FLOAT),
        node("Size", ["x"], "size"),
        node("Cast", ["size"], "fsize", to=TensorProto.FLOAT),
        node("Mul", ["x", "fs"], "t"),
        node("Mul", ["t", "fsize"], "grad_w"),
    ],
    # Gather / Slice / Split / Concat on axis 0: naively rows.
    "gather_axis0": [_i64("i", [3, 2, 1, 0]), node("Gather", ["x", "i"], "grad_w", axis=0)],
    "slice_axis0": [
        _i64("st", [1]),
        _i64("en", [3]),
        node("Slice", ["x", "st", "en"], "part"),
        node("Concat", ["part", "part"], "grad_w", axis=0),
    ],
    "split_concat": [
        _i64("sizes", [1, 3]),
        helper.make_node("Split", ["x", "sizes"], ["p", "q"], axis=0),
        node("Concat", ["q", "p"], "grad_w", axis=-1),
    ],
    # A parameter of higher rank broadcast against a row vector: naively into the batch axis.
    "broadcast_higher_rank": [
        _i64("s", [F, 1]),
        node("Reshape", ["w", "s"], "col"),
        node("Mul", ["col", "x"], "m"),  # [F, F]
        _i64("a0", [0]),
        node("ReduceSum", ["m", "a0"], "grad_w", keepdims=0),
    ],
    # 1-D MatMuls: x @ w is a dot product; naively [N, F] @ [F] is fine but x @ x is not.
    "vector_dot": [node("MatMul", ["x", "x"], "d"), node("Mul", ["x", "d"], "grad_w")],
    "matrix_vector": [
        _i64("s", [F, 1]),
        node("Reshape", ["x", "s"], "col"),
        node("Transpose", ["col"], "row"),
        node("MatMul", ["col", "row"], "outer"),
        node("MatMul", ["outer", "x"], "grad_w"),
    ],
    "vector_matrix_param": [
        _i64("s", [F, 1]),
        node("Reshape", ["w", "s"], "wc"),
        node("Transpose", ["wc"], "wr"),
        node("MatMul", ["wc", "wr"], "ww"),
        node("MatMul", ["x", "ww"], "grad_w"),
    ],
    "gemm_trans": [
        _i64("s", [1, F]),
        node("Reshape", ["x", "s"], "xr"),
        node("Reshape", ["w", "s"], "wr"),
        node("Gemm", ["wr", "xr", "b"], "g", transA=1, alpha=0.5, beta=2.0),  # [F, F]
        node("ReduceMean", ["g"], "grad_w", axes=[1], keepdims=0),
    ],
    # Squeeze without axes of a [1, F]: naively N = 1 would disappear too.
    "squeeze_all": [
        _i64("s", [1, F]),
        node("Reshape", ["x", "s"], "xr"),
        node("Squeeze", ["xr"], "grad_w"),
    ],
    "unsqueeze_negative": [
        _i64("a", [-1]),
        node("Unsqueeze", ["x", "a"], "c"),
        _i64("t", [1, 3]),
        node("Tile", ["c", "t"], "tiled"),
        node("ReduceL2", ["tiled"], "grad_w", axes=[1], keepdims=0),
    ],
    "expand": [
        _i64("s", [F, F]),
        node("Expand", ["x", "s"], "e"),
        node("Transpose", ["e"], "et"),
        node("ReduceMin", ["et"], "grad_w", axes=[0], keepdims=0),
    ],
    "gather_elements_where_onehot": [
        _i64("i", [1, 0, 3, 2]),
        node("GatherElements", ["x", "i"], "g", axis=0),
        const("zero", 0.0),
        node("Greater", ["g", "zero"], "pos"),
        node("Where", ["pos", "g", "w"], "grad_w"),
    ],
    "onehot_from_label": [
        node("Cast", ["y"], "yi", to=TensorProto.INT64),
        _i64("a0", [0]),
        node("Unsqueeze", ["yi", "a0"], "y1"),
        _i64("depth", [F]),
        const("values", [0.0, 1.0]),
        node("OneHot", ["y1", "depth", "values"], "h", axis=-1),  # [1, F]
        _i64("flat", [F]),
        node("Reshape", ["h", "flat"], "grad_w"),
    ],
    "clip_pow_erf": [
        const("lo", -1.0),
        const("hi", 1.0),
        node("Clip", ["x", "lo", "hi"], "c"),
        node("Pow", ["c", "w"], "p"),
        node("Erf", ["p"], "grad_w"),
    ],
}


@pytest.mark.parametrize("name", sorted(NAIVE_MIXERS))
def test_hostile_graphs_compile_row_isolated_or_are_refused(name: str) -> None:
    graph = single_example_graph(_with_b(NAIVE_MIXERS[name]))
    rng = np.random.default_rng(5)
    params = hostile_params(rng)
    x = (rng.normal(size=(7, F)) * 2).astype(np.float32)
    y = rng.integers(0, 3, 7).astype(np.float32)
    try:
        batched = Batched(graph)
    except BatchingRefused:
        return
    assert_rows_close(batched.run(params, x, y), row_by_row(graph, params, x, y))
    assert_isolated(batched, params, x, y)


def test_every_hostile_graph_above_compiles() -> None:
    """The suite is only worth something if the compiler handles these: none is refused."""
    refused = []
    for name, nodes in NAIVE_MIXERS.items():
        try:
            Batched(single_example_graph(_with_b(nodes)))
        except BatchingRefused as exc:
            refused.append(f"{name}: {exc}")
    assert refused == []


def test_shape_and_size_of_a_row_are_per_example_constants() -> None:
    graph = single_example_graph(_with_b(NAIVE_MIXERS["shape_trick"]))
    params = hostile_params(np.random.default_rng(0))
    x = np.ones((5, F), np.float32)
    grad_w = Batched(graph).run(params, x, np.zeros(5, np.float32))[0]
    np.testing.assert_array_equal(grad_w, np.full((5, F), F * F, np.float32))  # x * [F] * F, never N


REFUSED = {
    # A shape computed from a row value: its size would depend on the row.
    "shape_from_row": (
        [
            const("zero", 0.0),
            node("Greater", ["y", "zero"], "positive"),
            _i64("big", [F]),
            _i64("small", [F]),
            node("Where", ["positive", "big", "small"], "shape"),
            node("Expand", ["x", "shape"], "grad_w"),
        ],
        "Expand",
    ),
    # Indices computed from a row (the package validator refuses these too).
    "row_indices": (
        [
            node("ArgMax", ["x"], "i", axis=0, keepdims=1),
            node("Gather", ["x", "i"], "g", axis=0),
            node("Mul", ["x", "g"], "grad_w"),
        ],
        "Gather",
    ),
    "range_from_row": (
        [
            node("ArgMax", ["x"], "i", axis=0, keepdims=0),
            _i64("zero_i", [0]),
            node("Identity", ["i"], "limit"),
            const("zero", 0, np.int64),
            const("one", 1, np.int64),
            node("Range", ["zero", "limit", "one"], "r"),
            node("Identity", ["x"], "grad_w"),
        ],
        "Range",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_row_dependent_shapes_and_indices_fall_back_to_scan(name: str, caplog: pytest.LogCaptureFixture) -> None:
    nodes, op = REFUSED[name]
    graph = single_example_graph(_with_b(nodes), check=False)
    with pytest.raises(BatchingRefused, match=op):
        CompiledWrapper(graph, hostile_manifest(), GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    with caplog.at_level(logging.INFO, logger="agent.runtime.sessions"):
        try:
            wrapper = CompiledWrapper(graph, hostile_manifest(), GraphRole.GRADIENT)
        except Exception:  # the Scan wrapper may refuse it as well (dangling shapes): fine
            return
    assert wrapper.mode is RuntimeMode.SCAN
    assert wrapper.fallback_reason is not None
    assert any("Scan" in record.getMessage() for record in caplog.records)


def test_an_operator_without_a_rule_is_refused_with_its_name() -> None:
    graph = single_example_graph(_with_b([_i64("a", [0]), node("CumSum", ["x", "a"], "grad_w")]), check=False)
    assert "CumSum" not in RULES
    with pytest.raises(BatchingRefused, match="CumSum"):
        Batched(graph)


def test_unbatched_gradients_are_copied_into_every_row() -> None:
    """A gradient that ignores the row (here: w itself) is the same for every example."""
    graph = single_example_graph(
        [node("Identity", ["w"], "grad_w"), node("ReduceSum", ["x"], "grad_b", keepdims=0), *zero_loss()]
    )
    manifest = hostile_manifest()
    params = hostile_params(np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(9, F)).astype(np.float32)
    y = np.zeros(9, np.float32)
    scan = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.SCAN)
    fast = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    np.testing.assert_allclose(
        fast.clipped_sum(params, RowBatch(x, y), 0.5), scan.clipped_sum(params, RowBatch(x, y), 0.5), rtol=1e-9
    )


# -- the factored tail: outer-product gradients are clipped without being materialised -------

OUTER_CASE = CASES[2]  # MLP 5-(8, 6)-3: W1 [5, 8], b1 [8], W2 [8, 6], b2 [6], Wout [6, 3], bout [3]


@pytest.mark.parametrize("scale", [1.0, 1e19])
def test_outer_product_gradients_match_scan_on_special_values(scale: float) -> None:
    """NaN, +-Inf, float32 overflow of the product (1e19 * 1e20), huge and tiny rows: the
    factored tail zeroes and clips exactly the rows the Scan wrapper does."""
    model = OUTER_CASE.build()
    graph = outer_gradient_graph(scale)
    manifest = manifest_for(model)
    rng = np.random.default_rng(3)
    params = random_parameters(model, rng)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    x[3, 4] = -np.inf
    x[4] = 1e20  # product 1e40 (scale 1e19) overflows float32; at scale 1, norm ~1e40 in float64
    x[5] = 1e-30
    x[6] = 3e18
    y = np.zeros(12, np.int64)
    fast = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    scan = CompiledWrapper(graph, manifest, GraphRole.GRADIENT, mode=RuntimeMode.SCAN)
    # The outer product really is factored: no [N, 5, 8] MatMul is left in the wrapper.
    built = onnx.load_from_string(fast_model_bytes(graph, manifest))
    assert not any(n.op_type == "MatMul" and n.output[0] == "package::outer" for n in built.graph.node)
    for clip in (0.5, 1e30):
        expected = scan.clipped_sum(params, RowBatch(x, y), clip)
        got = fast.clipped_sum(params, RowBatch(x, y), clip)
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expected).max())))
        # Each row moves the sum by at most C.
        for i in range(x.shape[0]):
            keep = np.arange(x.shape[0]) != i
            without = fast.clipped_sum(params, RowBatch(x[keep], y[keep]), clip)
            assert np.linalg.norm(got - without) <= clip * (1 + 1e-9)


def fast_model_bytes(graph: bytes, manifest: Manifest) -> bytes:
    return build_batched_wrapper(graph, manifest, GraphRole.GRADIENT).SerializeToString()


# -- every allow-listed operator with a rule, once, differentially ---------------------------

_FLOAT_UNARY = (
    "Neg", "Abs", "Exp", "Sign", "Floor", "Ceil", "Round", "Erf", "Relu", "LeakyRelu", "Elu", "Selu", "Celu",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Identity",
)  # fmt: skip
_FLOAT_BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu")
_COMPARE = ("Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal")
_LOGIC = ("And", "Or", "Xor")
_REDUCE_ALL = (
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1", "ReduceL2",
    "ReduceLogSumExp",
)  # fmt: skip


def _elementwise_cases() -> dict[str, list[onnx.NodeProto]]:
    cases: dict[str, list[onnx.NodeProto]] = {}
    for op in _FLOAT_UNARY:
        cases[op] = [node(op, ["x"], "grad_w")]
    for op in _FLOAT_BINARY:
        cases[op] = [node(op, ["x", "w"], "grad_w")]
    for op in _COMPARE:
        cases[op] = [node(op, ["x", "w"], "c"), node("Cast", ["c"], "grad_w", to=TensorProto.FLOAT)]
    for op in _LOGIC:
        cases[op] = [
            const("zero", 0.0),
            node("Greater", ["x", "zero"], "p"),
            node("Less", ["w", "x"], "q"),
            node(op, ["p", "q"], "r"),
            node("Not", ["r"], "n"),
            node("CastLike", ["n", "x"], "grad_w"),
        ]
    cases["Sqrt_Log_Reciprocal"] = [
        node("Abs", ["x"], "a"),
        node("Sqrt", ["a"], "s"),
        const("one", 1.0),
        node("Add", ["s", "one"], "s1"),
        node("Log", ["s1"], "l"),
        node("Reciprocal", ["s1"], "r"),
        node("Mul", ["l", "r"], "grad_w"),
    ]
    cases["Pow_Mod"] = [
        node("Abs", ["x"], "a"),
        node("Pow", ["a", "w"], "p"),
        const("three", 3.0),
        node("Mod", ["x", "three"], "m", fmod=1),
        node("Add", ["p", "m"], "grad_w"),
    ]
    cases["Clip_IsNaN_IsInf_Where"] = [
        node("Div", ["x", "y"], "d"),  # Inf / NaN on rows with y = 0
        node("IsNaN", ["d"], "nan"),
        node("IsInf", ["d"], "inf"),
        node("Or", ["nan", "inf"], "bad"),
        const("lo", -2.0),
        const("hi", 2.0),
        node("Clip", ["d", "lo", "hi"], "c"),
        node("Where", ["bad", "w", "c"], "grad_w"),
    ]
    for op in _REDUCE_ALL:
        cases[op] = [
            _i64("s", [2, 2]),
            node("Reshape", ["x", "s"], "m"),
            node("Abs", ["m"], "am"),  # ReduceLogSumExp / L2 / Prod on any sign
            _i64("axes", [1]),
            node(op, ["am", "axes"], "r", keepdims=1),  # opset 18: axes as an input
            node("Add", ["m", "r"], "t"),
            _i64("flat", [F]),
            node("Reshape", ["t", "flat"], "grad_w"),
        ]
    cases["ArgMin"] = [
        node("ArgMin", ["x"], "i", axis=-1, keepdims=1),
        node("Cast", ["i"], "f", to=TensorProto.FLOAT),
        node("Mul", ["x", "f"], "grad_w"),
    ]
    cases["ConstantOfShape_of_a_row_shape"] = [
        node("Shape", ["x"], "shape"),
        node("ConstantOfShape", ["shape"], "zeros", value=onnx.numpy_helper.from_array(np.array([0.5], np.float32))),
        node("Add", ["x", "zeros"], "grad_w"),
    ]
    return cases


ELEMENTWISE = _elementwise_cases()


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_each_operator_rule_matches_the_single_example_graph(name: str) -> None:
    opset = 20 if name == "Gelu" else 18 if name in _REDUCE_ALL else 17
    graph = single_example_graph(_with_b(ELEMENTWISE[name]), opset=opset)
    rng = np.random.default_rng(8)
    params = hostile_params(rng)
    x = (rng.normal(size=(6, F)) * 2).astype(np.float32)
    y = np.array([0, 1, 2, 0, -1, 3], np.float32)
    batched = Batched(graph)
    assert_rows_close(batched.run(params, x, y), row_by_row(graph, params, x, y))
    assert_isolated(batched, params, x, y)


def test_graphs_with_large_per_example_values_run_in_scan() -> None:
    """256 rows of a 400k-element per-example value would be ~800 MB: refused, Scan instead."""
    graph = single_example_graph(
        _with_b(
            [
                _i64("s", [F, 100_000]),
                _i64("one", [1]),
                node("Unsqueeze", ["x", "one"], "col"),
                node("Expand", ["col", "s"], "big"),
                node("ReduceMean", ["big"], "grad_w", axes=[1], keepdims=0),
            ]
        )
    )
    with pytest.raises(BatchingRefused, match="too large"):
        CompiledWrapper(graph, hostile_manifest(), GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    assert CompiledWrapper(graph, hostile_manifest(), GraphRole.GRADIENT).mode is RuntimeMode.SCAN


def test_wide_weight_gradients_are_batched_because_they_are_never_materialised() -> None:
    """A 2048 x 512 weight: 256 materialised per-row gradients would be 2 GB, but the tail
    takes them as their factors, so only the small activations count against the limit."""
    model = build_mlp_classifier(4, (2048, 512))
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    rng = np.random.default_rng(5)
    params = random_parameters(model, rng)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = rng.integers(0, 2, 40).astype(np.int64)
    fast = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT, mode=RuntimeMode.BATCHED)
    scan = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT, mode=RuntimeMode.SCAN)
    expected = scan.clipped_sum(params, RowBatch(x, y), 0.5)
    np.testing.assert_allclose(fast.clipped_sum(params, RowBatch(x, y), 0.5), expected, rtol=1e-5, atol=1e-6)


def test_declared_shapes_the_compiler_cannot_confirm_are_refused() -> None:
    """A package may declare value infos for values ONNX cannot infer (here a Tile whose
    repeats come from a parameter). The rules take ranks and shapes from them, and a
    declaration could lie; the layout check infers the batched graph without the
    package's declarations and refuses what it cannot confirm (even a true one, as here)."""
    nodes = [
        const("minus_big", -1e30),
        node("Greater", ["b", "minus_big"], "true"),
        node("Cast", ["true"], "one", to=TensorProto.INT64),
        node("Add", ["one", "one"], "two"),
        _i64("a0", [0]),
        node("Unsqueeze", ["two", "a0"], "repeats"),
        node("Tile", ["x", "repeats"], "tiled"),  # [2F] at run time
        _i64("s", [2, F]),
        node("Reshape", ["tiled", "s"], "m"),
        node("ReduceSum", ["m", "a0"], "grad_w", keepdims=0),
    ]
    model = onnx.load_from_string(single_example_graph(_with_b(nodes), check=False))
    model.graph.value_info.extend(
        [
            helper.make_tensor_value_info("repeats", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("tiled", TensorProto.FLOAT, [2 * F]),
        ]
    )
    graph = model.SerializeToString()
    with pytest.raises(BatchingRefused, match="layout check"):
        Batched(graph)
