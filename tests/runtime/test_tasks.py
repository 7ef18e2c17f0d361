"""The task computations: DP-SGD arithmetic, noise scales, sampling, typed errors, controls."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.runtime.errors import (
    GraphExecutionError,
    HyperparameterError,
    NoUsableRowsError,
    ParameterError,
    TaskCancelledError,
)
from agent.runtime.isolation import GraphRole
from agent.runtime.parameters import checked_parameters
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from agent.runtime.tasks import (
    Controls,
    EvaluationSettings,
    GradientSettings,
    Randomness,
    TrainingSettings,
    dp_evaluate,
    dp_gradient,
    dp_local_training,
)
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import build_logistic_regression, build_mlp_classifier
from tests.runtime.helpers import ArrayRowSource, manifest_for

F = 4


def logistic() -> tuple[CompiledWrapper, CompiledWrapper]:
    model = build_logistic_regression(F)
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    return (
        CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT),
        CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION),
    )


def data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32) * 2
    return x, (rng.random(n) < 0.5).astype(np.float32)


def start() -> dict[str, np.ndarray]:
    return {"w": np.array([0.3, -0.2, 0.1, 0.5], np.float32), "b": np.array(0.1, np.float32)}


def logistic_clipped_sum(theta: np.ndarray, x: np.ndarray, y: np.ndarray, clip: float) -> np.ndarray:
    """Analytic per-example gradients of logistic regression, clipped and summed (float64)."""
    z = x.astype(np.float64) @ theta[:F] + theta[F]
    residual = 1 / (1 + np.exp(-z)) - y
    per_example = np.concatenate([residual[:, None] * x, residual[:, None]], axis=1)
    norms = np.linalg.norm(per_example, axis=1)
    return (per_example * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)


def test_local_training_is_clipped_gradient_descent_at_sigma_zero() -> None:
    grad, _ = logistic()
    x, y = data()
    settings = TrainingSettings(GradientSettings(0.8, 0.0, 1.0), local_steps=3, learning_rate=0.5)
    release = dp_local_training(grad, ArrayRowSource(x, y, batch_size=16), start(), settings)
    theta0 = np.concatenate([start()["w"], [start()["b"]]]).astype(np.float64)
    theta = theta0.copy()
    for _ in range(3):
        theta -= 0.5 * logistic_clipped_sum(theta, x, y, 0.8) / (1.0 * len(x))
    np.testing.assert_allclose(release.delta["w"], (theta - theta0)[:F], atol=1e-6)
    np.testing.assert_allclose(release.delta["b"], (theta - theta0)[F], atol=1e-6)
    assert release.delta["b"].shape == () and release.steps == 3


def test_local_training_normalises_by_the_expected_batch_size() -> None:
    grad, _ = logistic()
    x, y = data()
    theta0 = np.concatenate([start()["w"], [start()["b"]]]).astype(np.float64)
    one_step = 0.5 * logistic_clipped_sum(theta0, x, y, 0.8)
    # q = 1: expected batch q * N; a public expected_rows replaces N.
    release = dp_local_training(
        grad,
        ArrayRowSource(x, y),
        start(),
        TrainingSettings(GradientSettings(0.8, 0.0, 1.0), 1, 0.5, expected_rows=1000),
    )
    np.testing.assert_allclose(release.delta["w"], -one_step[:F] / 1000, rtol=1e-5)


def test_local_training_noise_scale_is_eta_sigma_c_over_qn() -> None:
    model = build_mlp_classifier(8, (32,), 2)
    graphs = zoo_graphs(model)
    grad = CompiledWrapper(graphs["grad"], manifest_for(model, graphs), GraphRole.GRADIENT)
    params = model.init_parameters(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 8)).astype(np.float32), rng.integers(0, 2, 20)
    exact = dp_local_training(
        grad, ArrayRowSource(x, y), params, TrainingSettings(GradientSettings(1.0, 0.0, 1.0), 1, 0.2)
    )
    noisy = dp_local_training(
        grad,
        ArrayRowSource(x, y),
        params,
        TrainingSettings(GradientSettings(1.0, 2.0, 1.0), 1, 0.2),
        randomness=Randomness(noise=np.random.default_rng(2)),
    )
    residual = np.concatenate([(noisy.delta[k] - exact.delta[k]).reshape(-1) for k in params])
    expected_std = 0.2 * 2.0 * 1.0 / (1.0 * 20)
    assert residual.size == 8 * 32 + 32 + 32 * 2 + 2
    assert abs(residual.std() / expected_std - 1) < 0.1


def test_poisson_sample_of_each_pass_feeds_the_wrapper() -> None:
    """dp_gradient at sigma = 0 equals the clipped sum of the rows the same generator picks."""
    grad, _ = logistic()
    x, y = data(500)
    release = dp_gradient(
        grad,
        ArrayRowSource(x, y, batch_size=64),
        start(),
        GradientSettings(0.8, 0.0, 0.3, count_noise_multiplier=0.0),
        randomness=Randomness(sampling=np.random.default_rng(42)),
    )
    replay = np.random.default_rng(42)
    mask = np.concatenate([replay.random(min(64, 500 - s)) < 0.3 for s in range(0, 500, 64)])
    theta0 = np.concatenate([start()["w"], [start()["b"]]]).astype(np.float64)
    expected = logistic_clipped_sum(theta0, x[mask], y[mask], 0.8)
    np.testing.assert_allclose(release.sums["w"], expected[:F], rtol=1e-5, atol=1e-6)
    assert release.noisy_count == mask.sum()
    assert 100 < mask.sum() < 200


@pytest.mark.parametrize("grouped", [False, True])
def test_evaluation_noise_per_metric_is_sigma_sqrt_blocks_times_max_abs_bound(grouped: bool) -> None:
    _, evaluation = logistic()
    blocks = len(evaluation.manifest.metrics)  # no groups: every metric its own block
    if grouped:
        # correct and brier (both in [0, 1]) bounded together: one block instead of two.
        manifest = evaluation.manifest
        metrics = tuple(replace(m, group="g") if m.name in ("correct", "brier") else m for m in manifest.metrics)
        evaluation = CompiledWrapper(
            zoo_graphs(build_logistic_regression(F))["eval"],
            replace(manifest, metrics=metrics),
            GraphRole.EVALUATION,
        )
        blocks -= 1
    x, y = data(4)
    ranges = [(m.low, m.high) for m in evaluation.manifest.metrics]
    sensitivity = np.array([max(abs(lo), abs(hi)) for lo, hi in ranges])
    assert evaluation.manifest.metric_noise_scales() == tuple(np.sqrt(blocks) * sensitivity)
    exact = evaluation.clipped_sum(start(), RowBatch(x, y))
    sigma = 0.7
    noise = np.random.default_rng(3)
    draws = np.array(
        [
            [
                *dp_evaluate(
                    evaluation,
                    ArrayRowSource(x, y),
                    start(),
                    EvaluationSettings(sigma, count_noise_multiplier=2.0),
                    randomness=Randomness(noise=noise),
                ).sums.values()
            ]
            for _ in range(1500)
        ]
    )
    std = (draws - exact).std(axis=0)
    expected = sigma * math.sqrt(blocks) * sensitivity
    np.testing.assert_allclose(std, expected, rtol=0.08)


def test_noisy_count_has_std_count_sigma() -> None:
    grad, _ = logistic()
    x, y = data(10)
    noise = np.random.default_rng(4)
    counts = [
        dp_gradient(
            grad,
            ArrayRowSource(x, y),
            start(),
            GradientSettings(1.0, 0.0, 1.0, count_noise_multiplier=3.0),
            randomness=Randomness(noise=noise),
        ).noisy_count
        for _ in range(1500)
    ]
    assert abs(np.std(counts) / 3.0 - 1) < 0.08 and abs(np.mean(counts) - 10) < 0.5
    no_count = dp_gradient(grad, ArrayRowSource(x, y), start(), GradientSettings(1.0, 1.0, 1.0))
    assert no_count.noisy_count is None


@pytest.mark.parametrize(
    ("params", "name", "words"),
    [
        ({"w": np.zeros(F, np.float32)}, "b", "missing"),
        ({**start(), "extra": np.zeros(1, np.float32)}, "extra", "not a parameter"),
        ({**start(), "w": np.zeros(F, np.float64)}, "w", "float64"),
        ({**start(), "w": np.zeros(F + 1, np.float32)}, "w", "5 elements"),
        ({**start(), "w": np.zeros((2, 2), np.float32)}, "w", "shape [2, 2]"),
        ({**start(), "b": np.array(np.nan, np.float32)}, "b", "NaN"),
    ],
)
def test_bad_parameters_name_the_parameter(params: dict[str, np.ndarray], name: str, words: str) -> None:
    grad, _ = logistic()
    x, y = data(5)
    with pytest.raises(ParameterError) as caught:
        dp_gradient(grad, ArrayRowSource(x, y), params, GradientSettings(1.0, 1.0, 1.0))
    assert caught.value.name == name and words in str(caught.value)


@pytest.mark.parametrize("shape", [(), (1,), (F,)])
def test_a_graph_output_of_the_wrong_shape_is_a_graph_error(
    shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's later run returning a scalar would otherwise be added to every coordinate."""
    grad = CompiledWrapper(zoo_graphs(build_logistic_regression(F))["grad"], logistic()[0].manifest, GraphRole.GRADIENT)
    assert grad.mode is RuntimeMode.BATCHED
    x, y = data(600)  # three runs of the batched wrapper
    session = grad._session
    real_run = session.run
    calls = []

    def run(outputs: list[str], feeds: dict[str, object]) -> list[np.ndarray]:
        calls.append(1)
        (result,) = real_run(outputs, feeds)
        return [result if len(calls) == 1 else np.zeros(shape)]

    monkeypatch.setattr(session, "run", run)
    with pytest.raises(GraphExecutionError, match="failed on an example") as caught:
        grad.clipped_sum(start(), RowBatch(x, y), 1.0)
    assert "an output has shape" in caught.value.detail


