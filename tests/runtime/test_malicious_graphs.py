"""Hostile package graphs cannot move the result by more than C per row, or they fail closed.

The sensitivity check runs the wrapper at sigma = 0 on a set of rows and on the same set
without one row, and compares the L2 norm of the difference across all parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.runtime.errors import GraphExecutionError, WrapperBuildError
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper
from tests.runtime.helpers import (
    F,
    clipped_sum_reference,
    const,
    hostile_manifest,
    hostile_params,
    node,
    single_example_graph,
    zero_loss,
)

C = 0.75
SLACK = 1e-9  # float64 rounding of the clip; far below any release's noise


def wrapper_for(graph: bytes) -> CompiledWrapper:
    return CompiledWrapper(graph, hostile_manifest(), GraphRole.GRADIENT)


def max_row_influence(wrapper: CompiledWrapper, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """max over rows i of || sum(D) - sum(D without i) ||_2 at sigma = 0."""
    full = wrapper.clipped_sum(params, RowBatch(x, y), C)
    assert np.all(np.isfinite(full))
    worst = 0.0
    for i in range(x.shape[0]):
        keep = np.arange(x.shape[0]) != i
        without = wrapper.clipped_sum(params, RowBatch(x[keep], y[keep]), C)
        worst = max(worst, float(np.linalg.norm(full - without)))
    return worst


def rows(seed: int, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, F)) * 3).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.float32)  # 0, 1, 2: some hostile graphs divide by y
    return x, y


SCALED = [
    const("big", 1e6),
    node("Mul", ["x", "big"], "grad_w"),
    node("Mul", ["y", "big"], "grad_b"),
    *zero_loss(),
]
OVERFLOW = [
    const("huge", 3e38),
    node("Mul", ["x", "huge"], "grad_w"),  # float32 overflow to +-Inf for |x| > 1.13, else huge
    node("ReduceSum", ["x"], "grad_b", keepdims=0),
    *zero_loss(),
]
# Values named like the agent's own: a clip norm of 1e30, "state" and "sum" values.
COLLIDING = [
    const("agent::clip_norm", 1e30),
    const("agent::state_in", 1e6),
    node("Mul", ["x", "agent::clip_norm"], "agent::sum"),
    node("Mul", ["agent::sum", "agent::state_in"], "agent::state_out"),
    node("Identity", ["agent::state_out"], "grad_w"),
    node("Mul", ["x", "y"], "agent::x"),
    node("ReduceSum", ["agent::x"], "grad_b", keepdims=0),
    *zero_loss(),
]
# A graph that only misbehaves for one target row (membership attack).
TARGETED = [
    const("target", 1.0),
    const("big", 1e9),
    node("Equal", ["y", "target"], "hit"),
    node("Cast", ["hit"], "hit_f", to=1),
    node("Mul", ["hit_f", "big"], "gain"),
    node("Mul", ["x", "gain"], "grad_w"),
    node("Identity", ["gain"], "grad_b"),
    *zero_loss(),
]


NON_FINITE = [
    # x / y is +-Inf (or NaN for 0/0) on rows with y = 0; log(y - 1) is NaN on y = 0, -Inf on y = 1.
    node("Div", ["x", "y"], "grad_w"),
    const("one", 1.0),
    node("Sub", ["y", "one"], "y_minus_1"),
    node("Log", ["y_minus_1"], "grad_b"),
    *zero_loss(),
]
HOSTILE = {
    "scaled_1e6": SCALED,
    "non_finite_rows": NON_FINITE,
    "float32_overflow": OVERFLOW,
    "agent_names": COLLIDING,
    "targeted_row": TARGETED,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_row_moves_the_sum_by_at_most_c(name: str) -> None:
    wrapper = wrapper_for(single_example_graph(HOSTILE[name]))
    params = hostile_params(np.random.default_rng(0))
    for seed in range(3):
        x, y = rows(seed)
        assert max_row_influence(wrapper, params, x, y) <= C * (1 + SLACK)


def test_non_finite_examples_contribute_nothing() -> None:
    wrapper = wrapper_for(single_example_graph(HOSTILE["non_finite_rows"]))
    params = hostile_params(np.random.default_rng(0))
    x = np.ones((3, F), np.float32)
    y = np.array([0.0, 1.0, 2.0], np.float32)  # Inf/NaN, -Inf, finite (x/2, log 1 = 0)
    expected = clipped_sum_reference(np.array([[0.5] * F + [0.0]]), C)
    np.testing.assert_allclose(wrapper.clipped_sum(params, RowBatch(x, y), C), expected, rtol=1e-12)


def test_names_of_the_agent_inside_the_package_are_just_package_names() -> None:
    """The colliding graph computes x * 1e30 * 1e6 for grad_w: every row is clipped to C."""
    wrapper = wrapper_for(single_example_graph(COLLIDING))
    params = hostile_params(np.random.default_rng(0))
    x, y = rows(5)
    got = wrapper.clipped_sum(params, RowBatch(x, y), C)
    with np.errstate(over="ignore", invalid="ignore"):
        per_example = np.concatenate([x.astype(np.float64) * 1e30 * 1e6, (x * y[:, None]).sum(1, keepdims=True)], 1)
    # float32 arithmetic in the graph overflows x * 1e36 to +-Inf: those rows are zeroed.
    per_example_f32 = np.where(np.isfinite(per_example.astype(np.float32)), per_example, np.inf)
    np.testing.assert_allclose(got, clipped_sum_reference(per_example_f32, C), atol=1e-6)


@pytest.mark.parametrize(
    "reads",
    ["agent::state_in", "agent::clip_norm", "agent::x", "agent::param::w", "agent::sum", "agent::x_row"],
)
def test_reading_an_agent_value_is_refused(reads: str) -> None:
    """Not definable from inside: after renaming the read is dangling, the checker refuses."""
    graph = single_example_graph(
        [
            node("Identity", [reads], "stolen"),
            node("Add", ["x", "stolen"], "grad_w"),
            node("ReduceSum", ["x"], "grad_b", keepdims=0),
            *zero_loss(),
        ],
        check=False,
    )
    with pytest.raises(WrapperBuildError):
        wrapper_for(graph)


BROADCASTS = {
    # grad_w of one element where w has F: must not be broadcast to F copies.
    "w_scalar": [node("ReduceSum", ["x"], "grad_w", keepdims=1), node("ReduceSum", ["x"], "grad_b", keepdims=0)],
    # grad_b of F elements where b is a scalar.
    "b_vector": [node("Identity", ["x"], "grad_w"), node("Identity", ["x"], "grad_b")],
    # grad_w of F x F elements.
    "w_outer": [
        const("axis1", [1], np.int64),
        const("axis0", [0], np.int64),
        node("Unsqueeze", ["x", "axis1"], "col"),
        node("Unsqueeze", ["x", "axis0"], "row"),
        node("MatMul", ["col", "row"], "grad_w"),
        node("ReduceSum", ["x"], "grad_b", keepdims=0),
    ],
    # Size decided at run time by the label: 1 element when y = 0, F otherwise.
    "data_dependent": [
        const("zero", 0.0),
        node("Greater", ["y", "zero"], "positive"),
        const("f_shape", [F], np.int64),
        const("one_shape", [1], np.int64),
        node("Where", ["positive", "f_shape", "one_shape"], "shape"),
        node("ReduceSum", ["x"], "sx", keepdims=1),
        node("Expand", ["sx", "shape"], "grad_w"),
        node("ReduceSum", ["x"], "grad_b", keepdims=0),
    ],
}


@pytest.mark.parametrize("name", sorted(BROADCASTS))
def test_gradients_of_the_wrong_size_fail_instead_of_broadcasting(name: str) -> None:
    graph = single_example_graph([*BROADCASTS[name], *zero_loss()], check=False)
    x, y = rows(1)
    y[0] = 0.0
    y[1] = 1.0
    try:
        wrapper = wrapper_for(graph)
    except WrapperBuildError:
        return  # refused statically: fine
    with pytest.raises(GraphExecutionError) as caught:
        wrapper.clipped_sum(hostile_params(np.random.default_rng(0)), RowBatch(x, y), C)
    # The coordinator-facing message carries nothing of onnxruntime's (row-dependent) text.
    assert "Reshape" not in str(caught.value) and caught.value.detail


def test_same_size_gradients_in_another_shape_are_still_bounded() -> None:
    """A reordered gradient of the right size keeps its norm: nothing to exploit."""
    graph = single_example_graph(
        [
            const("s", [2, 2], np.int64),
            node("Reshape", ["x", "s"], "sq"),
            node("Transpose", ["sq"], "t"),
            const("flat", [F], np.int64),
            node("Reshape", ["t", "flat"], "grad_w"),
            node("ReduceSum", ["x"], "grad_b", keepdims=0),
            *zero_loss(),
        ]
    )
    x, y = rows(2)
    assert max_row_influence(wrapper_for(graph), hostile_params(np.random.default_rng(0)), x, y) <= C * (1 + SLACK)


ECHO = single_example_graph([node("Identity", ["x"], "grad_w"), node("Identity", ["y"], "grad_b"), *zero_loss()])
_special = st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e-45, 0.0, 1e6])
_values = st.one_of(st.floats(-1e3, 1e3, width=32), _special)


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.just(F)), elements=_values),
    data=st.data(),
)
def test_any_per_example_gradient_is_clipped_zeroed_and_bounded(x: np.ndarray, data: st.DataObject) -> None:
    """The echo graph's gradient is the row itself, so hypothesis chooses gradients directly."""
    y = data.draw(hnp.arrays(np.float32, x.shape[0], elements=_values))
    wrapper = wrapper_for(ECHO)
    params = hostile_params(np.random.default_rng(0))
    per_example = np.concatenate([x, y[:, None]], axis=1).astype(np.float64)
    got = wrapper.clipped_sum(params, RowBatch(x, y), C)
    np.testing.assert_allclose(got, clipped_sum_reference(per_example, C), rtol=1e-9, atol=1e-12)
    assert max_row_influence(wrapper, params, x, y) <= C * (1 + SLACK)


