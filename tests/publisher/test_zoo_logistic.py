"""Logistic regression: graph against a float64 NumPy reference."""

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

from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import ZooModel, build_logistic_regression, score_histogram
from tests.runtime.helpers import manifest_for

F = 5
L2 = 0.1


@functools.cache
def model(l2: float = L2) -> ZooModel:
    return build_logistic_regression(F, l2=l2)


@functools.cache
def grad_session(l2: float = L2) -> ort.InferenceSession:
    return session(model(l2).grad_graph)


@functools.cache
def eval_session() -> ort.InferenceSession:
    return session(model().eval_graph)


def logit(p: Arrays, x: np.ndarray) -> float:
    return float(x @ p["w"] + p["b"])


def cross_entropy(z: float, y: float) -> float:
    return max(z, 0.0) - z * y + float(np.log1p(np.exp(-abs(z))))


def reference_loss(l2: float, p: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    return cross_entropy(logit(p, x), float(y)) + 0.5 * l2 * float(p["w"] @ p["w"])


@pytest.mark.parametrize("l2", [0.0, L2])
def test_gradients_match_finite_differences(l2: float) -> None:
    rng = np.random.default_rng(11)
    errors = []
    for trial in range(25):
        params = random_parameters(model(l2), rng, scale=1.0)
        x = rng.normal(0.0, 2.0, F)
        label = [0.0, 1.0, float(rng.uniform())][trial % 3]  # hard and soft labels
        y = np.array(label, np.float32)
        errors.append(
            check_against_reference(
                model(l2), grad_session(l2), params, x, y, functools.partial(reference_loss, l2)
            )
        )
    print(f"logistic l2={l2}: max relative gradient error {max(errors):.2e}")


@pytest.mark.parametrize("target", [-50.0, -20.0, -5.0, 5.0, 20.0, 50.0])
@pytest.mark.parametrize("label", [0.0, 1.0, 0.3])
def test_extreme_logits_stay_finite_and_accurate(target: float, label: float) -> None:
    rng = np.random.default_rng(int(target) + 100)
    params = random_parameters(model(), rng)
    x = rng.normal(0.0, 1.0, F).astype(np.float32)
    params["b"] = np.array(target - float(x @ params["w"]), np.float32)
    y = np.array(label, np.float32)
    check_against_reference(
        model(), grad_session(), params, x, y, functools.partial(reference_loss, L2)
    )
    # Without weight decay the gradient of a confident, correct prediction is about
    # exp(-|z|) (2e-22 at |z| = 50, still a normal float32): it must stay accurate
    # relative to itself, not merely below 1e-8.
    check_against_reference(
        model(0.0),
        grad_session(0.0),
        params,
        x,
        y,
        functools.partial(reference_loss, 0.0),
        floor=1e-30,
    )


def test_confidently_right_examples_keep_their_tiny_gradient() -> None:
    params = {"w": np.zeros(F, np.float32), "b": np.array(20.0, np.float32)}
    outputs = run(
        grad_session(0.0), {**params, "x": np.ones(F, np.float32), "y": np.array(1.0, np.float32)}
    )
    assert float(outputs["grad_b"]) == pytest.approx(-1.0 / (1.0 + np.exp(20.0)), rel=1e-5)


def test_eval_metrics_match_numpy() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        params = random_parameters(model(), rng, scale=1.0)
        x = rng.normal(0.0, 1.0, F).astype(np.float32)
        y = np.array(rng.integers(0, 2), np.float32)
        metrics = run(eval_session(), {**params, "x": x, "y": y})
        assert_metrics_in_ranges(model(), metrics)
        z = logit(params, x.astype(np.float64))
        probability = 1.0 / (1.0 + np.exp(-z))
        assert float(metrics["loss"]) == pytest.approx(
            min(cross_entropy(z, float(y)), 10.0), rel=1e-5, abs=1e-6
        )
        assert float(metrics["correct"]) == float((z > 0) == (y > 0.5))
        assert float(metrics["brier"]) == pytest.approx((probability - y) ** 2, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    label=st.sampled_from([0.0, 1.0, 0.5, -3.0, 7.0]),
)
def test_eval_metrics_stay_in_declared_ranges(seed: int, scale: float, label: float) -> None:
    rng = np.random.default_rng(seed)
    params = random_parameters(model(), rng, scale=scale)
    x = rng.normal(0.0, scale, F).astype(np.float32)
    metrics = run(eval_session(), {**params, "x": x, "y": np.array(label, np.float32)})
    assert_metrics_in_ranges(model(), metrics)


def test_inference_matches_numpy_for_a_batch() -> None:
    rng = np.random.default_rng(2)
    params = random_parameters(model(), rng, scale=1.0)
    x = rng.normal(0.0, 1.0, (9, F)) * np.array([[0.1], [1], [1], [3], [10], [30], [60], [1], [1]])
    x = x.astype(np.float32)  # logits from about 0 to +-50: both tails included
    (probability,) = run(session(model().inference_model(params)), {"x": x}).values()
    z = x.astype(np.float64) @ params["w"].astype(np.float64) + float(params["b"])
    assert np.abs(z).max() > 20
    # Relative accuracy in both tails (onnxruntime's Sigmoid kernel would fail this).
    np.testing.assert_allclose(probability, 1.0 / (1.0 + np.exp(-z)), rtol=1e-5, atol=0)


@pytest.mark.parametrize("mode", [RuntimeMode.BATCHED, RuntimeMode.SCAN])
def test_the_score_histogram_counts_each_patient_once_in_the_cell_of_its_risk_and_outcome(mode: RuntimeMode) -> None:
    bins = 10
    zoo_model = build_logistic_regression(F, score_bins=bins)
    graphs = zoo_graphs(zoo_model)
    manifest = manifest_for(zoo_model, graphs)
    (group,) = manifest.metric_groups
    assert group.name == score_histogram.GROUP and group.bound == 1.0
    assert [manifest.metrics[i].name for i in group.members] == list(score_histogram.cell_names(bins))
    assert score_histogram.bins_of([m.name for m in manifest.metrics]) == bins
    wrapper = CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION, mode=mode)
    assert wrapper.mode is mode
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 1.5, (400, F)).astype(np.float32)
    y = rng.choice(np.array([0.0, 0.3, 0.7, 1.0], np.float32), 400)  # soft labels: positive above 0.5
    params = random_parameters(zoo_model, rng, scale=1.0)
    sums = dict(zip((m.name for m in manifest.metrics), wrapper.clipped_sum(params, RowBatch(x, y)), strict=True))
    got = score_histogram.histogram(sums, bins)
    probability = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ params["w"] + params["b"])))
    expected = np.zeros((2, bins))
    np.add.at(expected, ((y > 0.5).astype(int), np.minimum(np.floor(probability * bins), bins - 1).astype(int)), 1.0)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("bins", [1, 31, True, 2.5])
def test_score_bins_out_of_range_are_refused(bins: object) -> None:
    with pytest.raises(ValueError, match="score_bins must be a whole number from 2 to 30"):
        build_logistic_regression(F, score_bins=bins)  # type: ignore[arg-type]
