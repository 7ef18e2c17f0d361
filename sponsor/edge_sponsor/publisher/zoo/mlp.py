"""Multi-layer perceptron classifier with softmax cross-entropy and a hand-written backward pass.

Parameters, in order: ``W1`` [F, H1], ``b1`` [H1], ..., ``WL`` [H(L-1), HL], ``bL`` [HL],
``Wout`` [HL, K], ``bout`` [K] (with no hidden layers this is multinomial logistic
regression: ``Wout`` [F, K]). Label ``y`` is an **int64 scalar class index** in
``[0, K)``; the graph turns it into a one-hot vector ``o`` by comparison, so an
out-of-range index gives ``o = 0``, zero loss and zero gradient (the example then
contributes nothing; datasets should not contain such labels).

Forward, with activation ``act`` (``relu`` or ``tanh``) and ``h0 = x``::

    a_l = h_(l-1) @ W_l + b_l        h_l = act(a_l)        logits = h_L @ Wout + bout
    loss = -sum(o * log_softmax(logits)) + 0.5 * l2 * sum(||W||^2 over W1..WL, Wout)

Backward (weight decay on weight matrices only, not biases)::

    dlogits = softmax(logits) - o     computed as  valid * q - o * sum(q),
              q = softmax(logits) * (1 - o), valid = sum(o)
    grad_Wout = outer(h_L, dlogits) + l2 * Wout        grad_bout = dlogits
    dh_L = Wout @ dlogits
    da_l = dh_l * act'(a_l)     (relu' = [a_l > 0], tanh' = 1 - h_l^2)
    grad_W_l = outer(h_(l-1), da_l) + l2 * W_l         grad_b_l = da_l
    dh_(l-1) = W_l @ da_l

Writing ``p_y - 1`` as ``-sum(p_j, j != y)`` keeps confident, correct predictions'
small gradients accurate in float32.

Eval metrics: ``loss`` (cross-entropy clamped to ``[0, loss_bound]``) and ``correct``
(1 when ``argmax(logits) == y`` with argmax's first-index tie-break, else 0; 0 for
out-of-range labels). The inference model outputs ``probabilities`` [N, K].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edge_sponsor.publisher.zoo.graph import (
    FLOAT,
    INT64,
    GraphBuilder,
    clipped,
    linear_score,
    outer_product,
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
)

NAME = "mlp_classifier"
ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class _Layer:
    weight: ParameterSpec
    bias: ParameterSpec


def build_mlp_classifier(
    num_features: int,
    hidden: Sequence[int] = (64, 64),
    num_classes: int = 2,
    activation: str = "relu",
    l2: float = 0.0,
    *,
    loss_bound: float = 10.0,
) -> ZooModel:
    """Builds an MLP classifier ``num_features -> *hidden -> num_classes``.

    ``activation`` is ``"relu"`` or ``"tanh"``; ``l2`` is the weight-decay coefficient
    baked into the grad graph (weight matrices only); ``loss_bound`` is the upper end of
    the eval ``loss`` metric's declared range.
    """
    num_features = positive_int("num_features", num_features)
    widths = tuple(positive_int("hidden layer width", width) for width in hidden)
    num_classes = positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    l2 = non_negative_float("l2", l2)
    ranges = {"loss": (0.0, positive_float("loss_bound", loss_bound)), "correct": (0.0, 1.0)}

    sizes = (num_features, *widths, num_classes)
    suffixes = [str(i) for i in range(1, len(widths) + 1)] + ["out"]
    layers = tuple(
        _Layer(
            ParameterSpec(f"W{suffix}", (fan_in, fan_out)),
            ParameterSpec(f"b{suffix}", (fan_out,)),
        )
        for suffix, fan_in, fan_out in zip(suffixes, sizes[:-1], sizes[1:], strict=True)
    )
    parameters = tuple(spec for layer in layers for spec in (layer.weight, layer.bias))
    return ZooModel(
        name=NAME,
        description=__doc__ or NAME,
        num_features=num_features,
        parameters=parameters,
        label_spec=LabelSpec("int64", (), f"class index in [0, {num_classes})"),
        grad_graph=_grad_graph(num_features, num_classes, layers, activation, l2),
        eval_graph=_eval_graph(num_features, num_classes, layers, activation, ranges),
        eval_metric_ranges=ranges,
        inference_outputs=("probabilities",),
        _build_inference=lambda params: _inference_graph(num_features, layers, activation, params),
        _initialize=lambda rng: _glorot_uniform(layers, rng),
    )


@dataclass(frozen=True)
class _Forward:
    """Value names of one forward pass (``inputs[l]`` feeds layer ``l``)."""

    inputs: list[str]
    pre_activations: list[str]
    logits: str


def _forward(
    g: GraphBuilder, x: str, layers: Sequence[_Layer], activation: str
) -> _Forward:
    inputs: list[str] = []
    pre_activations: list[str] = []
    h = x
    for layer in layers[:-1]:
        inputs.append(h)
        a = linear_score(g, h, layer.weight.name, layer.bias.name)
        pre_activations.append(a)
        h = g.op("Relu" if activation == "relu" else "Tanh", a)
    inputs.append(h)
    out = layers[-1]
    return _Forward(inputs, pre_activations, linear_score(g, h, out.weight.name, out.bias.name))


def _single_example_inputs(
    g: GraphBuilder, num_features: int, layers: Sequence[_Layer]
) -> tuple[str, str]:
    for layer in layers:
        for spec in (layer.weight, layer.bias):
            g.add_input(spec.name, FLOAT, spec.shape)
    return g.add_input("x", FLOAT, [num_features]), g.add_input("y", INT64, [])


def _one_hot(g: GraphBuilder, y: str, num_classes: int) -> tuple[str, str]:
    """``(o, y_as_float)``: ``o[k] = 1.0`` iff ``|k - y| < 0.5``; all zeros when out of range."""
    label = g.op("Cast", y, to=FLOAT)
    classes = g.constant(np.arange(num_classes, dtype=np.float32))
    distance = g.op("Abs", g.op("Sub", classes, label))
    return g.op("Cast", g.op("Less", distance, g.constant(0.5)), to=FLOAT), label


def _cross_entropy(g: GraphBuilder, one_hot: str, log_probabilities: str) -> str:
    return g.op("Neg", g.op("ReduceSum", g.op("Mul", one_hot, log_probabilities), keepdims=0))


def _grad_graph(
    num_features: int,
    num_classes: int,
    layers: Sequence[_Layer],
    activation: str,
    l2: float,
) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_grad", __doc__ or NAME)
    x, y = _single_example_inputs(g, num_features, layers)
    one_hot, _ = _one_hot(g, y, num_classes)
    forward = _forward(g, x, layers, activation)
    log_probabilities = g.op("LogSoftmax", forward.logits, axis=-1)

    others = g.op(
        "Mul", g.op("Exp", log_probabilities), g.op("Sub", g.constant(1.0), one_hot)
    )
    valid = g.op("ReduceSum", one_hot, keepdims=0)
    d_out = g.op(
        "Sub",
        g.op("Mul", others, valid),
        g.op("Mul", one_hot, g.op("ReduceSum", others, keepdims=0)),
    )

    gradients: dict[str, str] = {}
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        weight, bias = layer.weight.name, layer.bias.name
        gradients[weight] = with_weight_decay(
            g, outer_product(g, forward.inputs[index], d_out), weight, l2, out=f"grad_{weight}"
        )
        gradients[bias] = d_out
        if index == 0:
            break
        d_hidden = g.op("MatMul", weight, d_out)
        d_out = g.op("Mul", d_hidden, _activation_slope(g, forward, index - 1, activation))

    for layer in layers:
        for spec in (layer.weight, layer.bias):
            g.add_output(gradients[spec.name], f"grad_{spec.name}", FLOAT, spec.shape)
    loss = plus_weight_decay(
        g, _cross_entropy(g, one_hot, log_probabilities), [la.weight.name for la in layers], l2
    )
    g.add_output(loss, "loss", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "grad"})


def _activation_slope(g: GraphBuilder, forward: _Forward, hidden: int, activation: str) -> str:
    """``act'(a)`` for hidden layer ``hidden`` (0-based), from values of the forward pass."""
    if activation == "relu":
        a = forward.pre_activations[hidden]
        return g.op("Cast", g.op("Greater", a, g.constant(0.0)), to=FLOAT)
    h = forward.inputs[hidden + 1]
    return g.op("Sub", g.constant(1.0), g.op("Mul", h, h))


