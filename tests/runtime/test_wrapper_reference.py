"""At sigma = 0 the wrapper's clipped sums equal a NumPy reference for every zoo model.

Both wrappers are checked: the Scan over rows (its float32 package values are those of
the single-example graph run per row, so the sums agree to float64 rounding) and the
compiled batch (same math, but onnxruntime's batched float32 kernels accumulate in
another order, so per-example values differ by float32 rounding: 1e-5 relative).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from agent.runtime.isolation import GraphRole, build_wrapper
from agent.runtime.namespace import AGENT_PREFIX, PACKAGE_PREFIX
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper, RuntimeMode
from agent.runtime.tasks import EvaluationSettings, GradientSettings, Randomness, dp_evaluate, dp_gradient
from edge_sponsor.publisher.packaging import zoo_graphs
from tests.runtime.helpers import (
    CASES,
    ArrayRowSource,
    Case,
    clipped_sum_reference,
    data_for,
    manifest_for,
    metric_sum_reference,
    per_example_outputs,
    random_parameters,
)

ROWS = 48
MODES = (RuntimeMode.SCAN, RuntimeMode.BATCHED)
# (rtol, atol) of a sum against the NumPy reference over the single-example graph's values.
TOLERANCE = {RuntimeMode.SCAN: (1e-6, 1e-5), RuntimeMode.BATCHED: (1e-5, 1e-4)}
METRIC_TOLERANCE = {RuntimeMode.SCAN: 1e-9, RuntimeMode.BATCHED: 1e-5}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gradient_sum_matches_numpy_reference(case: Case, mode: RuntimeMode) -> None:
    rng = np.random.default_rng(7)
    model = case.build()
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    params = random_parameters(model, rng)
    x, y = data_for(case, model, rng, ROWS)
    names = [f"grad_{p.name}" for p in manifest.parameters]
    per_example = per_example_outputs(graphs["grad"], params, x, y, names)
    norms = np.linalg.norm(per_example, axis=1)
    clip_norm = float(np.median(norms))  # about half of the examples are clipped
    expected = clipped_sum_reference(per_example, clip_norm)

    wrapper = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT, mode=mode)
    assert wrapper.mode is mode
    rtol, atol = TOLERANCE[mode]
    got = wrapper.clipped_sum(params, RowBatch(x, y), clip_norm)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)

    # The same through the task at sigma = 0, q = 1, in small batches.
    release = dp_gradient(
        wrapper, ArrayRowSource(x, y, batch_size=7), params, GradientSettings(clip_norm, 0.0, 1.0, 0.0)
    )
    for slot in wrapper.layout.slots:
        reference = expected[slot.offset : slot.offset + slot.size].reshape(slot.shape)
        assert release.sums[slot.name].dtype == np.float32
        np.testing.assert_allclose(release.sums[slot.name], reference, rtol=1e-5, atol=atol)
    assert release.noisy_count == ROWS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_metric_sums_match_numpy_reference(case: Case, mode: RuntimeMode) -> None:
    rng = np.random.default_rng(8)
    model = case.build()
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    params = random_parameters(model, rng)
    x, y = data_for(case, model, rng, ROWS)
    per_example = per_example_outputs(graphs["eval"], params, x, y, [m.name for m in manifest.metrics])
    expected = metric_sum_reference(per_example, [(m.low, m.high) for m in manifest.metrics])

    wrapper = CompiledWrapper(graphs["eval"], manifest, GraphRole.EVALUATION, mode=mode)
    assert wrapper.mode is mode
    np.testing.assert_allclose(wrapper.clipped_sum(params, RowBatch(x, y)), expected, rtol=1e-6, atol=1e-5)
    release = dp_evaluate(wrapper, ArrayRowSource(x, y, batch_size=10), params, EvaluationSettings(0.0))
    tolerance = METRIC_TOLERANCE[mode]
    np.testing.assert_allclose(
        [release.sums[m.name] for m in manifest.metrics], expected, rtol=tolerance, atol=tolerance
    )


def test_wrapper_names_live_in_two_namespaces_and_pass_the_checker() -> None:
    model = CASES[2].build()
    graphs = zoo_graphs(model)
    wrapper = build_wrapper(graphs["grad"], manifest_for(model, graphs), GraphRole.GRADIENT)
    onnx.checker.check_model(wrapper, full_check=True)
    outer = wrapper.graph
    names = [v.name for v in (*outer.input, *outer.output)] + [n for node in outer.node for n in node.output]
    assert all(name.startswith(AGENT_PREFIX) for name in names)
    body = next(a.g for a in outer.node[-1].attribute if a.name == "body")
    for node in body.node:
        for name in (*node.input, *node.output):
            assert name.startswith((AGENT_PREFIX, PACKAGE_PREFIX)), name
        # Package nodes read only package values: their inputs were renamed, never agent::.
        if node.name.startswith(PACKAGE_PREFIX):
            assert all(name.startswith(PACKAGE_PREFIX) for name in node.input if name)


def test_noise_is_added_with_std_sigma_c() -> None:
    """Empirical std of the released sum around the exact sum, over 2000 coordinates x 4 draws."""
    model = CASES[3].build()
    graphs = zoo_graphs(model)
    manifest = manifest_for(model, graphs)
    rng = np.random.default_rng(3)
    params = random_parameters(model, rng)
    x, y = data_for(CASES[3], model, rng, 16)
    wrapper = CompiledWrapper(graphs["grad"], manifest, GraphRole.GRADIENT)
    exact = wrapper.clipped_sum(params, RowBatch(x, y), 0.5)
    sigma, clip = 1.3, 0.5
    residuals = []
    for seed in range(4):
        release = dp_gradient(
            wrapper,
            ArrayRowSource(x, y),
            params,
            GradientSettings(clip, sigma, 1.0),
            randomness=Randomness(noise=np.random.default_rng(seed)),
        )
        flat = np.concatenate([release.sums[s.name].reshape(-1) for s in wrapper.layout.slots])
        residuals.append(flat - exact)
    sample = np.concatenate(residuals)  # 4 x 6274 draws
    # The sample std of n normal draws has relative sd ~ 1/sqrt(2n) ~ 0.45 %; allow 3 %.
    assert abs(np.std(sample) / (sigma * clip) - 1.0) < 0.03
    assert abs(np.mean(sample)) < 5 * sigma * clip / np.sqrt(sample.size)