@pytest.mark.parametrize("opset", [13, 15, 18, 21])
def test_wrapper_works_across_the_allowed_opset_range(opset: int) -> None:
    graph = single_example_graph(
        [node("Identity", ["x"], "grad_w"), node("Identity", ["y"], "grad_b"), *zero_loss()], opset=opset
    )
    x = np.array([[3.0, 4.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]], np.float32)
    y = np.array([0.0, 0.2], np.float32)
    got = wrapper_for(graph).clipped_sum(hostile_params(np.random.default_rng(0)), RowBatch(x, y), 1.0)
    np.testing.assert_allclose(got, [0.6 + 0.1, 0.8, 0, 0, 0.2], rtol=1e-6)


def eval_graph(metric_nodes: list) -> bytes:
    return single_example_graph(metric_nodes, outputs=[("loss", ()), ("correct", ()), ("brier", ())], check=False)


# Each metric is one coordinate of x (scaled by y): hypothesis-free but hostile values below.
PICK = [
    *(const(f"i{k}", k, np.int64) for k in range(3)),
    *(node("Gather", ["x", f"i{k}"], f"x{k}") for k in range(3)),
    node("Mul", ["x0", "y"], "loss"),
    node("Mul", ["x1", "y"], "correct"),
    node("Mul", ["x2", "y"], "brier"),
]


