"""Properties every zoo model shares: graph format, interfaces, self-consistent gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto
from zoo_checks import (
    ALLOWED_OPS,
    GRADIENT_TOLERANCE,
    as_float32,
    central_differences,
    graph_gradients,
    random_parameters,
    relative_error,
    run,
    session,
    to_float64,
)

from edge_sponsor.publisher.zoo import (
    IR_VERSION,
    OPSET_VERSION,
    ZooModel,
    build_linear_regression,
    build_logistic_regression,
    build_mlp_classifier,
    build_weibull_survival,
)

NUM_FEATURES = 4


@dataclass(frozen=True)
class Case:
    id: str
    model: ZooModel
    draw_label: Callable[[np.random.Generator], np.ndarray]


def _survival_label(rng: np.random.Generator) -> np.ndarray:
    return np.array([np.exp(rng.normal()), rng.integers(0, 2)], np.float32)


CASES = [
    Case(
        "logistic",
        build_logistic_regression(NUM_FEATURES, l2=0.1),
        lambda rng: np.array(rng.integers(0, 2), np.float32),
    ),
    Case(
        "logistic-score-bins",
        build_logistic_regression(NUM_FEATURES, score_bins=7),
        lambda rng: np.array(rng.integers(0, 2), np.float32),
    ),
    Case(
        "linear",
        build_linear_regression(NUM_FEATURES, l2=0.05),
        lambda rng: np.array(rng.normal(0.0, 2.0), np.float32),
    ),
    Case(
        "mlp-relu",
        build_mlp_classifier(NUM_FEATURES, hidden=(6, 5), num_classes=3, activation="relu"),
        lambda rng: np.array(rng.integers(0, 3), np.int64),
    ),
    Case(
        "mlp-tanh-l2",
        build_mlp_classifier(NUM_FEATURES, hidden=(5,), num_classes=4, activation="tanh", l2=0.01),
        lambda rng: np.array(rng.integers(0, 4), np.int64),
    ),
    Case(
        "mlp-no-hidden",
        build_mlp_classifier(NUM_FEATURES, hidden=(), num_classes=3),
        lambda rng: np.array(rng.integers(0, 3), np.int64),
    ),
    Case("weibull", build_weibull_survival(NUM_FEATURES, l2=0.02), _survival_label),
]
CASE_IDS = [case.id for case in CASES]


def _all_graphs(case: Case) -> dict[str, onnx.ModelProto]:
    params = case.model.init_parameters(np.random.default_rng(0))
    return {
        "grad": case.model.grad_graph,
        "eval": case.model.eval_graph,
        "inference": case.model.inference_model(params),
    }


def _tensors_of(model: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == AttributeProto.TENSOR)
    return tensors


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_graph_has_the_zoo_format(case: Case) -> None:
    for kind, model in _all_graphs(case).items():
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == IR_VERSION == 8, kind
        assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET_VERSION)]
        assert OPSET_VERSION == 17
        assert not model.functions, kind
        assert model.graph.doc_string and model.doc_string, kind
        op_types = {node.op_type for node in model.graph.node}
        assert op_types <= ALLOWED_OPS, (kind, op_types - ALLOWED_OPS)
        assert all(node.domain == "" for node in model.graph.node), kind
        for node in model.graph.node:  # no subgraphs, hence no control flow
            assert all(
                a.type not in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in node.attribute
            )
        for tensor in _tensors_of(model):
            assert tensor.data_location != TensorProto.EXTERNAL, kind
            assert not tensor.external_data, kind
        session(model)  # loads in onnxruntime


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_single_example_graphs_declare_the_parameter_interface(case: Case) -> None:
    model = case.model
    label_type = {"float32": "tensor(float)", "int64": "tensor(int64)"}[model.label_spec.dtype]
    expected_inputs = [(p.name, "tensor(float)", list(p.shape)) for p in model.parameters]
    expected_inputs += [
        ("x", "tensor(float)", [model.num_features]),
        ("y", label_type, list(model.label_spec.shape)),
    ]
    grad = session(model.grad_graph)
    evaluation = session(model.eval_graph)
    for sess in (grad, evaluation):
        assert [(i.name, i.type, i.shape) for i in sess.get_inputs()] == expected_inputs
    assert [(o.name, o.type, o.shape) for o in grad.get_outputs()] == [
        *((f"grad_{p.name}", "tensor(float)", list(p.shape)) for p in model.parameters),
        ("loss", "tensor(float)", []),
    ]
    assert [(o.name, o.type, o.shape) for o in evaluation.get_outputs()] == [
        (name, "tensor(float)", []) for name in model.eval_metric_ranges
    ]
    assert all(low < high for low, high in model.eval_metric_ranges.values())
    assert not model.grad_graph.graph.initializer
    assert not model.eval_graph.graph.initializer


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_inference_model_takes_a_dynamic_batch(case: Case) -> None:
    model = case.model
    sess = session(model.inference_model(model.init_parameters(np.random.default_rng(1))))
    (x_input,) = sess.get_inputs()
    assert (x_input.name, x_input.shape[1:]) == ("x", [model.num_features])
    assert isinstance(x_input.shape[0], str)
    assert [o.name for o in sess.get_outputs()] == list(model.inference_outputs)
    for batch in (1, 5):
        outputs = run(sess, {"x": np.zeros((batch, model.num_features), np.float32)})
        assert all(value.shape[0] == batch for value in outputs.values())


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradients_match_finite_differences_of_the_graph_itself_in_float64(case: Case) -> None:
    """Runs the grad graph retyped to float64 and differentiates its own ``loss`` output."""
    model = case.model
    grad32 = session(model.grad_graph)
    grad64 = session(to_float64(model.grad_graph))
    rng = np.random.default_rng(7)
    for _ in range(3):
        params = random_parameters(model, rng)
        x = rng.normal(0.0, 1.0, model.num_features).astype(np.float32)
        y = case.draw_label(rng)
        y64 = y.astype(np.float64) if y.dtype == np.float32 else y

        def loss64(p: dict[str, np.ndarray], x: Any = x, y64: Any = y64) -> float:
            return float(run(grad64, {**p, "x": x.astype(np.float64), "y": y64})["loss"])

        params64 = {name: value.astype(np.float64) for name, value in params.items()}
        finite = central_differences(loss64, params64)
        exact64 = run(grad64, {**params64, "x": x.astype(np.float64), "y": y64})
        assert relative_error(graph_gradients(model, exact64), finite) < 1e-6
        exact32 = run(grad32, {**params, "x": x, "y": y})
        assert relative_error(graph_gradients(model, exact32), finite) < GRADIENT_TOLERANCE
        assert exact32["loss"] == pytest.approx(float(exact64["loss"]), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_init_parameters_are_shaped_finite_and_seeded(case: Case) -> None:
    model = case.model
    first = model.init_parameters(np.random.default_rng(3))
    second = model.init_parameters(np.random.default_rng(3))
    assert list(first) == [spec.name for spec in model.parameters]
    for spec in model.parameters:
        assert first[spec.name].dtype == np.float32
        assert first[spec.name].shape == spec.shape
        assert np.all(np.isfinite(first[spec.name]))
        np.testing.assert_array_equal(first[spec.name], second[spec.name])
    model.checked_parameters(first)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_inference_model_rejects_parameters_that_do_not_match(case: Case) -> None:
    model = case.model
    good = as_float32(model.init_parameters(np.random.default_rng(0)))
    first = model.parameters[0].name
    missing = {k: v for k, v in good.items() if k != first}
    extra = {**good, "intruder": np.zeros(1, np.float32)}
    reshaped = {**good, first: np.zeros((*good[first].shape, 2), np.float32)}
    poisoned = {**good, first: np.full(good[first].shape, np.nan, np.float32)}
    for bad in (missing, extra, reshaped, poisoned):
        with pytest.raises(ValueError, match=model.name):
            model.inference_model(bad)


def test_zoo_models_are_frozen_and_their_ranges_read_only() -> None:
    model = CASES[0].model
    with pytest.raises(FrozenInstanceError):
        model.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        model.eval_metric_ranges["loss"] = (0.0, 1e9)  # type: ignore[index]


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_logistic_regression(0),
        lambda: build_logistic_regression(3, l2=-1.0),
        lambda: build_logistic_regression(3, l2=float("nan")),
        lambda: build_logistic_regression(3, loss_bound=0.0),
        lambda: build_linear_regression(True),
        lambda: build_linear_regression(3, error_bound=float("inf")),
        lambda: build_mlp_classifier(3, hidden=(4, 0)),
        lambda: build_mlp_classifier(3, num_classes=1),
        lambda: build_mlp_classifier(3, activation="gelu"),
        lambda: build_weibull_survival(3, nll_range=(5.0, 5.0)),
        lambda: build_weibull_survival(3, log_time_error_bound=-1.0),
    ],
)
def test_builders_reject_bad_arguments(build: Callable[[], ZooModel]) -> None:
    with pytest.raises(ValueError):
        build()
