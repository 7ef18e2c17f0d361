"""Noise and Poisson sampling: distributions, secure seeding, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.privacy.noise import GaussianNoise, NoiseReserve, secure_generator
from agent.privacy.sampling import PoissonSampler


@pytest.mark.parametrize("std", [0.1, 1.0, 7.5])
def test_gaussian_noise_has_the_requested_std(std: float) -> None:
    noise = GaussianNoise(np.random.default_rng(11))
    draws = noise.perturb(np.zeros(40_000), std)
    # Sample std of 40k normal draws: relative sd 1/sqrt(2 * 40k) = 0.35 %; allow 2 %.
    assert abs(draws.std() / std - 1.0) < 0.02
    assert abs(draws.mean()) < 5 * std / np.sqrt(draws.size)


def test_zero_std_is_an_exact_copy_and_negative_std_is_refused() -> None:
    values = np.array([1.0, -2.0, 3.5])
    noise = GaussianNoise()
    out = noise.perturb(values, 0.0)
    assert out is not values and np.array_equal(out, values)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            noise.perturb(values, bad)


def test_default_generators_are_seeded_independently() -> None:
    a, b = secure_generator(), secure_generator()
    assert not np.array_equal(a.random(8), b.random(8))
    assert not np.array_equal(GaussianNoise().perturb(np.zeros(4), 1.0), GaussianNoise().perturb(np.zeros(4), 1.0))


def test_a_reserved_block_is_handed_out_once() -> None:
    reserve = NoiseReserve()
    reserve.refill(50_000)
    first = reserve.take(50_000)
    # Nothing refilled since: the next take draws afresh instead of repeating the block.
    second = reserve.take(50_000)
    assert first is not second and not np.array_equal(first, second)
    for block in (first, second):
        assert abs(block.std() - 1.0) < 0.02 and abs(block.mean()) < 5 / np.sqrt(block.size)


def test_a_reserved_block_of_another_size_is_not_used() -> None:
    reserve = NoiseReserve()
    reserve.refill(1000)
    assert reserve.take(10).shape == (10,)
    # The unmatched block was dropped, not kept for later.
    assert reserve.take(1000) is not None and reserve.take(1000).shape == (1000,)


def test_noise_from_a_reserve_has_the_requested_std_and_keeps_the_values() -> None:
    reserve = NoiseReserve()
    values = np.linspace(-3.0, 3.0, 40_000)
    reserve.refill(values.size)
    noisy = GaussianNoise(reserve=reserve).perturb(values, 2.5)
    assert noisy is not values and values[0] == -3.0
    assert abs((noisy - values).std() / 2.5 - 1.0) < 0.02
    # Two perturbations never share their noise.
    reserve.refill(values.size)
    again = GaussianNoise(reserve=reserve).perturb(values, 2.5)
    assert not np.array_equal(noisy, again)


def test_in_place_noise_from_a_reserve_is_added_to_the_same_array_and_used_once() -> None:
    reserve = NoiseReserve()
    values = np.linspace(-1.0, 1.0, 40_000)
    original = values.copy()
    reserve.refill(values.size)
    noisy = GaussianNoise(reserve=reserve).perturb_in_place(values, 2.5)
    assert noisy is values
    added = values - original
    assert abs(added.std() / 2.5 - 1.0) < 0.02 and abs(added.mean()) < 5 * 2.5 / np.sqrt(added.size)
    # The block was consumed: the next task's noise is not the same draws again.
    second = original.copy()
    GaussianNoise(reserve=reserve).perturb_in_place(second, 2.5)
    assert not np.array_equal(second - original, added)


def test_a_block_given_back_holds_the_next_draw_all_of_it_fresh() -> None:
    reserve = NoiseReserve()
    reserve.refill(10_000)
    first = reserve.take(10_000)
    drawn = first.copy()
    reserve.give_back(first)
    reserve.refill(10_000)
    second = reserve.take(10_000)
    assert second is first  # the same memory, no fresh pages
    assert not np.any(second == drawn)  # every value drawn again
    assert abs(second.std() - 1.0) < 0.05
    # Only the block last taken is kept, once: a view of it, or a block still in use elsewhere, never is.
    reserve.give_back(second[:10])
    reserve.refill(10_000)
    third = reserve.take(10_000)
    assert third is not second
    reserve.give_back(second)  # no longer the block lent
    reserve.give_back(third)
    reserve.give_back(third)  # twice: the second is ignored
    reserve.refill(10_000)
    assert reserve.take(10_000) is third
    # A block of another size is drawn into fresh memory.
    reserve.give_back(third)
    reserve.refill(5_000)
    assert reserve.take(5_000).size == 5_000


def test_in_place_noise_for_large_arrays_is_added_slice_by_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.privacy.noise.IN_PLACE_SLICE", 1000)
    values = np.linspace(-1.0, 1.0, 10_500)
    original = values.copy()
    noisy = GaussianNoise().perturb_in_place(values, 3.0)
    assert noisy is values
    added = values - original
    assert abs(added.std() / 3.0 - 1.0) < 0.05 and abs(added.mean()) < 5 * 3.0 / np.sqrt(added.size)
    # Every slice got its own draws (a repeated slice would show as equal differences).
    assert not np.array_equal(added[:1000], added[1000:2000])
    with pytest.raises(ValueError, match="writable"):
        GaussianNoise().perturb_in_place(np.zeros(4, np.float32), 1.0)


@pytest.mark.parametrize("rate", [0.001, 0.05, 0.5])
def test_poisson_sampling_rate(rate: float) -> None:
    n = 200_000
    mask = PoissonSampler(rate, np.random.default_rng(5)).mask(n)
    expected = rate * n
    # Binomial(n, q): within 5 standard deviations.
    assert abs(mask.sum() - expected) < 5 * np.sqrt(n * rate * (1 - rate))


def test_poisson_rows_are_independent_of_their_position() -> None:
    """Each position is included with probability q (no fixed-size, no stride pattern)."""
    sampler = PoissonSampler(0.2, np.random.default_rng(9))
    counts = np.sum([sampler.mask(50) for _ in range(4000)], axis=0)
    assert np.all(np.abs(counts / 4000 - 0.2) < 5 * np.sqrt(0.2 * 0.8 / 4000))
    sizes = np.array([sampler.mask(50).sum() for _ in range(2000)])
    assert sizes.std() > 1.0  # the sample size is random, Binomial(50, 0.2): sd 2.8


def test_rate_one_takes_every_row_and_bad_rates_are_refused() -> None:
    assert PoissonSampler(1.0).mask(1000).all()
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            PoissonSampler(bad)