def test_metrics_are_clamped_and_each_row_moves_each_sum_by_at_most_its_bound() -> None:
    manifest = hostile_manifest()
    wrapper = CompiledWrapper(eval_graph(PICK), manifest, GraphRole.EVALUATION)
    bounds = np.array([max(abs(m.low), abs(m.high)) for m in manifest.metrics])
    x = np.array(
        [[np.nan, 1e30, -5.0, 0], [np.inf, -np.inf, 0.5, 0], [3.0, 0.25, 2.0, 0], [-1.0, 1.0, 1e-3, 0]], np.float32
    )
    y = np.array([1.0, 1.0, 1.0, 1e38], np.float32)
    params = hostile_params(np.random.default_rng(0))
    full = wrapper.clipped_sum(params, RowBatch(x, y))
    low = np.array([m.low for m in manifest.metrics])
    high = np.array([m.high for m in manifest.metrics])
    with np.errstate(over="ignore", invalid="ignore"):
        per_example = (x[:, :3] * y[:, None]).astype(np.float32).astype(np.float64)
    expected = np.clip(np.where(np.isfinite(per_example), per_example, 0.0), low, high).sum(axis=0)
    np.testing.assert_allclose(full, expected)
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        change = np.abs(full - wrapper.clipped_sum(params, RowBatch(x[keep], y[keep])))
        assert np.all(change <= bounds)
