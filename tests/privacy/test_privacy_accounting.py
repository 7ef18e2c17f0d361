"""ε from the accountants: published figures, agreement with dp-accounting's own accountant, properties."""

from __future__ import annotations

import math
from typing import Any

import dp_accounting  # type: ignore[import-untyped]
import pytest
from dp_accounting.pld import pld_privacy_accountant  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.privacy.accounting import AccountantKind, PldAccountant, RdpAccountant, make_accountant
from agent.privacy.errors import MechanismError
from agent.privacy.mechanism import Mechanism, StepCounts, combined_noise_multiplier, step_counts
from agent.tasks.kinds.dp_evaluate import DpEvaluate

# Abadi et al. / TF-Privacy MNIST settings: N=60000, batch 256, sigma 1.1, 60 epochs, delta 1e-5.
MNIST = Mechanism.dp_local_training(256 / 60000, 1.1, int(60 * 60000 / 256))
DELTA = 1e-5

# Coarser than the default: 5x faster, still an upper bound, enough for properties.
FAST_PLD = 1e-3


def test_published_figure_pld() -> None:
    assert PldAccountant().epsilon([MNIST], DELTA) == pytest.approx(2.38, abs=0.02)


def test_published_figure_rdp() -> None:
    assert RdpAccountant().epsilon([MNIST], DELTA) == pytest.approx(2.60, abs=0.02)


def test_make_accountant_by_name() -> None:
    assert make_accountant("pld").kind is AccountantKind.PLD
    assert make_accountant(AccountantKind.RDP).kind is AccountantKind.RDP
    with pytest.raises(MechanismError, match="unknown accountant"):
        make_accountant("moments")


@pytest.mark.parametrize(
    "mechanisms",
    [
        [Mechanism(0.02, 1.2, 30), Mechanism(1.0, 3.0, 2)],
        [Mechanism(0.05, 1.0, 10), Mechanism(0.01, 0.8, 50), Mechanism(0.05, 1.0, 5)],
    ],
)
def test_pld_agrees_with_dp_accounting_accountant(mechanisms: list[Mechanism]) -> None:
    """Our grouping, caching and tree composition give the ε of dp-accounting's accountant, task by task."""
    reference = pld_privacy_accountant.PLDAccountant(value_discretization_interval=FAST_PLD)
    for m in mechanisms:
        gaussian = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        event = gaussian if m.sampling_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(m.sampling_rate, gaussian)
        reference.compose(event, m.steps)
    expected = reference.get_epsilon(DELTA)
    ours = PldAccountant(FAST_PLD).epsilon(mechanisms, DELTA)
    assert ours == pytest.approx(expected, rel=2e-3)


def test_rdp_agrees_with_dp_accounting_accountant() -> None:
    mechanisms = [Mechanism(0.02, 1.2, 30), Mechanism(1.0, 3.0, 2), Mechanism(0.02, 1.2, 7)]
    reference = dp_accounting.rdp.RdpAccountant()
    for m in mechanisms:
        gaussian = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        event = gaussian if m.sampling_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(m.sampling_rate, gaussian)
        reference.compose(event, m.steps)
    assert RdpAccountant().epsilon(mechanisms, DELTA) == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)


def test_composition_is_not_a_sum_of_epsilons() -> None:
    accountant = RdpAccountant()
    one = accountant.epsilon([Mechanism(0.01, 1.0, 100)], DELTA)
    ten = accountant.epsilon([Mechanism(0.01, 1.0, 100)] * 10, DELTA)
    assert one < ten < 10 * one


def test_no_task_costs_nothing() -> None:
    assert PldAccountant().epsilon([], DELTA) == 0.0


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, math.nan, True])
def test_delta_outside_unit_interval_is_refused(delta: float) -> None:
    with pytest.raises(MechanismError, match="δ"):
        RdpAccountant().epsilon([Mechanism(0.1, 1.0)], delta)


def test_identical_steps_are_grouped_whatever_the_order() -> None:
    a, b = Mechanism(0.01, 1.0, 4), Mechanism(0.02, 1.5, 3)
    assert step_counts([a, b, a]) == step_counts([b, a, a]) == ((0.01, 1.0, 8), (0.02, 1.5, 3))
    accountant = PldAccountant(FAST_PLD)
    assert accountant.epsilon([Mechanism(0.01, 1.0, 10)], DELTA) == accountant.epsilon(
        [Mechanism(0.01, 1.0, 4), Mechanism(0.01, 1.0, 6)], DELTA
    )


def test_hundreds_of_tasks_compose_as_three_settings() -> None:
    """300 tasks in 3 settings: three self-compositions, not 300 compositions (counted, not timed)."""
    tasks = [Mechanism.dp_local_training(0.01 * (1 + i % 3), 1.0, 10) for i in range(300)]
    accountant = PldAccountant(FAST_PLD)
    cold = accountant.epsilon(tasks, DELTA)
    assert accountant._composed.cache_info().misses == 3  # one K-fold composition per setting
    one_more = accountant.epsilon([*tasks, tasks[0]], DELTA)
    # The kept history composed with one more step of one setting.
    assert accountant._composed.cache_info().misses == 4
    assert 0 < cold < one_more


