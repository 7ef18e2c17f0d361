"""Weibull AFT survival: hand-derived gradients against a float64 NumPy reference."""

from __future__ import annotations

import functools
import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo_checks import (
    Arrays,
    assert_metrics_in_ranges,
    check_against_reference,
    random_parameters,
    run,
    session,
)

from edge_sponsor.publisher.zoo import ZooModel, build_weibull_survival
from edge_sponsor.publisher.zoo.weibull import TIME_FLOOR, U_LINEAR

F = 5
L2 = 0.02
ERROR_BOUND = 3.0


@functools.cache
def model(l2: float = L2) -> ZooModel:
    return build_weibull_survival(F, l2=l2, log_time_error_bound=ERROR_BOUND)


@functools.cache
def grad_session(l2: float = L2) -> ort.InferenceSession:
    return session(model(l2).grad_graph)


@functools.cache
def eval_session() -> ort.InferenceSession:
    return session(model().eval_graph)


def reference_loss(l2: float, p: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    """The documented NLL, including its linear continuation of exp(u) above U_LINEAR."""
    log_time = math.log(max(float(y[0]), TIME_FLOOR))
    event = min(max(float(y[1]), 0.0), 1.0)
    log_shape = float(p["log_shape"])
    u = math.exp(log_shape) * (log_time - float(x @ p["w"] + p["b"]))
    cumulative_hazard = math.exp(min(u, U_LINEAR)) * (1.0 + max(u - U_LINEAR, 0.0))
    nll = cumulative_hazard - event * (log_shape + u - log_time)
    return nll + 0.5 * l2 * float(p["w"] @ p["w"])


def textbook_nll(p: Arrays, x: np.ndarray, time: float, event: float) -> float:
    """-(d log h(t) + log S(t)) for Weibull with scale exp(x.w + b), shape exp(log_shape)."""
    scale = math.exp(float(x @ p["w"] + p["b"]))
    shape = math.exp(float(p["log_shape"]))
    log_hazard = math.log(shape / scale) + (shape - 1.0) * math.log(time / scale)
    log_survival = -float((time / scale) ** shape)
    return -(event * log_hazard + log_survival)


def draw_example(rng: np.random.Generator) -> tuple[Arrays, np.ndarray, np.ndarray]:
    params = random_parameters(model(), rng, scale=0.5)
    x = rng.normal(0.0, 1.0, F).astype(np.float32)
    y = np.array([math.exp(rng.normal(0.0, 1.0)), rng.integers(0, 2)], np.float32)
    return params, x, y


def with_u(params: Arrays, x: np.ndarray, time: float, u: float) -> Arrays:
    """Parameters with ``b`` moved so that ``u = k * (log t - mu)`` takes the value ``u``."""
    shape = math.exp(float(params["log_shape"]))
    b = math.log(time) - u / shape - float(x.astype(np.float64) @ params["w"])
    return {**params, "b": np.array(b, np.float32)}


@pytest.mark.parametrize("l2", [0.0, L2])
def test_gradients_match_finite_differences(l2: float) -> None:
    rng = np.random.default_rng(51)
    errors = []
    for trial in range(25):
        params, x, y = draw_example(rng)
        if trial % 5 == 0:
            y[1] = 0.5  # fractional events act as weights
        errors.append(
            check_against_reference(
                model(l2), grad_session(l2), params, x, y, functools.partial(reference_loss, l2)
            )
        )
    print(f"weibull l2={l2}: max relative gradient error {max(errors):.2e}")


@pytest.mark.parametrize("u", [-50.0, -20.0, -1e-3, 5.0, 25.0, 29.9, 30.1, 40.0, 50.0])
@pytest.mark.parametrize("event", [0.0, 1.0])
def test_extreme_tails_stay_finite_and_accurate(u: float, event: float) -> None:
    rng = np.random.default_rng(int(abs(u) * 10))
    params, x, _ = draw_example(rng)
    time = 2.5
    params = with_u(params, x, time, u)
    y = np.array([time, event], np.float32)
    check_against_reference(
        model(0.0),
        grad_session(0.0),
        params,
        x,
        y,
        functools.partial(reference_loss, 0.0),
        floor=1e-30,
    )


def test_likelihood_is_the_textbook_weibull_one() -> None:
    rng = np.random.default_rng(61)
    for _ in range(20):
        params, x, y = draw_example(rng)
        p64 = {k: v.astype(np.float64) for k, v in params.items()}
        x64 = x.astype(np.float64)
        time, event = float(y[0]), float(y[1])
        expected = textbook_nll(p64, x64, time, event)
        assert reference_loss(0.0, p64, x64, y.astype(np.float64)) == pytest.approx(expected)
        outputs = run(grad_session(0.0), {**params, "x": x, "y": y})
        assert float(outputs["loss"]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("bad_time", [0.0, -5.0, 1e-9])
def test_times_below_the_floor_are_floored(bad_time: float) -> None:
    params, x, _ = draw_example(np.random.default_rng(1))
    floored = run(grad_session(), {**params, "x": x, "y": np.array([TIME_FLOOR, 1.0], np.float32)})
    outputs = run(grad_session(), {**params, "x": x, "y": np.array([bad_time, 1.0], np.float32)})
    for name, value in outputs.items():
        assert np.all(np.isfinite(value)), name
        np.testing.assert_array_equal(value, floored[name])


def test_eval_metrics_match_numpy() -> None:
    rng = np.random.default_rng(71)
    low, high = model().eval_metric_ranges["neg_log_likelihood"]
    for _ in range(25):
        params, x, y = draw_example(rng)
        y[0] *= np.float32(rng.choice([1e-3, 1.0, 1e3]))
        metrics = run(eval_session(), {**params, "x": x, "y": y})
        assert_metrics_in_ranges(model(), metrics)
        p64 = {k: v.astype(np.float64) for k, v in params.items()}
        x64 = x.astype(np.float64)
        nll = reference_loss(0.0, p64, x64, y.astype(np.float64))
        assert float(metrics["neg_log_likelihood"]) == pytest.approx(
            min(max(nll, low), high), rel=1e-5, abs=1e-5
        )
        assert float(metrics["event"]) == float(y[1])
        log_median = float(x64 @ p64["w"] + p64["b"]) + math.log(math.log(2.0)) / math.exp(
            float(p64["log_shape"])
        )
        error = float(y[1]) * min(abs(math.log(float(y[0])) - log_median), ERROR_BOUND)
        assert float(metrics["event_abs_log_time_error"]) == pytest.approx(error, abs=2e-5)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    log_shape=st.floats(-5.0, 5.0),
    time=st.floats(width=32, allow_nan=False, allow_infinity=False),
    event=st.floats(-2.0, 2.0, width=32),
)
def test_eval_metrics_stay_in_declared_ranges(
    seed: int, scale: float, log_shape: float, time: float, event: float
) -> None:
    rng = np.random.default_rng(seed)
    params = random_parameters(model(), rng, scale=scale)
    params["log_shape"] = np.array(log_shape, np.float32)
    x = rng.normal(0.0, scale, F).astype(np.float32)
    y = np.array([time, event], np.float32)
    metrics = run(eval_session(), {**params, "x": x, "y": y})
    assert_metrics_in_ranges(model(), metrics)


def test_inference_outputs_the_median_and_scale() -> None:
    rng = np.random.default_rng(81)
    params = random_parameters(model(), rng, scale=0.5)
    x = rng.normal(0.0, 1.0, (10, F)).astype(np.float32)
    outputs = run(session(model().inference_model(params)), {"x": x})
    mu = x.astype(np.float64) @ params["w"].astype(np.float64) + float(params["b"])
    shape = math.exp(float(params["log_shape"]))
    np.testing.assert_allclose(outputs["scale"], np.exp(mu), rtol=1e-5)
    np.testing.assert_allclose(
        outputs["median_time"], np.exp(mu) * math.log(2.0) ** (1.0 / shape), rtol=1e-5
    )
    survival_at_median = np.exp(-((outputs["median_time"] / np.exp(mu)) ** shape))
    np.testing.assert_allclose(survival_at_median, 0.5, rtol=1e-4)


@pytest.mark.parametrize("time_scale", [1.0, 30.0, 365.0, 3650.0])
def test_the_starting_model_puts_its_median_at_the_declared_time_scale(time_scale: float) -> None:
    built = build_weibull_survival(F, time_scale=time_scale)
    start = built.init_parameters(np.random.default_rng(0))
    outputs = run(session(built.inference_model(start)), {"x": np.zeros((3, F), np.float32)})
    np.testing.assert_allclose(outputs["median_time"], time_scale, rtol=1e-5)
    assert not start["w"].any() and float(start["log_shape"]) == 0.0


def test_started_at_the_data_time_scale_the_first_gradients_are_not_all_about_the_unit() -> None:
    """Follow-up in days (median about a year): started at 1 day, every row's gradient is
    dominated by the time unit (|grad b| about k·t/λ, hundreds); started at the time scale,
    they are ten times smaller and about the covariates (the features' own scale, ‖x‖ ≈ 2)."""
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.0, (200, F)).astype(np.float32)
    times = rng.exponential(365.0 / math.log(2.0), 200)
    y = np.stack([times, rng.integers(0, 2, 200)], axis=1).astype(np.float32)

    def median_gradient_norm(time_scale: float) -> float:
        built = build_weibull_survival(F, time_scale=time_scale)
        start = built.init_parameters(rng)
        grads = session(built.grad_graph)
        norms = []
        for row in range(200):
            out = run(grads, {**start, "x": x[row], "y": y[row]})
            norms.append(math.sqrt(sum(float(np.sum(np.square(v))) for v in out.values() if v.dtype.kind == "f")))
        return float(np.median(norms))

    at_unit, at_scale = median_gradient_norm(1.0), median_gradient_norm(365.0)
    assert at_unit > 10 * at_scale, (at_unit, at_scale)


