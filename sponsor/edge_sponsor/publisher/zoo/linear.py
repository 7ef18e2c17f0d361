"""Linear regression.

Parameters ``w`` [F] and ``b`` []; label ``y`` float32 [] (the target value).

With the prediction ``p = x . w + b`` and residual ``r = p - y`` the per-example training
loss is half the squared error, plus optional weight decay on ``w`` only::

    loss = 0.5 * r^2 + 0.5 * l2 * ||w||^2
    grad_w = r * x + l2 * w        grad_b = r

(The factor 0.5 makes the gradient the plain residual; with Gaussian noise of unit
variance it is the negative log-likelihood up to a constant.)

Eval metrics (weight decay excluded), each clamped to its range with
``B = error_bound`` in the label's units: ``loss`` = ``0.5 * r^2`` in ``[0, B^2 / 2]``,
``squared_error`` = ``r^2`` in ``[0, B^2]`` and ``absolute_error`` = ``|r|`` in
``[0, B]``. The inference model outputs ``prediction`` [N] = ``x @ w + b``.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

from edge_sponsor.publisher.zoo.graph import (
    FLOAT,
    GraphBuilder,
    clipped,
    linear_score,
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

NAME = "linear_regression"


def build_linear_regression(
    num_features: int, l2: float = 0.0, *, error_bound: float = 10.0
) -> ZooModel:
    """Builds linear regression over ``num_features`` features.

    ``l2`` is the weight-decay coefficient baked into the grad graph (on ``w``, not ``b``);
    ``error_bound`` (label units) sets the declared ranges of the eval metrics.
    """
    num_features = positive_int("num_features", num_features)
    l2 = non_negative_float("l2", l2)
    bound = positive_float("error_bound", error_bound)
    ranges = {
        "loss": (0.0, 0.5 * bound * bound),
        "squared_error": (0.0, bound * bound),
        "absolute_error": (0.0, bound),
    }
    parameters = (ParameterSpec("w", (num_features,)), ParameterSpec("b", ()))
    return ZooModel(
        name=NAME,
        description=__doc__ or NAME,
        num_features=num_features,
        parameters=parameters,
        label_spec=LabelSpec("float32", (), "target value"),
        grad_graph=_grad_graph(num_features, l2),
        eval_graph=_eval_graph(num_features, ranges),
        eval_metric_ranges=ranges,
        inference_outputs=("prediction",),
        _build_inference=lambda params: _inference_graph(num_features, params),
        _initialize=lambda rng: zero_parameters(parameters),
    )


def _residual(g: GraphBuilder, num_features: int) -> tuple[str, str, str]:
    """Declares the single-example inputs; returns ``(w, x, r)`` with ``r = x.w + b - y``."""
    w = g.add_input("w", FLOAT, [num_features])
    b = g.add_input("b", FLOAT, [])
    x = g.add_input("x", FLOAT, [num_features])
    y = g.add_input("y", FLOAT, [])
    return w, x, g.op("Sub", linear_score(g, x, w, b), y)


def _grad_graph(num_features: int, l2: float) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_grad", __doc__ or NAME)
    w, x, r = _residual(g, num_features)
    grad_w = with_weight_decay(g, g.op("Mul", r, x), w, l2, out="grad_w")
    g.add_output(grad_w, "grad_w", FLOAT, [num_features])
    g.add_output(r, "grad_b", FLOAT, [])
    half_squared = g.op("Mul", g.constant(0.5), g.op("Mul", r, r))
    g.add_output(plus_weight_decay(g, half_squared, [w], l2), "loss", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "grad"})


def _eval_graph(num_features: int, ranges: Mapping[str, tuple[float, float]]) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_eval", __doc__ or NAME)
    _, _, r = _residual(g, num_features)
    squared = g.op("Mul", r, r)
    loss = clipped(g, g.op("Mul", g.constant(0.5), squared), ranges["loss"], out="loss")
    g.add_output(loss, "loss", FLOAT, [])
    squared_error = clipped(g, squared, ranges["squared_error"], out="squared_error")
    g.add_output(squared_error, "squared_error", FLOAT, [])
    absolute_error = clipped(g, g.op("Abs", r), ranges["absolute_error"], out="absolute_error")
    g.add_output(absolute_error, "absolute_error", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "eval"})


def _inference_graph(num_features: int, params: Mapping[str, FloatArray]) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_inference", __doc__ or NAME)
    x = g.add_input("x", FLOAT, ["N", num_features])
    w = g.add_initializer("w", params["w"])
    b = g.add_initializer("b", params["b"])
    prediction = g.op("Identity", linear_score(g, x, w, b), out="prediction")
    g.add_output(prediction, "prediction", FLOAT, ["N"])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "inference"})