FLOAT32_MAX = float(np.finfo(np.float32).max)


@given(
    st.lists(
        st.one_of(
            st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32),
            st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, float("nan"), float("inf"), float("-inf")]),
        ),
        min_size=F,
        max_size=F,
    )
)
def test_parameters_are_refused_exactly_when_a_value_is_not_finite(values: list[float]) -> None:
    """The check sums in float64 instead of building a mask: extreme finite values
    (which would overflow a float32 sum) pass, and +inf beside -inf is still caught."""
    grad, _ = logistic()
    w = np.array(values, np.float32)
    if np.all(np.isfinite(w)):
        assert np.array_equal(checked_parameters(grad.manifest, {**start(), "w": w})["w"], w)
    else:
        with pytest.raises(ParameterError, match="NaN or infinite"):
            checked_parameters(grad.manifest, {**start(), "w": w})


def test_bad_hyperparameters_are_typed_errors() -> None:
    for make in (
        lambda: GradientSettings(0.0, 1.0, 0.5),
        lambda: GradientSettings(1.0, -1.0, 0.5),
        lambda: GradientSettings(1.0, 1.0, 0.0),
        lambda: GradientSettings(float("nan"), 1.0, 0.5),
        lambda: TrainingSettings(GradientSettings(1.0, 1.0, 0.5), 0, 0.1),
        lambda: TrainingSettings(GradientSettings(1.0, 1.0, 0.5), 2, 0.0),
        lambda: EvaluationSettings(1.0, sampling_rate=2.0),
    ):
        with pytest.raises(HyperparameterError):
            make()


