"""The noise multiplier at which a run of unsampled Gaussian tasks costs a given ε, for the
accuracy benches (survival_accuracy.py, glm_accuracy.py): the agents' own PLD accountant,
bisection on log σ."""

from __future__ import annotations

import math

from agent.privacy.accounting import PldAccountant
from agent.privacy.mechanism import Mechanism


def sigma_for(epsilon: float, tasks: int, accountant: PldAccountant, *, delta: float, high: float) -> float:
    """The σ in [0.05, ``high``] at which ``tasks`` tasks at q = 1 cost at most ``epsilon`` at
    ``delta``, to a ratio of 1.0005 (the side that costs at most ε)."""
    low = 0.05
    for _ in range(60):
        middle = math.sqrt(low * high)
        spent = accountant.epsilon([Mechanism(sampling_rate=1.0, noise_multiplier=middle, steps=tasks)], delta)
        if spent > epsilon:
            low = middle
        else:
            high = middle
        if high / low < 1.0005:
            break
    return high
