"""Binary logistic regression.

Parameters ``w`` [F] and ``b`` []; label ``y`` float32 [] with 1.0 for the positive class
and 0.0 for the negative one (values in between act as soft labels).

With the logit ``z = x . w + b`` the per-example training loss is binary cross-entropy
written in the overflow-free softplus form, plus optional weight decay on ``w`` only::

    loss = max(z, 0) - z * y + log(1 + exp(-|z|)) + 0.5 * l2 * ||w||^2

Its gradient uses ``dloss/dz = sigmoid(z) - y``, evaluated as
``(1 - y) * sigmoid(z) - y * sigmoid(-z)`` with both sigmoids built from ``Exp`` (see
:func:`~edge_sponsor.publisher.zoo.graph.logistic_pair`) so that a confidently right prediction
(say ``z = 20, y = 1``) keeps its tiny gradient instead of rounding it to zero::

    grad_w = dloss/dz * x + l2 * w        grad_b = dloss/dz

Eval metrics (weight decay excluded): ``loss`` (the cross-entropy clamped to
``[0, loss_bound]``), ``correct`` (``z > 0`` agrees with ``y > 0.5``; in [0, 1]) and
``brier`` (``(sigmoid(z) - y)^2`` clamped to [0, 1]); with ``score_bins``, also the
cells of a histogram of ``sigmoid(z)`` per outcome (``y > 0.5``), for AUC and
calibration (:mod:`~edge_sponsor.publisher.zoo.score_histogram`). The inference model
outputs ``probability`` [N] = ``sigmoid(x @ w + b)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from edge_sponsor.publisher.zoo import score_histogram
from edge_sponsor.publisher.zoo.graph import (
    FLOAT,
    GraphBuilder,
    clipped,
    linear_score,
    logistic_pair,
    plus_weight_decay,
    with_weight_decay,
)
from edge_sponsor.publisher.zoo.spec import (
    FloatArray,
    LabelSpec,
    ParameterSpec,
    ZooModel,
    non_negative_float,
    positive_float,
    positive_int,
    zero_parameters,
)

NAME = "logistic_regression"


def build_logistic_regression(
    num_features: int, l2: float = 0.0, *, loss_bound: float = 10.0, score_bins: int = 0
) -> ZooModel:
    """Builds binary logistic regression over ``num_features`` features.

    ``l2`` is the weight-decay coefficient baked into the grad graph (on ``w``, not ``b``);
    ``loss_bound`` is the upper end of the eval ``loss`` metric's declared range;
    ``score_bins`` (0: none, else 2 to 30) adds a histogram of the predicted probability
    per outcome to the eval metrics.
    """
    num_features = positive_int("num_features", num_features)
    l2 = non_negative_float("l2", l2)
    loss_bound = positive_float("loss_bound", loss_bound)
    if score_bins != 0:
        score_bins = score_histogram.checked_bins(score_bins)
    ranges = {"loss": (0.0, loss_bound), "correct": (0.0, 1.0), "brier": (0.0, 1.0)}
    eval_graph, cells = _eval_graph(num_features, ranges, score_bins)
    parameters = (ParameterSpec("w", (num_features,)), ParameterSpec("b", ()))
    return ZooModel(
        name=NAME,
        description=__doc__ or NAME,
        num_features=num_features,
        parameters=parameters,
        label_spec=LabelSpec("float32", (), "1.0 positive, 0.0 negative; [0, 1] soft labels"),
        grad_graph=_grad_graph(num_features, l2),
        eval_graph=eval_graph,
        eval_metric_ranges=ranges | cells,
        inference_outputs=("probability",),
        _build_inference=lambda params: _inference_graph(num_features, params),
        _initialize=lambda rng: zero_parameters(parameters),
        eval_metric_groups=dict.fromkeys(cells, score_histogram.GROUP),
    )


def _single_example_inputs(g: GraphBuilder, num_features: int) -> tuple[str, str, str, str]:
    return (
        g.add_input("w", FLOAT, [num_features]),
        g.add_input("b", FLOAT, []),
        g.add_input("x", FLOAT, [num_features]),
        g.add_input("y", FLOAT, []),
    )


def _cross_entropy(g: GraphBuilder, z: str, y: str) -> str:
    """``max(z, 0) - z * y + log(1 + exp(-|z|))``: finite for every finite ``z``."""
    softplus_tail = g.op(
        "Log", g.op("Add", g.constant(1.0), g.op("Exp", g.op("Neg", g.op("Abs", z))))
    )
    hinge = g.op("Sub", g.op("Max", z, g.constant(0.0)), g.op("Mul", z, y))
    return g.op("Add", hinge, softplus_tail)


def _grad_graph(num_features: int, l2: float) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_grad", __doc__ or NAME)
    w, b, x, y = _single_example_inputs(g, num_features)
    z = linear_score(g, x, w, b)
    sigmoid_z, sigmoid_minus_z = logistic_pair(g, z)
    positive_part = g.op("Mul", g.op("Sub", g.constant(1.0), y), sigmoid_z)
    negative_part = g.op("Mul", y, sigmoid_minus_z)
    dz = g.op("Sub", positive_part, negative_part)
    grad_w = with_weight_decay(g, g.op("Mul", dz, x), w, l2, out="grad_w")
    g.add_output(grad_w, "grad_w", FLOAT, [num_features])
    g.add_output(dz, "grad_b", FLOAT, [])
    loss = plus_weight_decay(g, _cross_entropy(g, z, y), [w], l2)
    g.add_output(loss, "loss", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "grad"})


def _eval_graph(
    num_features: int, ranges: Mapping[str, tuple[float, float]], score_bins: int
) -> tuple[onnx.ModelProto, dict[str, tuple[float, float]]]:
    """The eval graph, and the ranges of the score histogram's cells (none without ``score_bins``)."""
    g = GraphBuilder(f"{NAME}_eval", __doc__ or NAME)
    w, b, x, y = _single_example_inputs(g, num_features)
    z = linear_score(g, x, w, b)
    g.add_output(clipped(g, _cross_entropy(g, z, y), ranges["loss"], out="loss"), "loss", FLOAT, [])
    predicted = g.op("Cast", g.op("Greater", z, g.constant(0.0)), to=FLOAT)
    actual = g.op("Cast", g.op("Greater", y, g.constant(0.5)), to=FLOAT)
    correct = g.op(
        "Sub", g.constant(1.0), g.op("Abs", g.op("Sub", predicted, actual)), out="correct"
    )
    g.add_output(correct, "correct", FLOAT, [])
    probability = logistic_pair(g, z)[0]
    residual = g.op("Sub", probability, y)
    brier = clipped(g, g.op("Mul", residual, residual), ranges["brier"], out="brier")
    g.add_output(brier, "brier", FLOAT, [])
    cells = score_histogram.add_cells(g, probability, actual, score_bins) if score_bins else {}
    return g.to_model({"zoo.model": NAME, "zoo.graph": "eval"}), cells


def _inference_graph(num_features: int, params: Mapping[str, FloatArray]) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_inference", __doc__ or NAME)
    x = g.add_input("x", FLOAT, ["N", num_features])
    w = g.add_initializer("w", params["w"])
    b = g.add_initializer("b", params["b"])
    probability = logistic_pair(g, linear_score(g, x, w, b))[0]
    g.add_output(probability, "probability", FLOAT, ["N"])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "inference"})