def test_noisy_count_on_the_same_sample_is_one_gaussian() -> None:
    # Two releases with sigma 1 each on one sample: one Gaussian with sigma 1/sqrt(2).
    assert combined_noise_multiplier(1.0, 1.0) == pytest.approx(1 / math.sqrt(2))
    assert combined_noise_multiplier(2.0, None) == 2.0
    with_count = Mechanism.dp_gradient(0.01, 1.0, count_noise_multiplier=1.0)
    without = Mechanism.dp_gradient(0.01, 1.0)
    accountant = RdpAccountant()
    assert accountant.epsilon([with_count], DELTA) > accountant.epsilon([without], DELTA)


@pytest.mark.parametrize("release_noisy_count", [False, True])
def test_the_dropped_units_count_is_charged_as_one_more_gaussian_on_the_whole_cohort(
    release_noisy_count: bool,
) -> None:
    """dp_evaluate at q = 1 with release_dropped_units: the sums' Gaussian (sigma), the dropped
    units' (sigma, sensitivity 1) and the noisy count's if asked, composed by dp-accounting
    itself as separate Gaussian events, give the ε the ledger charges for the profile."""
    sigma = 2.0  # on the accounting grid: charged at exactly this sigma
    asked = DpEvaluate(
        noise_multiplier=sigma, sampling_rate=1.0, release_noisy_count=release_noisy_count, release_dropped_units=True
    )
    not_asked = DpEvaluate(noise_multiplier=sigma, sampling_rate=1.0, release_noisy_count=release_noisy_count)
    # A task that does not ask is charged exactly as before the count existed.
    assert not_asked.mechanism() == Mechanism.dp_evaluate(sigma, 1.0, sigma if release_noisy_count else None)
    gaussians = 2 + int(release_noisy_count)
    pld = pld_privacy_accountant.PLDAccountant(value_discretization_interval=FAST_PLD)
    rdp = dp_accounting.rdp.RdpAccountant()
    for _ in range(gaussians):
        pld.compose(dp_accounting.GaussianDpEvent(sigma))
        rdp.compose(dp_accounting.GaussianDpEvent(sigma))
    with_count = PldAccountant(FAST_PLD).epsilon([asked.mechanism()], DELTA)
    assert with_count == pytest.approx(pld.get_epsilon(DELTA), rel=2e-3)
    assert RdpAccountant().epsilon([asked.mechanism()], DELTA) == pytest.approx(rdp.get_epsilon(DELTA), rel=1e-9)
    assert with_count > PldAccountant(FAST_PLD).epsilon([not_asked.mechanism()], DELTA)


def test_task_kinds() -> None:
    assert Mechanism.dp_gradient(0.1, 1.0) == Mechanism(0.1, 1.0, 1)
    assert Mechanism.dp_local_training(0.1, 1.0, 7) == Mechanism(0.1, 1.0, 7)
    assert Mechanism.dp_evaluate(2.0) == Mechanism(1.0, 2.0, 1)


@given(
    q=st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0, exclude_min=True), st.just(math.nan)),
)
def test_sampling_rate_outside_zero_one_is_refused(q: float) -> None:
    with pytest.raises(MechanismError, match="sampling rate"):
        Mechanism(q, 1.0)


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.inf, math.nan])
def test_noise_multiplier_must_be_positive_and_finite(sigma: float) -> None:
    with pytest.raises(MechanismError, match="noise multiplier"):
        Mechanism(0.1, sigma)
    with pytest.raises(MechanismError, match="noise multiplier"):
        Mechanism.dp_gradient(0.1, 1.0, count_noise_multiplier=sigma)


@pytest.mark.parametrize("steps", [0, -3, 1.5, True])
def test_steps_must_be_a_positive_integer(steps: int) -> None:
    with pytest.raises(MechanismError, match="steps"):
        Mechanism(0.1, 1.0, steps)


# ------------------------------------------------------------------ monotonicity
# RDP costs 20-60 ms per new (q, sigma): example counts keep the folder under a minute.

_rates = st.floats(min_value=1e-3, max_value=1.0)
_sigmas = st.floats(min_value=0.5, max_value=10.0)


@settings(max_examples=20, deadline=None)
@given(q=_rates, sigma=_sigmas, steps=st.integers(1, 2000), more=st.integers(1, 2000))
def test_rdp_more_steps_never_cost_less(q: float, sigma: float, steps: int, more: int) -> None:
    accountant = RdpAccountant()
    assert accountant.epsilon([Mechanism(q, sigma, steps + more)], DELTA) >= accountant.epsilon(
        [Mechanism(q, sigma, steps)], DELTA
    )


