"""The vectorised ε for δ gives dp-accounting's own answer, on real PLDs and on arbitrary PMFs.

Agreement is checked at 1e-12 relative: the only operations that may round
differently are numpy's exp and log against math's (see agent/privacy/pld_epsilon.py);
on the machines measured they agree bit for bit and so do the answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from dp_accounting.pld import pld_pmf, privacy_loss_distribution  # type: ignore[import-untyped]
from dp_accounting.privacy_accountant import NeighboringRelation  # type: ignore[import-untyped]
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from agent.privacy import pld_epsilon
from agent.privacy.pld_epsilon import epsilon_for_delta, pmf_epsilon_for_delta

DELTAS = (1e-12, 1e-9, 1e-5, 1e-3, 0.1, 0.5)


def outcome(compute: Callable[[Any, float], float], distribution: Any, delta: float) -> tuple[str, float | str]:
    """The value, or the kind of error: where the library raises, the vectorised form must too."""
    try:
        return ("value", float(compute(distribution, delta)))
    except (ArithmeticError, ValueError) as exc:
        return ("error", type(exc).__name__)


def library(distribution: Any, delta: float) -> float:
    # Its numpy scalars warn where a ratio overflows to inf (an answer of inf, as in ours).
    with np.errstate(over="ignore"):
        return float(distribution.get_epsilon_for_delta(delta))


def assert_agrees(ours: Callable[[Any, float], float], distribution: Any, delta: float) -> None:
    """``ours`` answers as dp-accounting's own method, to 1e-12 relative."""
    mine, theirs = outcome(ours, distribution, delta), outcome(library, distribution, delta)
    assert mine[0] == theirs[0], (mine, theirs)
    if mine[0] == "error":
        assert mine == theirs
        return
    assert isinstance(mine[1], float) and isinstance(theirs[1], float)
    assert math.isclose(mine[1], theirs[1], rel_tol=1e-12, abs_tol=0.0), (mine, theirs)


def gaussian_pld(q: float, sigma: float, interval: float) -> Any:
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma,
        sampling_prob=q,
        value_discretization_interval=interval,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
    )


# ------------------------------------------------------------------ real PLDs


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "interval"),
    [
        (0.01, 1.1, 101, 1e-4),  # the realistic DP-FedSGD history of the issue
        (0.5, 3.0, 101, 1e-4),
        (0.5, 1.0, 20, 1e-4),  # a large ε: the loop stops high in the PMF
        (1.0, 2.0, 1, 1e-4),  # unsampled: one symmetric Gaussian PLD
        (0.004, 1.1, 3000, 1e-3),
        (0.2, 0.8, 50, 1e-3),
        (0.001, 5.0, 3, 1e-4),  # tiny ε, a PMF of a few points
        (0.05, 0.5, 10, 1e-2),
    ],
)
def test_real_plds(q: float, sigma: float, steps: int, interval: float) -> None:
    pld = gaussian_pld(q, sigma, interval).self_compose(steps)
    for delta in DELTAS:
        assert_agrees(epsilon_for_delta, pld, delta)


def test_a_composition_of_different_settings() -> None:
    pld = gaussian_pld(0.02, 1.2, 1e-3).self_compose(30).compose(gaussian_pld(1.0, 3.0, 1e-3))
    pld = pld.compose(gaussian_pld(0.05, 1.0, 1e-3).self_compose(10))
    for delta in DELTAS:
        assert_agrees(epsilon_for_delta, pld, delta)


@settings(max_examples=15, deadline=None)
@given(
    q=st.floats(min_value=1e-3, max_value=1.0),
    sigma=st.floats(min_value=0.5, max_value=6.0),
    steps=st.integers(1, 400),
    delta=st.floats(min_value=1e-10, max_value=0.9),
)
def test_real_plds_of_any_setting(q: float, sigma: float, steps: int, delta: float) -> None:
    pld = gaussian_pld(q, sigma, 1e-3).self_compose(steps)
    assert_agrees(epsilon_for_delta, pld, delta)


# ------------------------------------------------------------------ arbitrary PMFs


@st.composite
def dense_pmfs(draw: st.DrawFn) -> Any:
    """Any DensePLDPmf: losses anywhere (exp may under- or overflow), mass normalised or not, zeros."""
    interval = draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.1, 1.0, 3.0]))
    probs = draw(
        st.lists(
            st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1.0), st.floats(min_value=0.0, max_value=1e-12)),
            min_size=0,
            max_size=60,
        )
    )
    infinity_mass = draw(st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=0.5)))
    array = np.array(probs, dtype=np.float64)
    if draw(st.booleans()) and array.sum() > 1e-300:
        array *= (1.0 - infinity_mass) / array.sum()  # a true distribution
    lower_loss = draw(st.integers(min_value=-300, max_value=300))
    return pld_pmf.DensePLDPmf(interval, lower_loss, array, infinity_mass, True)


