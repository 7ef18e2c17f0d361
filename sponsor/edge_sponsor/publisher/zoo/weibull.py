"""Weibull accelerated-failure-time (AFT) survival regression with right-censoring.

Parameters ``w`` [F], ``b`` [] and ``log_shape`` []. Label ``y`` is float32 [2]:
``(time, event)`` with ``time > 0`` and ``event`` 1.0 for an observed event, 0.0 for a
right-censored follow-up. Times are floored at ``TIME_FLOOR`` and events clamped to
[0, 1] inside the graph so that bad rows stay finite.

Parametrisation (AFT): ``log T = mu + sigma * eps`` with ``eps`` standard minimum
extreme-value, ``mu = x . w + b`` and ``sigma = 1 / k``, shape ``k = exp(log_shape)``
and scale ``lambda = exp(mu)``::

    S(t) = exp(-(t / lambda)^k)            h(t) = (k / lambda) * (t / lambda)^(k - 1)

Weibull is also a proportional-hazards model: the PH log-hazard-ratio coefficients are
``-k * w``.

With ``u = k * (log t - mu)`` the per-example negative log-likelihood of ``(t, d)``,
``-(d * log h(t) + log S(t))``, is::

    nll = exp(u) - d * (log_shape + u - log t)
    dnll/du = exp(u) - d
    grad_w = -k * (exp(u) - d) * x + l2 * w       grad_b = -k * (exp(u) - d)
    grad_log_shape = u * (exp(u) - d) - d

(plus ``0.5 * l2 * ||w||^2`` in the training loss). To keep float32 finite when a row
lies far in the tail, ``exp(u)`` is continued linearly beyond ``u = U_LINEAR``:
``exp(u)`` is replaced by ``exp(min(u, U)) * (1 + max(u - U, 0))``, whose derivative is
``exp(min(u, U))``; the gradients above use that derivative, so loss and gradient stay
consistent. This changes the likelihood only where the survival probability is below
``exp(-exp(U))`` (about ``exp(-1e13)``).

Starting values: ``w = 0``, shape 1 (``log_shape = 0``) and ``b = log(time_scale / ln 2)``,
so that the starting model's median survival time is ``time_scale``, a typical time in
the data's own unit (the median follow-up, say 365 for a year in days). Started at the
time unit instead (``b = 0``), every follow-up of many units puts ``u = log t`` far
above zero: each first gradient is dominated by the unit, not the covariates, and is
clipped at the DP clipping norm, so the first rounds spend budget learning the scale.

Eval metrics: ``neg_log_likelihood`` clamped to ``nll_range``; ``event`` (``d`` in
[0, 1]); ``event_abs_log_time_error`` = ``d * min(|log t - log median|, B)`` in
``[0, B]`` with ``B = log_time_error_bound`` (divide its sum by the sum of ``event``).
With ``score_bins`` and ``time_bins``, the eval metrics also hold a histogram of the
risk ``1 - S(time_scale)`` (the predicted probability of the event by ``time_scale``) per
event indicator and time bin on ``[0, horizon)`` (:mod:`~edge_sponsor.publisher.zoo.score_histogram`),
from which the coordinator computes Harrell's C-index on that grid.
The inference model outputs ``median_time`` [N] = ``lambda * (ln 2)^(1/k)`` and
``scale`` [N] = ``lambda``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx

from edge_sponsor.publisher.zoo import score_histogram
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
    metric_range,
    non_negative_float,
    positive_float,
    positive_int,
    zero_parameters,
)

NAME = "weibull_aft_survival"
TIME_FLOOR = 1e-6
"""Times below this (including zero and negative ones) are raised to it."""
U_LINEAR = 30.0
"""Where ``exp(u)`` in the likelihood continues linearly (see the module docstring)."""
LOG_LOG_2 = math.log(math.log(2.0))


def build_weibull_survival(
    num_features: int,
    l2: float = 0.0,
    *,
    time_scale: float = 1.0,
    nll_range: tuple[float, float] = (-10.0, 30.0),
    log_time_error_bound: float = 5.0,
    score_bins: int = 0,
    time_bins: int = 0,
    horizon: float | None = None,
) -> ZooModel:
    """Builds Weibull AFT survival regression over ``num_features`` features.

    ``time_scale``: a typical time in the data's unit, where the starting model puts its
    median survival time (see the module docstring);
    ``l2`` is the weight-decay coefficient baked into the grad graph (on ``w`` only);
    ``nll_range`` and ``log_time_error_bound`` set the declared ranges of the eval
    metrics (the negative log-likelihood depends on the time unit: choose accordingly);
    ``score_bins`` and ``time_bins`` (both or neither; 2·T·K at most 240 cells) add the
    survival score histogram, its time grid on ``[0, horizon)`` (default ``2 * time_scale``).
    """
    num_features = positive_int("num_features", num_features)
    l2 = non_negative_float("l2", l2)
    intercept = math.log(positive_float("time_scale", time_scale) / math.log(2.0))
    grid: tuple[int, int, float] | None = None
    if score_bins or time_bins:
        time_bins, score_bins = score_histogram.checked_survival_grid(time_bins, score_bins)
        grid = (time_bins, score_bins, positive_float("horizon", 2.0 * time_scale if horizon is None else horizon))
    elif horizon is not None:
        raise ValueError("horizon needs time_bins and score_bins")
    ranges = {
        "neg_log_likelihood": metric_range("nll_range", nll_range),
        "event": (0.0, 1.0),
        "event_abs_log_time_error": (
            0.0,
            positive_float("log_time_error_bound", log_time_error_bound),
        ),
    }
    parameters = (
        ParameterSpec("w", (num_features,)),
        ParameterSpec("b", ()),
        ParameterSpec("log_shape", ()),
    )
    eval_graph, cells = _eval_graph(num_features, ranges, time_scale, grid)
    return ZooModel(
        name=NAME,
        description=__doc__ or NAME,
        num_features=num_features,
        parameters=parameters,
        label_spec=LabelSpec(
            "float32", (2,), "(time > 0, event: 1.0 observed, 0.0 right-censored)"
        ),
        grad_graph=_grad_graph(num_features, l2),
        eval_graph=eval_graph,
        eval_metric_ranges=ranges | cells,
        inference_outputs=("median_time", "scale"),
        _build_inference=lambda params: _inference_graph(num_features, params),
        _initialize=lambda rng: zero_parameters(parameters) | {"b": np.array(intercept, np.float32)},
        eval_metric_groups=dict.fromkeys(cells, score_histogram.GROUP),
    )


class _Likelihood:
    """Value names shared by the grad and eval graphs of one example."""

    def __init__(self, g: GraphBuilder, num_features: int) -> None:
        self.w = g.add_input("w", FLOAT, [num_features])
        b = g.add_input("b", FLOAT, [])
        self.log_shape = g.add_input("log_shape", FLOAT, [])
        self.x = g.add_input("x", FLOAT, [num_features])
        y = g.add_input("y", FLOAT, [2])

        time = g.op("ReduceSum", g.op("Mul", y, g.constant([1.0, 0.0])), keepdims=0)
        event = g.op("ReduceSum", g.op("Mul", y, g.constant([0.0, 1.0])), keepdims=0)
        self.time = time
        self.event = g.op("Clip", event, g.constant(0.0), g.constant(1.0))
        self.log_time = g.op("Log", g.op("Max", time, g.constant(TIME_FLOOR)))
        self.shape = g.op("Exp", self.log_shape)
        self.mu = linear_score(g, self.x, self.w, b)
        self.u = g.op("Mul", self.shape, g.op("Sub", self.log_time, self.mu))
        # exp(u) below U_LINEAR, its tangent line above; slope = d(cumulative_hazard)/du.
        self.slope = g.op("Exp", g.op("Min", self.u, g.constant(U_LINEAR)))
        overshoot = g.op("Relu", g.op("Sub", self.u, g.constant(U_LINEAR)))
        cumulative_hazard = g.op("Mul", self.slope, g.op("Add", g.constant(1.0), overshoot))
        log_hazard = g.op("Sub", g.op("Add", self.log_shape, self.u), self.log_time)
        self.nll = g.op("Sub", cumulative_hazard, g.op("Mul", self.event, log_hazard))


def _grad_graph(num_features: int, l2: float) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_grad", __doc__ or NAME)
    lik = _Likelihood(g, num_features)
    d_u = g.op("Sub", lik.slope, lik.event)
    d_mu = g.op("Neg", g.op("Mul", lik.shape, d_u))
    grad_w = with_weight_decay(g, g.op("Mul", d_mu, lik.x), lik.w, l2, out="grad_w")
    g.add_output(grad_w, "grad_w", FLOAT, [num_features])
    g.add_output(d_mu, "grad_b", FLOAT, [])
    grad_log_shape = g.op("Sub", g.op("Mul", lik.u, d_u), lik.event, out="grad_log_shape")
    g.add_output(grad_log_shape, "grad_log_shape", FLOAT, [])
    g.add_output(plus_weight_decay(g, lik.nll, [lik.w], l2), "loss", FLOAT, [])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "grad"})


def _log_median(g: GraphBuilder, mu: str, log_shape: str) -> str:
    """``log(median) = mu + log(ln 2) / k``."""
    return g.op("Add", mu, g.op("Mul", g.constant(LOG_LOG_2), g.op("Exp", g.op("Neg", log_shape))))


def _eval_graph(
    num_features: int,
    ranges: Mapping[str, tuple[float, float]],
    time_scale: float,
    grid: tuple[int, int, float] | None,
) -> tuple[onnx.ModelProto, dict[str, tuple[float, float]]]:
    """The eval graph, and the ranges of the survival score histogram's cells (none without ``grid``:
    time bins, score bins, horizon)."""
    g = GraphBuilder(f"{NAME}_eval", __doc__ or NAME)
    lik = _Likelihood(g, num_features)
    nll = clipped(g, lik.nll, ranges["neg_log_likelihood"], out="neg_log_likelihood")
    g.add_output(nll, "neg_log_likelihood", FLOAT, [])
    g.add_output(lik.event, "event", FLOAT, [])
    error = g.op("Abs", g.op("Sub", lik.log_time, _log_median(g, lik.mu, lik.log_shape)))
    capped = g.op("Min", error, g.constant(ranges["event_abs_log_time_error"][1]))
    event_error = g.op("Mul", lik.event, capped, out="event_abs_log_time_error")
    g.add_output(event_error, "event_abs_log_time_error", FLOAT, [])
    cells: dict[str, tuple[float, float]] = {}
    if grid is not None:
        time_bins, bins, horizon = grid
        # 1 - S(time_scale) = 1 - exp(-exp(k (log time_scale - mu))): higher, the event sooner.
        u = g.op("Mul", lik.shape, g.op("Sub", g.constant(math.log(time_scale)), lik.mu))
        risk = g.op("Sub", g.constant(1.0), g.op("Exp", g.op("Neg", g.op("Exp", u))))
        cells = score_histogram.add_survival_cells(
            g, risk, lik.time, lik.event, horizon=horizon, time_bins=time_bins, bins=bins
        )
    return g.to_model({"zoo.model": NAME, "zoo.graph": "eval"}), cells


def _inference_graph(num_features: int, params: Mapping[str, FloatArray]) -> onnx.ModelProto:
    g = GraphBuilder(f"{NAME}_inference", __doc__ or NAME)
    x = g.add_input("x", FLOAT, ["N", num_features])
    w = g.add_initializer("w", params["w"])
    b = g.add_initializer("b", params["b"])
    log_shape = g.add_initializer("log_shape", params["log_shape"])
    mu = linear_score(g, x, w, b)
    median_time = g.op("Exp", _log_median(g, mu, log_shape), out="median_time")
    g.add_output(median_time, "median_time", FLOAT, ["N"])
    g.add_output(g.op("Exp", mu, out="scale"), "scale", FLOAT, ["N"])
    return g.to_model({"zoo.model": NAME, "zoo.graph": "inference"})

