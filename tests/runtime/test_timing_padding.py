"""Every step runs the wrapper on as many rows whatever its Poisson sample's size (timing side channel)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Mapping

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats  # type: ignore[import-untyped]

from agent.privacy.sampling import PADDING_TAIL, padded_row_count, padded_sample_size
from agent.runtime.isolation import GraphRole
from agent.runtime.rows import RowBatch
from agent.runtime.sessions import CompiledWrapper
from agent.runtime.tasks import Controls, GradientSettings, Randomness, _sampled_pass, dp_gradient
from edge_sponsor.publisher.packaging import zoo_graphs
from edge_sponsor.publisher.zoo import build_mlp_classifier
from tests.runtime.helpers import ArrayRowSource, manifest_for


@settings(max_examples=200, deadline=None)
@given(population=st.integers(0, 10**7), rate=st.floats(1e-5, 1.0))
def test_the_sample_exceeds_the_padded_size_with_probability_at_most_the_tail(population: int, rate: float) -> None:
    padded = padded_sample_size(population, rate)
    assert padded <= population
    assert stats.binom.sf(padded, population, rate) <= PADDING_TAIL
    # And it is not wasteful: within ~7 standard deviations and 2/3 ln(1/tail) (14) rows of the mean.
    sd = math.sqrt(population * rate * (1 - rate))
    assert padded <= population * rate + 7 * sd + 2 * math.log(1 / PADDING_TAIL) / 3 + 1


def test_padded_size_arguments_are_checked() -> None:
    assert padded_sample_size(1000, 1.0) == 1000
    for population, rate in ((-1, 0.1), (10, 0.0), (10, 1.5), (10, math.nan)):
        with pytest.raises(ValueError):
            padded_sample_size(population, rate)


class RiggedSampler:
    """Samples exactly ``fraction`` of each batch: sample sizes no real draw would give."""

    def __init__(self, rate: float, fraction: float) -> None:
        self.rate = rate
        self.fraction = fraction

    def mask(self, rows: int) -> npt.NDArray[np.bool_]:
        mask = np.zeros(rows, np.bool_)
        mask[: round(rows * self.fraction)] = True
        return mask


class CountingWrapper:
    """A real wrapper that counts the rows it is run on."""

    def __init__(self, wrapper: CompiledWrapper) -> None:
        self.wrapper = wrapper
        self.layout = wrapper.layout
        self.rows = 0

    def clipped_sum(
        self, parameters: Mapping[str, npt.NDArray[np.float32]], batch: RowBatch, clip_norm: float | None = None
    ) -> npt.NDArray[np.float64]:
        self.rows += batch.size
        return self.wrapper.clipped_sum(parameters, batch, clip_norm)


def mlp() -> tuple[CompiledWrapper, dict[str, npt.NDArray[np.float32]]]:
    model = build_mlp_classifier(30, (64, 64), 2)
    graphs = zoo_graphs(model)
    wrapper = CompiledWrapper(graphs["grad"], manifest_for(model, graphs), GraphRole.GRADIENT)
    return wrapper, {p.name: np.full(p.shape, 0.01, np.float32) for p in model.parameters}


ROWS = 20_000
RATE = 0.05
rng = np.random.default_rng(0)
X = rng.normal(size=(ROWS, 30)).astype(np.float32)
Y = rng.integers(0, 2, ROWS).astype(np.int64)


def one_pass(wrapper: object, parameters: Mapping[str, npt.NDArray[np.float32]], fraction: float, pad: bool) -> float:
    started = time.perf_counter()
    step = _sampled_pass(
        wrapper,  # type: ignore[arg-type]
        ArrayRowSource(X, Y, batch_size=4096),
        parameters,
        sampler=RiggedSampler(RATE, fraction),  # type: ignore[arg-type]
        clip_norm=1.0,
        controls=Controls(pad_timing=pad),
    )
    assert step.sampled == sum(round(n * fraction) for n in (4096,) * 4 + (ROWS - 4 * 4096,))
    return time.perf_counter() - started


@pytest.mark.parametrize("fraction", [0.0, 0.01, RATE, 0.06])
def test_the_wrapper_runs_on_the_padded_size_whatever_was_sampled(fraction: float) -> None:
    wrapper, parameters = mlp()
    counting = CountingWrapper(wrapper)
    one_pass(counting, parameters, fraction, pad=True)
    assert counting.rows == padded_sample_size(ROWS, RATE)


def test_padding_does_not_change_the_release() -> None:
    wrapper, parameters = mlp()
    settings_ = GradientSettings(1.0, 1.0, RATE, count_noise_multiplier=1.0)

    def release(pad: bool) -> dict[str, npt.NDArray[np.float32]]:
        randomness = Randomness(np.random.default_rng(3), np.random.default_rng(4))
        controls = Controls(pad_timing=pad)
        rows = ArrayRowSource(X, Y)
        result = dp_gradient(wrapper, rows, parameters, settings_, controls=controls, randomness=randomness)
        return {**result.sums, "count": np.asarray(result.noisy_count)}

    padded, plain = release(True), release(False)
    assert padded.keys() == plain.keys()
    for name in padded:
        np.testing.assert_array_equal(padded[name], plain[name])


def test_step_durations_no_longer_tell_an_empty_sample_from_a_full_one() -> None:
    """Coarse: medians of 5 passes. An empty sample vs ~1000 rows of an MLP's per-example gradients."""
    wrapper, parameters = mlp()
    one_pass(wrapper, parameters, RATE, pad=True)  # warm-up

    def median(fraction: float, pad: bool) -> float:
        return statistics.median(one_pass(wrapper, parameters, fraction, pad) for _ in range(5))

    padded_empty, padded_full = median(0.0, True), median(RATE, True)
    plain_empty, plain_full = median(0.0, False), median(RATE, False)
    # Without padding the empty sample is many times faster; with it, the two are alike.
    assert plain_empty < plain_full / 3
    assert 0.5 < padded_empty / padded_full < 2.0