_deltas = st.one_of(st.floats(min_value=1e-15, max_value=0.999), st.sampled_from([1e-12, 1e-5, 0.5]))


@settings(max_examples=400, deadline=None)
@given(pmf=dense_pmfs(), delta=_deltas)
def test_random_pmfs(pmf: Any, delta: float) -> None:
    kind, value = outcome(library, pmf, delta)
    event("inf" if value == math.inf else "zero" if value == 0.0 else kind)
    assert_agrees(pmf_epsilon_for_delta, pmf, delta)


@settings(max_examples=100, deadline=None)
@given(remove=dense_pmfs(), add=dense_pmfs(), delta=_deltas)
def test_random_plds_take_the_larger_direction(remove: Any, add: Any, delta: float) -> None:
    # Both directions need the same interval to form one PLD.
    add = pld_pmf.DensePLDPmf(remove._discretization, add._lower_loss, add._probs, add._infinity_mass, True)
    pld = privacy_loss_distribution.PrivacyLossDistribution(remove, add)
    assert_agrees(epsilon_for_delta, pld, delta)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 120_000),
    lower_loss=st.integers(-60_000, 10_000),
    delta=_deltas,
)
def test_large_random_pmfs_span_several_chunks(seed: int, size: int, lower_loss: int, delta: float) -> None:
    """Prefix sums carried from one chunk to the next give the loop's values wherever it stops."""
    rng = np.random.default_rng(seed)
    probs = rng.random(size) * (rng.random(size) < 0.7)
    probs /= max(probs.sum(), 1e-300) / (1 - 1e-12)
    pmf = pld_pmf.DensePLDPmf(1e-4, lower_loss, probs, 1e-12, True)
    assert_agrees(pmf_epsilon_for_delta, pmf, delta)


def _pmf(lower_loss: int, probs: list[float], infinity_mass: float = 0.0, interval: float = 0.1) -> Any:
    return pld_pmf.DensePLDPmf(interval, lower_loss, np.array(probs, dtype=np.float64), infinity_mass, True)


@pytest.mark.parametrize(
    ("pmf", "delta", "expected"),
    [
        # More mass at infinite loss than δ: no finite ε.
        (_pmf(0, [0.5, 0.4], infinity_mass=0.1), 0.05, math.inf),
        # All mass at negative losses: the hockey-stick divergence is 0 at ε = 0.
        (_pmf(-30, [0.2, 0.3, 0.5]), 1e-5, 0.0),
        # A single point at loss 1: δ(ε) = 1 - e^(ε - 1) for ε < 1.
        (_pmf(10, [1.0]), 0.1, math.log(0.9 / math.exp(-1.0))),
        # Nothing but infinity mass, at most δ: ε = 0.
        (_pmf(0, [], infinity_mass=1e-6), 1e-5, 0.0),
        # exp(-loss) underflows to 0 ("mass_lower == 0"): ε is that loss.
        (_pmf(800, [0.5, 0.5], interval=1.0), 1e-5, 801.0),
        # Infinity mass exactly δ and no mass at the top: the library answers the top loss.
        (_pmf(2, [0.5, 0.0], infinity_mass=1e-5, interval=1.0), 1e-5, 3.0),
    ],
    ids=["infinity-above-delta", "negative-losses", "single-point", "empty", "underflow", "infinity-is-delta"],
)
def test_edge_cases(pmf: Any, delta: float, expected: float) -> None:
    assert pmf_epsilon_for_delta(pmf, delta) == pytest.approx(expected, rel=1e-12)
    assert_agrees(pmf_epsilon_for_delta, pmf, delta)


@example(losses={0: 0.5, 3: 0.5}, delta=1e-5)
@settings(max_examples=30, deadline=None)
@given(
    losses=st.dictionaries(st.integers(-50, 50), st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20),
    delta=_deltas,
)
def test_sparse_pmfs_are_left_to_the_library(losses: dict[int, float], delta: float) -> None:
    pmf = pld_pmf.SparsePLDPmf(losses, 0.1, 0.0, True)
    assert pld_epsilon._dense_fields(pmf) is None
    assert_agrees(pmf_epsilon_for_delta, pmf, delta)


def test_a_subclass_is_left_to_its_own_method() -> None:
    class Pessimist(pld_pmf.DensePLDPmf):  # type: ignore[misc]
        def get_epsilon_for_delta(self, delta: float) -> float:
            return 42.0

    assert pmf_epsilon_for_delta(Pessimist(0.1, 0, np.array([1.0]), 0.0, True), 1e-5) == 42.0