def test_progress_cancellation_and_empty_data() -> None:
    grad, evaluation = logistic()
    x, y = data(40)
    fractions: list[float] = []
    settings = TrainingSettings(GradientSettings(1.0, 1.0, 0.5), 4, 0.1)
    dp_local_training(grad, ArrayRowSource(x, y), start(), settings, controls=Controls(progress=fractions.append))
    assert fractions == [0.25, 0.5, 0.75, 1.0]

    polls: list[int] = []

    def cancel_on_third_poll() -> bool:
        polls.append(1)
        return len(polls) >= 3

    with pytest.raises(TaskCancelledError):
        dp_local_training(
            grad,
            ArrayRowSource(x, y, batch_size=10),
            start(),
            settings,
            controls=Controls(cancelled=cancel_on_third_poll),
        )
    assert len(polls) == 3

    empty = ArrayRowSource(np.zeros((0, F), np.float32), np.zeros(0, np.float32))
    with pytest.raises(NoUsableRowsError):
        dp_local_training(grad, empty, start(), settings)
    with pytest.raises(ValueError, match="eval"):
        dp_evaluate(grad, ArrayRowSource(x, y), start(), EvaluationSettings(1.0))
    with pytest.raises(ValueError, match="grad"):
        dp_gradient(evaluation, ArrayRowSource(x, y), start(), GradientSettings(1.0, 1.0, 1.0))