# Units of 1 to 6 rows, in batches of whole units: a dataset with a privacy unit.
UNIT_SIZES = np.random.default_rng(5).integers(1, 7, 4000)
UNIT_ROWS = int(UNIT_SIZES.sum())
CAP = 8  # the policy's max_rows_per_unit: above every unit's size


class GroupedRows:
    """X and Y (cut to the units' rows) in batches of 500 whole units."""

    def batches(self) -> Iterator[RowBatch]:
        ends = np.cumsum(UNIT_SIZES)
        for first in range(0, UNIT_SIZES.size, 500):
            sizes = UNIT_SIZES[first : first + 500]
            begin = int(ends[first] - UNIT_SIZES[first])
            starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
            end = begin + int(sizes.sum())
            yield RowBatch(X[begin:end], Y[begin:end], starts)


@pytest.mark.parametrize("fraction", [0.0, 0.01, RATE, 0.06])
def test_grouped_rows_run_on_a_padded_row_count_whatever_units_were_sampled(fraction: float) -> None:
    assert UNIT_ROWS <= ROWS
    wrapper, parameters = mlp()
    counting = CountingWrapper(wrapper)
    step = _sampled_pass(
        counting,  # type: ignore[arg-type]
        GroupedRows(),
        parameters,
        sampler=RiggedSampler(RATE, fraction),  # type: ignore[arg-type]
        clip_norm=1.0,
        controls=Controls(pad_timing=True, max_rows_per_unit=CAP),
    )
    assert step.usable == UNIT_SIZES.size  # units, not rows
    # From the rows read and the public cap, never from the units' actual sizes.
    assert counting.rows == padded_row_count(UNIT_ROWS, CAP * UNIT_ROWS, CAP, RATE)


def test_a_poisson_sample_of_units_exceeds_the_padded_row_count_rarely() -> None:
    """Bernstein's bound, checked by simulation at a tail large enough to observe."""
    sizes = np.random.default_rng(6).integers(1, 11, 300)
    tail = 1e-3
    padded = padded_row_count(int(sizes.sum()), int(np.sum(sizes**2)), int(sizes.max()), 0.2, tail)
    draws = np.random.default_rng(7).random((200_000, sizes.size)) < 0.2
    exceeded = float(np.mean(draws.astype(np.int64) @ sizes > padded))
    assert exceeded <= tail
    # One row per unit is the binomial case.
    assert padded_row_count(5000, 5000, 1, 0.1) == padded_sample_size(5000, 0.1)