@pytest.mark.parametrize("time_scale", [0.0, -1.0, math.inf, math.nan])
def test_a_time_scale_that_is_not_a_positive_time_is_refused(time_scale: float) -> None:
    with pytest.raises(ValueError, match="time_scale"):
        build_weibull_survival(F, time_scale=time_scale)


@pytest.mark.parametrize("mode", ["batched", "scan"])
def test_the_survival_score_histogram_puts_each_patient_in_its_event_time_and_risk_cell(mode: str) -> None:
    from agent.runtime.isolation import GraphRole
    from agent.runtime.rows import RowBatch
    from agent.runtime.sessions import CompiledWrapper, RuntimeMode
    from edge_sponsor.publisher.packaging import zoo_graphs
    from edge_sponsor.publisher.zoo import score_histogram
    from tests.runtime.helpers import manifest_for

    time_bins, bins, scale = 4, 6, 10.0
    zoo_model = build_weibull_survival(F, time_scale=scale, score_bins=bins, time_bins=time_bins)
    graphs = zoo_graphs(zoo_model)
    manifest = manifest_for(zoo_model, graphs)
    (group,) = manifest.metric_groups
    assert len(group.members) == 2 * time_bins * bins == 48
    assert score_histogram.survival_grid_of([m.name for m in manifest.metrics]) == (time_bins, bins)
    wrapper = CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION, mode=RuntimeMode(mode))
    rng = np.random.default_rng(8)
    n = 300
    x = rng.normal(0.0, 1.0, (n, F)).astype(np.float32)
    # Times up to past the horizon (2 x scale = 20) and a few at or below 0.
    time = np.concatenate([rng.uniform(0.0, 30.0, n - 3), [0.0, -1.0, 20.0]]).astype(np.float32)
    event = rng.integers(0, 2, n).astype(np.float32)
    params = {
        "w": rng.normal(0.0, 0.5, F).astype(np.float32),
        "b": np.array(math.log(scale), np.float32),
        "log_shape": np.array(0.3, np.float32),
    }
    sums = wrapper.clipped_sum(params, RowBatch(x, np.stack([time, event], axis=1)))
    got = score_histogram.survival_histogram(dict(zip((m.name for m in manifest.metrics), sums, strict=True)), 4, 6)
    mu = x.astype(np.float64) @ params["w"] + float(params["b"])
    risk = 1.0 - np.exp(-np.exp(math.exp(0.3) * (math.log(scale) - mu)))
    score_bin = np.minimum(np.floor(risk * bins), bins - 1).astype(int)
    time_bin = np.clip(np.floor(time.astype(np.float64) / 20.0 * time_bins), 0, time_bins - 1).astype(int)
    expected = np.zeros((2, time_bins, bins))
    np.add.at(expected, (event.astype(int), time_bin, score_bin), 1.0)
    # float32 risk may land across a bin edge from the float64 reference for a rare patient.
    assert np.abs(got - expected).sum() <= 2 and got.sum() == n


def test_a_survival_score_histogram_needs_a_sensible_grid() -> None:
    with pytest.raises(ValueError, match="time_bins must be a whole number"):
        build_weibull_survival(F, score_bins=8)
    with pytest.raises(ValueError, match="at most 240 cells"):
        build_weibull_survival(F, score_bins=30, time_bins=30)
    with pytest.raises(ValueError, match="horizon needs time_bins"):
        build_weibull_survival(F, horizon=5.0)
    with pytest.raises(ValueError, match="horizon"):
        build_weibull_survival(F, score_bins=4, time_bins=4, horizon=-1.0)
