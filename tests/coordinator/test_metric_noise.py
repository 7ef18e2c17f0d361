"""The DP noise SD the coordinator reports with each federated metric matches the spread of the
metric over the agents' own noise, simulated as dp_evaluate adds it."""

from __future__ import annotations

import math

import numpy as np

from edge_sponsor.coordinator.progress import noisy
from edge_sponsor.coordinator.training import metric_noise_sd


def test_the_reported_sd_is_the_spread_of_the_pooled_metric() -> None:
    ranges = {"loss": (0.0, 10.0), "correct": (0.0, 1.0)}
    sigma, sites, per_site = 5.0, 3, 400
    true_sums = {"loss": 0.45 * per_site, "correct": 0.9 * per_site}
    rng = np.random.default_rng(11)
    draws: dict[str, list[float]] = {name: [] for name in ranges}
    scale = sigma * math.sqrt(len(ranges))
    for _ in range(20_000):
        count = sum(per_site + rng.normal(0.0, sigma) for _ in range(sites))
        for name, (low, high) in ranges.items():
            bound = max(abs(low), abs(high))
            total = sum(true_sums[name] + rng.normal(0.0, scale * bound) for _ in range(sites))
            draws[name].append(total / count)
    means = {name: true_sums[name] / per_site for name in ranges}
    scales = {name: math.sqrt(len(ranges)) * max(abs(low), abs(high)) for name, (low, high) in ranges.items()}
    expected = metric_noise_sd(scales, means, sites * per_site, sites=sites, noise_multiplier=sigma)
    for name in ranges:
        assert abs(float(np.std(draws[name])) / expected[name] - 1) < 0.05, (name, np.std(draws[name]), expected)
    # Never printed as exact: with its SD, or marked noisy when there is none.
    assert noisy("correct", 0.9, expected["correct"]).startswith("correct 0.900 ±")
    assert noisy("correct", 0.9, None) == "correct 0.900 (noisy)"
    assert metric_noise_sd(scales, means, 0.0, sites=3, noise_multiplier=sigma) == {}
