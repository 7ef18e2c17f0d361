"""MLP classifier: hand-written backward pass against a float64 NumPy reference."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo_checks import (
    Arrays,
    assert_metrics_in_ranges,
    check_against_reference,
    run,
    session,
)

from edge_sponsor.publisher.zoo import ZooModel, build_mlp_classifier

F = 4


@dataclass(frozen=True)
class Config:
    hidden: tuple[int, ...]
    num_classes: int
    activation: str
    l2: float = 0.0


CONFIGS = [
    Config((8, 6), 3, "relu"),
    Config((5,), 4, "tanh", l2=0.01),
    Config((4, 4, 3), 2, "tanh"),
    Config((), 3, "relu", l2=0.1),
]
CONFIG_IDS = ["relu-8-6", "tanh-5-l2", "tanh-4-4-3-binary", "no-hidden-l2"]


@functools.cache
def model(config: Config) -> ZooModel:
    return build_mlp_classifier(
        F, config.hidden, config.num_classes, config.activation, l2=config.l2
    )


@functools.cache
def sessions(config: Config) -> tuple[ort.InferenceSession, ort.InferenceSession]:
    return session(model(config).grad_graph), session(model(config).eval_graph)


def layer_names(config: Config) -> list[tuple[str, str]]:
    suffixes = [str(i) for i in range(1, len(config.hidden) + 1)] + ["out"]
    return [(f"W{s}", f"b{s}") for s in suffixes]


def reference_logits(config: Config, p: Arrays, x: np.ndarray) -> np.ndarray:
    h = x
    *hidden, (w_out, b_out) = layer_names(config)
    for weight, bias in hidden:
        a = h @ p[weight] + p[bias]
        h = np.maximum(a, 0.0) if config.activation == "relu" else np.tanh(a)
    logits: np.ndarray = h @ p[w_out] + p[b_out]
    return logits


def reference_loss(config: Config, p: Arrays, x: np.ndarray, y: np.ndarray) -> float:
    logits = reference_logits(config, p, x)
    label = int(y)
    cross_entropy = 0.0
    if 0 <= label < config.num_classes:
        # logsumexp(l) - l_y = (l_top - l_y) + log1p(sum_{j != top} exp(l_j - l_top)): keeps
        # the tiny losses of confident, correct predictions exact (and so their differences).
        top = int(np.argmax(logits))
        others = np.delete(logits, top) - logits[top]
        cross_entropy = float(logits[top] - logits[label]) + float(np.log1p(np.exp(others).sum()))
    decay = sum(float((p[w] ** 2).sum()) for w, _ in layer_names(config))
    return float(cross_entropy) + 0.5 * config.l2 * decay


def draw_parameters(config: Config, rng: np.random.Generator) -> Arrays:
    params = model(config).init_parameters(rng)
    for _, bias in layer_names(config):
        params[bias] = rng.normal(0.0, 0.3, params[bias].shape).astype(np.float32)
    return params


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_gradients_match_finite_differences(config: Config) -> None:
    rng = np.random.default_rng(31)
    grad, _ = sessions(config)
    errors = []
    for _ in range(12):
        params = draw_parameters(config, rng)
        x = rng.normal(0.0, 1.5, F)
        y = np.array(rng.integers(0, config.num_classes), np.int64)
        errors.append(
            check_against_reference(
                model(config), grad, params, x, y, functools.partial(reference_loss, config)
            )
        )
    print(f"mlp {config}: max relative gradient error {max(errors):.2e}")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("margin", [5.0, 15.0, 50.0])
@pytest.mark.parametrize("which", ["right", "wrong"])
def test_extreme_logits_stay_finite_and_accurate(config: Config, margin: float, which: str) -> None:
    """Output layer rescaled so the logits spread over about ``margin`` in each direction."""
    rng = np.random.default_rng(int(margin))
    params = draw_parameters(config, rng)
    x = rng.normal(0.0, 1.0, F)
    logits = reference_logits(config, {k: v.astype(np.float64) for k, v in params.items()}, x)
    factor = margin / max(float(np.abs(logits - logits.mean()).max()), 1e-3)
    w_out, b_out = layer_names(config)[-1]
    params[w_out] = params[w_out] * np.float32(factor)
    params[b_out] = params[b_out] * np.float32(factor)
    scaled = reference_logits(config, {k: v.astype(np.float64) for k, v in params.items()}, x)
    label = int(np.argmax(scaled) if which == "right" else np.argmin(scaled))
    grad, _ = sessions(config)
    check_against_reference(
        model(config),
        grad,
        params,
        x,
        np.array(label, np.int64),
        functools.partial(reference_loss, config),
        # Truly relative while the tiny gradients of confident, correct predictions are
        # still normal float32 numbers (margin 15: about 1e-13); at margin 50 they underflow.
        floor=1e-30 if margin <= 15 else 1e-8,
    )


@pytest.mark.parametrize("label", [-1, 3, 7, 2**40])
def test_out_of_range_labels_contribute_nothing(label: int) -> None:
    config = CONFIGS[0]
    rng = np.random.default_rng(5)
    params = draw_parameters(config, rng)
    x = rng.normal(0.0, 1.0, F).astype(np.float32)
    grad, evaluation = sessions(config)
    feeds = {**params, "x": x, "y": np.array(label, np.int64)}
    outputs = run(grad, feeds)
    assert all(np.all(value == 0.0) for value in outputs.values())
    assert {name: float(v) for name, v in run(evaluation, feeds).items()} == {
        "loss": 0.0,
        "correct": 0.0,
    }


def test_correct_follows_argmax_including_its_first_index_tie_break() -> None:
    config = CONFIGS[0]
    _, evaluation = sessions(config)
    shapes = draw_parameters(config, np.random.default_rng(0))
    zeros = {name: np.zeros_like(value) for name, value in shapes.items()}
    x = np.ones(F, np.float32)
    for label in range(config.num_classes):  # all logits tie: argmax is class 0
        metrics = run(evaluation, {**zeros, "x": x, "y": np.array(label, np.int64)})
        assert float(metrics["correct"]) == float(label == 0)
    tied = {**zeros, "bout": np.array([0.0, 2.0, 2.0], np.float32)}
    for label, expected in [(0, 0.0), (1, 1.0), (2, 0.0)]:
        metrics = run(evaluation, {**tied, "x": x, "y": np.array(label, np.int64)})
        assert float(metrics["correct"]) == expected


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_eval_metrics_match_numpy(config: Config) -> None:
    rng = np.random.default_rng(41)
    _, evaluation = sessions(config)
    for _ in range(15):
        params = draw_parameters(config, rng)
        x = rng.normal(0.0, 1.0, F).astype(np.float32)
        y = np.array(rng.integers(0, config.num_classes), np.int64)
        metrics = run(evaluation, {**params, "x": x, "y": y})
        assert_metrics_in_ranges(model(config), metrics)
        p64 = {k: v.astype(np.float64) for k, v in params.items()}
        x64 = x.astype(np.float64)
        without_decay = Config(config.hidden, config.num_classes, config.activation)
        data_loss = reference_loss(without_decay, p64, x64, y)
        assert float(metrics["loss"]) == pytest.approx(min(data_loss, 10.0), rel=1e-5, abs=1e-6)
        predicted = int(np.argmax(reference_logits(config, p64, x64)))
        assert float(metrics["correct"]) == float(predicted == int(y))


@settings(max_examples=40, deadline=None)
@given(
    config=st.sampled_from(CONFIGS),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    label=st.integers(-2, 5),
)
def test_eval_metrics_stay_in_declared_ranges(
    config: Config, seed: int, scale: float, label: int
) -> None:
    rng = np.random.default_rng(seed)
    params = {k: v * np.float32(scale) for k, v in draw_parameters(config, rng).items()}
    x = rng.normal(0.0, scale, F).astype(np.float32)
    _, evaluation = sessions(config)
    metrics = run(evaluation, {**params, "x": x, "y": np.array(label, np.int64)})
    assert_metrics_in_ranges(model(config), metrics)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_inference_matches_numpy_for_a_batch(config: Config) -> None:
    rng = np.random.default_rng(6)
    params = draw_parameters(config, rng)
    x = rng.normal(0.0, 1.0, (13, F)).astype(np.float32)
    (probabilities,) = run(session(model(config).inference_model(params)), {"x": x}).values()
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    logits = np.stack([reference_logits(config, p64, row) for row in x.astype(np.float64)])
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert probabilities.shape == (13, config.num_classes)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)


def test_glorot_initialisation_bounds() -> None:
    config = Config((64, 32), 5, "relu")
    params = model(config).init_parameters(np.random.default_rng(0))
    for (weight, bias), (fan_in, fan_out) in zip(
        layer_names(config), [(F, 64), (64, 32), (32, 5)], strict=True
    ):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        assert params[weight].shape == (fan_in, fan_out)
        assert np.abs(params[weight]).max() <= limit
        assert np.abs(params[weight]).max() > 0.8 * limit
        assert np.all(params[bias] == 0.0)