def _eval_graph(
    num_features: int,
    num_classes: int,
    layers: Sequence[_Layer],
    activation: str,
    ranges: Mapping[str, tuple[float, float]],
) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_eval", __doc__ or NAME)
    x, y = _single_example_inputs(g, num_features, layers)
    one_hot, label = _one_hot(g, y, num_classes)
    logits = _forward(g, x, layers, activation).logits
    cross_entropy = _cross_entropy(g, one_hot, g.op("LogSoftmax", logits, axis=-1))
    g.add_output(clipped(g, cross_entropy, ranges["loss"], out="loss"), "loss", FLOAT, [])

    # argmax(logits) == y  <=>  no class beats y: none has a larger logit, and none before
    # y has an equal one (argmax picks the first maximum).
    label_logit = g.op("ReduceSum", g.op("Mul", one_hot, logits), keepdims=0)
    larger = g.op("Cast", g.op("Greater", logits, label_logit), to=FLOAT)
    not_smaller = g.op(
        "Sub", g.constant(1.0), g.op("Cast", g.op("Less", logits, label_logit), to=FLOAT)
    )
    classes = g.constant(np.arange(num_classes, dtype=np.float32))
    earlier = g.op("Cast", g.op("Less", classes, label), to=FLOAT)
    rivals = g.op(
        "ReduceSum", g.op("Add", larger, g.op("Mul", earlier, not_smaller)), keepdims=0
    )
    unbeaten = g.op("Cast", g.op("Less", rivals, g.constant(0.5)), to=FLOAT)
    valid = g.op("ReduceSum", one_hot, keepdims=0)
    g.add_output(g.op("Mul", valid, unbeaten, out="correct"), "correct", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "eval"})


def _inference_graph(
    num_features: int,
    layers: Sequence[_Layer],
    activation: str,
    params: Mapping[str, FloatArray],
) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_inference", __doc__ or NAME)
    x = g.add_input("x", FLOAT, ["N", num_features])
    for layer in layers:
        for spec in (layer.weight, layer.bias):
            g.add_initializer(spec.name, params[spec.name])
    logits = _forward(g, x, layers, activation).logits
    probabilities = g.op("Softmax", logits, axis=-1, out="probabilities")
    g.add_output(probabilities, "probabilities", FLOAT, ["N", layers[-1].bias.shape[0]])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "inference"})


def _glorot_uniform(layers: Sequence[_Layer], rng: np.random.Generator) -> dict[str, FloatArray]:
    """Glorot/Xavier-uniform weights, ``U(+-sqrt(6 / (fan_in + fan_out)))``; zero biases."""
    values: dict[str, FloatArray] = {}
    for layer in layers:
        fan_in, fan_out = layer.weight.shape
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        values[layer.weight.name] = rng.uniform(-limit, limit, layer.weight.shape).astype(
            np.float32
        )
        values[layer.bias.name] = np.zeros(layer.bias.shape, np.float32)
    return values