@settings(max_examples=20, deadline=None)
@given(q=_rates, sigma=_sigmas, shrink=st.floats(min_value=0.5, max_value=1.0), steps=st.integers(1, 2000))
def test_rdp_less_noise_never_costs_less(q: float, sigma: float, shrink: float, steps: int) -> None:
    accountant = RdpAccountant()
    assert accountant.epsilon([Mechanism(q, sigma * shrink, steps)], DELTA) >= accountant.epsilon(
        [Mechanism(q, sigma, steps)], DELTA
    )


@settings(max_examples=12, deadline=None)
@given(
    history=st.lists(st.builds(Mechanism, _rates, _sigmas, st.integers(1, 500)), max_size=5),
    extra=st.builds(Mechanism, _rates, _sigmas, st.integers(1, 500)),
)
def test_rdp_another_task_never_costs_less(history: list[Mechanism], extra: Mechanism) -> None:
    accountant = RdpAccountant()
    assert accountant.epsilon([*history, extra], DELTA) >= accountant.epsilon(history, DELTA)


# PLD is slower (each new (q, sigma) builds a distribution): fewer examples, coarser grid.
_pld_rates = st.floats(min_value=1e-3, max_value=0.2)
_pld_sigmas = st.floats(min_value=0.8, max_value=4.0)


@settings(max_examples=8, deadline=None)
@given(q=_pld_rates, sigma=_pld_sigmas, steps=st.integers(1, 300), more=st.integers(1, 300))
def test_pld_more_steps_never_cost_less(q: float, sigma: float, steps: int, more: int) -> None:
    accountant = PldAccountant(FAST_PLD)
    assert accountant.epsilon([Mechanism(q, sigma, steps + more)], DELTA) >= accountant.epsilon(
        [Mechanism(q, sigma, steps)], DELTA
    )


@settings(max_examples=8, deadline=None)
@given(q=_pld_rates, sigma=_pld_sigmas, shrink=st.floats(min_value=0.5, max_value=0.99), steps=st.integers(1, 300))
def test_pld_less_noise_never_costs_less(q: float, sigma: float, shrink: float, steps: int) -> None:
    accountant = PldAccountant(FAST_PLD)
    assert accountant.epsilon([Mechanism(q, sigma * shrink, steps)], DELTA) >= accountant.epsilon(
        [Mechanism(q, sigma, steps)], DELTA
    )


class CountingPld(PldAccountant):
    """Counts compositions from scratch, to show which ε came from a cached history."""

    def __init__(self) -> None:
        super().__init__(FAST_PLD)
        self.fresh_compositions = 0

    def fresh(self, counts: StepCounts) -> Any:
        self.fresh_compositions += 1
        return super().fresh(counts)


_MIX = [
    Mechanism(0.02, 1.2, 30),
    Mechanism(1.0, 3.0, 2),
    Mechanism(0.05, 1.0, 10),
    Mechanism(0.01, 0.8, 50),
    Mechanism.dp_gradient(0.004, 1.1),
]


def test_a_growing_history_is_composed_incrementally_with_the_fresh_epsilon() -> None:
    """What a ledger does: one more task per reservation, now and then one refunded."""
    accountant = CountingPld()
    history: list[Mechanism] = []
    for i in range(10):
        history.append(_MIX[(3 * i) % len(_MIX)])
        if i == 6:
            history.pop(2)  # a refund: the history shrinks to one no longer cached
        incremental = accountant.epsilon(history, DELTA)
        fresh = PldAccountant(FAST_PLD).epsilon(history, DELTA)
        assert incremental == pytest.approx(fresh, rel=1e-5)
    # Only the first history was composed from scratch: every later one, the one after
    # the refund too, grew a kept history of its sampled tasks (the unsampled q = 1
    # setting, one exact Gaussian, is composed onto it whole).
    assert accountant.fresh_compositions == 1


@settings(max_examples=5, deadline=None)
@given(order=st.lists(st.integers(0, len(_MIX) - 1), min_size=2, max_size=6))
def test_any_order_of_tasks_gives_the_fresh_epsilon(order: list[int]) -> None:
    accountant = PldAccountant(FAST_PLD)
    history = [_MIX[i] for i in order]
    for end in range(1, len(history) + 1):
        accountant.epsilon(history[:end], DELTA)
    fresh = PldAccountant(FAST_PLD).epsilon(history, DELTA)
    assert accountant.epsilon(history, DELTA) == pytest.approx(fresh, rel=1e-5)


def test_a_grown_history_replaces_the_part_it_grew_from() -> None:
    """Memory: one group's long history keeps one composed PLD, not every prefix of it."""
    accountant = CountingPld()
    history: list[Mechanism] = []
    for _ in range(12):
        history.append(Mechanism.dp_gradient(0.02, 1.1))
        accountant.epsilon(history, DELTA)
    assert accountant.kept_histories == 1
    assert accountant.fresh_compositions == 1
