"""Hostile graphs, unit-structured rows and NumPy references for the per-unit bounding tests.

A *unit* (a patient) owns a contiguous run of rows in a :class:`RowBatch`; ``unit_starts``
holds where each run begins. The references here follow docs/issue 20's definition:

* gradients: per unit, the float64 sum of its rows' per-example gradients (a row with a
  NaN or infinity counts as zeros), clipped to L2 norm ``C`` (a non-finite sum counts as
  zeros); the clipped unit sums are added;
* metrics: per unit, the mean of its rows' clamped metrics (non-finite -> 0, then clamped
  into ``[low, high]``); the means are added.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from agent.packages.canonical import canonical_json, parse_strict_json
from agent.packages.manifest import Manifest, parse_manifest
from agent.runtime.batching import BatchingRefused
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import ZooModel, build_logistic_regression, build_mlp_classifier
from tests.runtime.helpers import (
    Arrays,
    F,
    const,
    hostile_manifest,
    hostile_params,
    manifest_for,
    node,
    outer_gradient_graph,
    random_parameters,
    single_example_graph,
    zero_loss,
)
from tests.runtime.test_malicious_graphs import HOSTILE, PICK, eval_graph

# -- rows grouped into units ---------------------------------------------------------------


def starts_of(sizes: Sequence[int]) -> npt.NDArray[np.int64]:
    """``unit_starts`` for consecutive units of ``sizes`` rows."""
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def unit_batch(x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> RowBatch:
    assert sum(sizes) == x.shape[0]
    return RowBatch(np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y), unit_starts=starts_of(sizes))


def without_unit(x: np.ndarray, y: np.ndarray, sizes: Sequence[int], unit: int) -> RowBatch:
    """The same rows and units with every row of ``unit`` removed (built independently of
    the agent's ``RowBatch.select_units``)."""
    start = sum(sizes[:unit])
    keep = np.ones(x.shape[0], bool)
    keep[start : start + sizes[unit]] = False
    rest = [s for k, s in enumerate(sizes) if k != unit]
    if not rest:
        return RowBatch(x[:0].copy(), y[:0].copy(), unit_starts=np.zeros(0, np.int64))
    return unit_batch(x[keep], y[keep], rest)


def unit_slices(sizes: Sequence[int]) -> list[slice]:
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


# -- references -----------------------------------------------------------------------------


def unit_clipped_reference(per_example: np.ndarray, sizes: Sequence[int], clip_norm: float) -> np.ndarray:
    total = np.zeros(per_example.shape[1])
    for rows in unit_slices(sizes):
        block = per_example[rows]
        finite = np.all(np.isfinite(block), axis=1)
        summed = block[finite].sum(axis=0)
        with np.errstate(over="ignore", invalid="ignore"):
            norm = float(np.sqrt(np.sum(summed * summed)))
        if not np.isfinite(norm):
            continue
        total += summed * min(1.0, clip_norm / norm) if norm > 0 else summed
    return total


def unit_metric_reference(per_example: np.ndarray, sizes: Sequence[int], manifest: Manifest) -> np.ndarray:
    low = np.array([m.low for m in manifest.metrics])
    high = np.array([m.high for m in manifest.metrics])
    values = np.clip(np.where(np.isfinite(per_example), per_example, 0.0), low, high)
    for group in manifest.metric_groups:
        # Each row's group scaled to L2 norm at most the group's bound.
        members = list(group.members)
        with np.errstate(over="ignore"):
            norms = np.sqrt(np.sum(values[:, members] ** 2, axis=1, keepdims=True))
        values[:, members] *= group.bound / np.maximum(norms, group.bound)
    return np.array([values[rows].mean(axis=0) for rows in unit_slices(sizes)]).sum(axis=0)


def grouped_manifest(cells: tuple[float, float] = (0.0, 1.0), loss: tuple[float, float] | None = None) -> Manifest:
    """The hostile manifest with ``correct`` and ``brier`` one group in range ``cells``, as the
    cells of a histogram are: bounded together, by their bound in L2; ``loss`` another range.

    A tiny group bound and a huge ungrouped range are where a review found a group left
    unbounded (squares underflowing) or every metric NaN (squares overflowing) before the
    manifest's limits and the norm of the ratios to the bound."""
    manifest = hostile_manifest()
    metrics = tuple(
        replace(metric, group="cells", low=cells[0], high=cells[1])
        if metric.name in ("correct", "brier")
        else (metric if loss is None else replace(metric, low=loss[0], high=loss[1]))
        for metric in manifest.metrics
    )
    return parse_manifest(parse_strict_json(canonical_json(replace(manifest, metrics=metrics).to_json())))


@functools.cache
def _session(graph: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def per_example(case: GraphCase, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The package graph itself, run once per row: ``[n, layout size]`` float64 (float32 values)."""
    session = _session(case.graph)
    names = case.output_names()
    out = []
    for i in range(x.shape[0]):
        values = session.run(names, {**case.params, "x": x[i], "y": np.asarray(y[i])})
        out.append(np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in values]))
    return np.array(out).reshape(x.shape[0], -1)


# -- graph cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphCase:
    name: str
    role: GraphRole
    graph: bytes
    manifest: Manifest
    params: Arrays
    labels: Callable[[np.random.Generator, int], np.ndarray]
    float32_products: bool = False
    """Per-row values come from float32 MatMul/Gemm, which the compiled batch accumulates in
    another order than one row at a time (~1e-6 relative, as in tests/runtime/test_batching.py), or
    outer products the batched path takes as factors and multiplies in float64, where the
    package graph (and so Scan) rounds each product to float32."""

    @property
    def features(self) -> int:
        return self.manifest.num_features

    def output_names(self) -> list[str]:
        if self.role is GraphRole.GRADIENT:
            return [f"grad_{p.name}" for p in self.manifest.parameters]
        return [m.name for m in self.manifest.metrics]

    def bounds(self) -> np.ndarray:
        return np.array([max(abs(m.low), abs(m.high)) for m in self.manifest.metrics])


def _small_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    # 0, 1, 2: several hostile graphs divide by y or single out one label value.
    return rng.integers(0, 3, n).astype(np.float32)


def _binary(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2, n).astype(np.float32)


def _classes(k: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.integers(0, k, n).astype(np.int64)


def _i64(name: str, values: list[int]) -> onnx.NodeProto:
    return const(name, values, np.int64)


# New hostile gradients: each tries to make one unit's rows count for more than C.
NEW_HOSTILE: dict[str, list[onnx.NodeProto]] = {
    # Grows with the row's feature values, super-linearly.
    "value_squared_1e3": [
        const("k", 1e3),
        node("Abs", ["x"], "ax"),
        node("Mul", ["x", "ax"], "xx"),
        node("Mul", ["xx", "k"], "grad_w"),
        node("ReduceSum", ["x"], "grad_b", keepdims=0),
        *zero_loss(),
    ],
    # Huge but finite for |x| < 34, infinite above: near float32's overflow.
    "near_overflow_1e37": [
        const("k", 1e37),
        node("Mul", ["x", "k"], "grad_w"),
        node("Mul", ["y", "k"], "grad_b"),
        *zero_loss(),
    ],
    # +-Inf or NaN exactly on the rows with y = 2 (the rows the attacker chose).
    "non_finite_on_label_2": [
        const("two", 2.0),
        const("k", 1e3),
        node("Sub", ["y", "two"], "d"),
        node("Div", ["x", "d"], "q"),
        node("Mul", ["q", "k"], "grad_w"),
        node("Div", ["k", "d"], "grad_b"),
        *zero_loss(),
    ],
    # The row's "position": a running sum, over the batch axis if batched naively. The
    # compiler has no rule for CumSum and refuses it, so this graph runs in Scan only.
    "cumsum_position": [
        _i64("a0", [0]),
        const("k", 1e6),
        node("CumSum", ["x", "a0"], "c"),
        node("Mul", ["c", "k"], "grad_w"),
        node("ReduceSum", ["c"], "grad_b", keepdims=0),
        *zero_loss(),
    ],
    # The batch size, if batched naively (Size of [N, F]): grows with the rows around.
    "batch_size_gain": [
        node("Size", ["x"], "size"),
        node("Cast", ["size"], "fsize", to=TensorProto.FLOAT),
        const("k", 1e6),
        node("Mul", ["fsize", "k"], "gain"),
        node("Mul", ["x", "gain"], "grad_w"),
        node("Identity", ["gain"], "grad_b"),
        *zero_loss(),
    ],
    # A reduction over axis 0, i.e. over the rows if batched naively.
    "reduce_axis0": [
        _i64("a", [0]),
        node("ReduceSum", ["x", "a"], "s", keepdims=1),
        const("k", 1e4),
        node("Mul", ["s", "k"], "ks"),
        node("Mul", ["x", "ks"], "grad_w"),
        node("ReduceSum", ["ks"], "grad_b", keepdims=0),
        *zero_loss(),
    ],
    # The gradient is the row itself (hypothesis chooses gradients directly).
    "echo": [node("Identity", ["x"], "grad_w"), node("Identity", ["y"], "grad_b"), *zero_loss()],
}

OUTER_MODEL = (5, (8, 6), 3)


def _mlp() -> ZooModel:
    inputs, hidden, classes = OUTER_MODEL
    return build_mlp_classifier(inputs, hidden, classes, activation="tanh")


def _hostile(name: str, nodes: list[onnx.NodeProto]) -> GraphCase:
    return GraphCase(
        name,
        GraphRole.GRADIENT,
        single_example_graph(nodes, check=False),
        hostile_manifest(),
        hostile_params(np.random.default_rng(0)),
        _small_labels,
    )


@functools.cache
def gradient_cases() -> dict[str, GraphCase]:
    cases = {f"malicious/{name}": _hostile(f"malicious/{name}", nodes) for name, nodes in HOSTILE.items()}
    cases |= {f"new/{name}": _hostile(f"new/{name}", nodes) for name, nodes in NEW_HOSTILE.items()}
    mlp = _mlp()
    mlp_params = random_parameters(mlp, np.random.default_rng(1))
    for scale in (1.0, 1e19):
        name = f"outer_product_x{scale:g}"
        cases[name] = GraphCase(
            name,
            GraphRole.GRADIENT,
            outer_gradient_graph(scale),
            manifest_for(mlp),
            mlp_params,
            _classes(OUTER_MODEL[2]),
            True,
        )
    name = "hostile/cancelling_outer"
    cases[name] = GraphCase(
        name, GraphRole.GRADIENT, cancelling_outer_graph(1e30, 1e-8), manifest_for(mlp), mlp_params, _classes(2), True
    )
    graphs = zoo_graphs(mlp)
    cases["zoo/mlp_tanh"] = GraphCase(
        "zoo/mlp_tanh", GraphRole.GRADIENT, graphs["grad"], manifest_for(mlp, graphs), mlp_params, _classes(3), True
    )
    logistic = build_logistic_regression(F, l2=0.01)
    graphs = zoo_graphs(logistic)
    cases["zoo/logistic"] = GraphCase(
        "zoo/logistic",
        GraphRole.GRADIENT,
        graphs["grad"],
        manifest_for(logistic, graphs),
        random_parameters(logistic, np.random.default_rng(2)),
        _binary,
        True,
    )
    return cases


# Metrics: x's coordinates times y (hostile values below), 1e30 times a coordinate, and the
# zoo's own evaluation graphs.
HUGE_METRICS = [
    const("k", 1e30),
    *(const(f"i{k}", k, np.int64) for k in range(3)),
    *(node("Gather", ["x", f"i{k}"], f"x{k}") for k in range(3)),
    node("Mul", ["x0", "k"], "loss"),
    node("Div", ["x1", "y"], "correct"),
    node("Mul", ["x2", "k"], "brier"),
]


@functools.cache
def evaluation_cases() -> dict[str, GraphCase]:
    manifest = hostile_manifest()
    params = hostile_params(np.random.default_rng(0))
    cases = {
        name: GraphCase(name, GraphRole.EVALUATION, eval_graph(nodes), chosen, params, _small_labels)
        for name, nodes, chosen in (
            ("malicious/pick", PICK, manifest),
            ("new/huge_metrics", HUGE_METRICS, manifest),
            ("grouped/pick", PICK, grouped_manifest()),
            ("grouped/huge_metrics", HUGE_METRICS, grouped_manifest()),
            # The extremes a manifest may declare (MIN_GROUP_BOUND, MAX_METRIC_BOUND).
            ("grouped/tiny_bound", PICK, grouped_manifest(cells=(-1e-100, 1e-100))),
            ("grouped/huge_ungrouped", HUGE_METRICS, grouped_manifest(loss=(5e99, 1e100))),
        )
    }
    for name, model, labels in (
        ("zoo/logistic", build_logistic_regression(F, l2=0.01), _binary),
        ("zoo/mlp_tanh", _mlp(), _classes(3)),
    ):
        graphs = zoo_graphs(model)
        cases[name] = GraphCase(
            name,
            GraphRole.EVALUATION,
            graphs["eval"],
            manifest_for(model, graphs),
            random_parameters(model, np.random.default_rng(3)),
            labels,
            True,
        )
    return cases


@functools.cache
def wrappers(case_name: str, role: GraphRole) -> dict[RuntimeMode, CompiledWrapper]:
    """SCAN always; BATCHED when the compiler accepts the graph (AUTO must then pick it)."""
    case = (gradient_cases() if role is GraphRole.GRADIENT else evaluation_cases())[case_name]
    built = {RuntimeMode.SCAN: CompiledWrapper(case.graph, case.manifest, role, mode=RuntimeMode.SCAN)}
    with contextlib.suppress(BatchingRefused):
        built[RuntimeMode.BATCHED] = CompiledWrapper(case.graph, case.manifest, role, mode=RuntimeMode.BATCHED)
    auto = CompiledWrapper(case.graph, case.manifest, role, mode=RuntimeMode.AUTO)
    assert auto.mode is (RuntimeMode.BATCHED if RuntimeMode.BATCHED in built else RuntimeMode.SCAN)
    return built


class UnitArraySource:
    """Rows in memory grouped into units, served in batches that never split a unit."""

    def __init__(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int], *, units_per_batch: int = 7) -> None:
        self._x = np.ascontiguousarray(x, np.float32)
        self._y = np.ascontiguousarray(y)
        self._sizes = list(sizes)
        self._per_batch = units_per_batch

    def batches(self) -> Iterator[RowBatch]:
        start = 0
        for first in range(0, len(self._sizes), self._per_batch):
            sizes = self._sizes[first : first + self._per_batch]
            end = start + sum(sizes)
            yield unit_batch(self._x[start:end], self._y[start:end], sizes)
            start = end


def cancelling_outer_graph(scale: float, detail: float) -> bytes:
    """A hostile weight gradient made to cancel within a unit: grad_W1 = outer(u, v) with
    ``u = [x0, x1, x2, x0, x1]`` and ``v = (1 - 2y) * scale * [1, 1, 1, 1, 1, 1, detail*x3, detail*x4]``.

    Two rows of one patient with the same x0..x2 (demographics) and labels 0 and 1 cancel
    except in the ``detail`` coordinates: the unit's sum is tiny next to each row's
    gradient. grad_b1 = v; the other gradients are zeros."""
    model = _mlp()
    params = [(p.name, list(p.shape)) for p in model.parameters]
    nodes = [
        _i64("a0", [0]),
        _i64("a1", [1]),
        _i64("i_u", [0, 1, 2, 0, 1]),
        _i64("i_d", [3, 4]),
        const("ones", np.ones(6)),
        const("detail", detail),
        const("scale", scale),
        const("one", 1.0),
        const("two", 2.0),
        node("Gather", ["x", "i_u"], "u"),
        node("Gather", ["x", "i_d"], "xd"),
        node("Mul", ["xd", "detail"], "d"),
        node("Concat", ["ones", "d"], "base", axis=0),
        node("Cast", ["y"], "yf", to=TensorProto.FLOAT),
        node("Mul", ["yf", "two"], "y2"),
        node("Sub", ["one", "y2"], "sign"),
        node("Mul", ["sign", "scale"], "gain"),
        node("Mul", ["base", "gain"], "v"),
        node("Unsqueeze", ["u", "a1"], "col"),
        node("Unsqueeze", ["v", "a0"], "row"),
        node("MatMul", ["col", "row"], "outer"),
        node("Identity", ["outer"], "grad_W1"),
        node("Identity", ["v"], "grad_b1"),
        const("zero", 0.0),
        *(node("Mul", [name, "zero"], f"grad_{name}") for name, _ in params if name not in ("W1", "b1")),
        const("loss", 0.0),
    ]
    graph = helper.make_graph(
        nodes,
        "cancelling_outer",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in params]
        + [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [OUTER_MODEL[0]]),
            helper.make_tensor_value_info("y", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(f"grad_{name}", TensorProto.FLOAT, shape) for name, shape in params]
        + [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def patient_visits(rng: np.random.Generator, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of patients: x0..x2 fixed per patient (demographics), x3, x4 per visit; labels
    alternate 0, 1 within a patient."""
    x_parts, y_parts = [], []
    for size in sizes:
        demographics = rng.normal(size=3)
        visits = rng.normal(size=(size, 2))
        x_parts.append(np.concatenate([np.tile(demographics, (size, 1)), visits], axis=1))
        y_parts.append(np.arange(size) % 2)
    return np.concatenate(x_parts).astype(np.float32), np.concatenate(y_parts).astype(np.int64)


WIDE = 64


@functools.cache
def wide_echo() -> tuple[bytes, Manifest]:
    """A logistic-regression interface with ``WIDE`` features whose gradient is the row
    itself: with one-hot rows, a released sum (sigma = 0, a large C) says which rows it holds."""
    model = build_logistic_regression(WIDE)
    graph = helper.make_graph(
        [node("Identity", ["x"], "grad_w"), node("Identity", ["y"], "grad_b"), *zero_loss()],
        "wide_echo",
        [
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [WIDE]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [WIDE]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("grad_w", TensorProto.FLOAT, [WIDE]),
            helper.make_tensor_value_info("grad_b", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("loss", TensorProto.FLOAT, []),
        ],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    return data, manifest_for(model)
