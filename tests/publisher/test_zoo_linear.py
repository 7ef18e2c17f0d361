"""Linear regression: graph against a float64 NumPy reference."""

from __future__ import annotations

import functools

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

from edge_sponsor.publisher.zoo import ZooModel, build_linear_regression

F = 6
L2 = 0.05
BOUND = 4.0


@functools.cache
def model(l2: float = L2) -> ZooModel:
    return build_linear_regression(F, l2=l2, error_bound=BOUND)


@functools.cache
def grad_session(l2: float = L2) -> ort.InferenceSession:
    return session(model(l2).grad_graph)


@functools.cache
def eval_session() -> ort.InferenceSession:
    return session(model().eval_graph)


def reference_loss(l2: float, p: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    residual = float(x @ p["w"] + p["b"] - y)
    return 0.5 * residual**2 + 0.5 * l2 * float(p["w"] @ p["w"])


@pytest.mark.parametrize("l2", [0.0, L2])
def test_gradients_match_finite_differences(l2: float) -> None:
    rng = np.random.default_rng(21)
    errors = []
    for _ in range(25):
        params = random_parameters(model(l2), rng, scale=1.0)
        x = rng.normal(0.0, 2.0, F)
        y = np.array(rng.normal(0.0, 3.0), np.float32)
        errors.append(
            check_against_reference(
                model(l2), grad_session(l2), params, x, y, functools.partial(reference_loss, l2)
            )
        )
    print(f"linear l2={l2}: max relative gradient error {max(errors):.2e}")


# r = x.w + b - y is a float32 difference with an absolute error around 1e-7, so its
# relative accuracy (hence the gradient's) is about 1e-7 / |r|: 1e-5 at |r| = 1e-2.
@pytest.mark.parametrize("residual", [-50.0, -1e-2, 1e-2, 50.0])
def test_large_and_small_residuals(residual: float) -> None:
    rng = np.random.default_rng(3)
    params = random_parameters(model(0.0), rng)
    x = rng.normal(0.0, 1.0, F).astype(np.float32)
    y = np.array(float(x @ params["w"] + params["b"]) - residual, np.float32)
    check_against_reference(
        model(0.0), grad_session(0.0), params, x, y, functools.partial(reference_loss, 0.0)
    )


def test_eval_metrics_match_numpy_and_clip_at_the_bound() -> None:
    rng = np.random.default_rng(8)
    params = random_parameters(model(), rng)
    x = rng.normal(0.0, 1.0, F).astype(np.float32)
    prediction = float(x.astype(np.float64) @ params["w"] + params["b"])
    for residual in (-100.0, -3.0, -0.5, 0.0, 0.25, 2.0, 3.9, 4.1, 1e6):
        y = np.array(prediction - residual, np.float32)
        metrics = run(eval_session(), {**params, "x": x, "y": y})
        assert_metrics_in_ranges(model(), metrics)
        r = prediction - float(y)
        expected = {
            "loss": min(0.5 * r * r, 0.5 * BOUND**2),
            "squared_error": min(r * r, BOUND**2),
            "absolute_error": min(abs(r), BOUND),
        }
        for name, value in expected.items():
            assert float(metrics[name]) == pytest.approx(value, rel=1e-5, abs=1e-5), name


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    label=st.floats(-1e6, 1e6, width=32),
)
def test_eval_metrics_stay_in_declared_ranges(seed: int, scale: float, label: float) -> None:
    rng = np.random.default_rng(seed)
    params = random_parameters(model(), rng, scale=scale)
    x = rng.normal(0.0, scale, F).astype(np.float32)
    metrics = run(eval_session(), {**params, "x": x, "y": np.array(label, np.float32)})
    assert_metrics_in_ranges(model(), metrics)


def test_inference_matches_numpy_for_a_batch() -> None:
    rng = np.random.default_rng(4)
    params = random_parameters(model(), rng, scale=1.0)
    x = rng.normal(0.0, 1.0, (11, F)).astype(np.float32)
    (prediction,) = run(session(model().inference_model(params)), {"x": x}).values()
    expected = x.astype(np.float64) @ params["w"].astype(np.float64) + float(params["b"])
    np.testing.assert_allclose(prediction, expected, rtol=1e-5, atol=1e-6)
