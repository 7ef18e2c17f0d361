"""The server-side optimizer: turns each round's averaged update into new parameters.

DP-FedSGD hands it the noisy average gradient; DP-FedAvg hands it the negated
average delta (a "pseudo-gradient"), so that SGD with learning rate 1 and no
momentum is plain FedAvg. Adam on the server (FedAdam, Reddi et al. 2021) copes
better with DP noise because it rescales each coordinate by its own noise level.
Works in float64 and hands back the parameters' own dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_sponsor.coordinator.federation import ServerOptimizerKind

Parameters = dict[str, npt.NDArray[np.floating[Any]]]
"""A model's parameters by name: float32 for a model package's graphs, float64 for a plan model's coefficients."""
OptimizerState = tuple[dict[str, npt.NDArray[np.float64]], dict[str, npt.NDArray[np.float64]], int]


class ServerOptimizer:
    def __init__(
        self,
        kind: ServerOptimizerKind,
        learning_rate: float,
        *,
        momentum: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
    ) -> None:
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.kind = kind
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self._first: dict[str, npt.NDArray[np.float64]] = {}
        self._second: dict[str, npt.NDArray[np.float64]] = {}
        self._steps = 0

    def state(self) -> OptimizerState:
        """A copy of the moments, to undo a step whose result is refused."""
        return dict(self._first), dict(self._second), self._steps

    def restore(self, state: OptimizerState) -> None:
        self._first, self._second, self._steps = dict(state[0]), dict(state[1]), state[2]

    def step(
        self,
        parameters: Mapping[str, npt.NDArray[np.floating[Any]]],
        gradient: Mapping[str, npt.NDArray[np.floating[Any]]],
    ) -> Parameters:
        """New parameters after one step along ``-gradient``; ``gradient`` has every parameter's name."""
        missing = set(parameters) - set(gradient)
        if missing:
            raise ValueError(f"the update has no value for {', '.join(sorted(missing))}")
        self._steps += 1
        updated: Parameters = {}
        for name, value in parameters.items():
            g = np.asarray(gradient[name], np.float64)
            if g.shape != value.shape:
                raise ValueError(f"update for {name!r} has shape {g.shape}, the parameter {value.shape}")
            updated[name] = (value.astype(np.float64) - self._direction(name, g)).astype(value.dtype)
        return updated

    def _direction(self, name: str, g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.kind is ServerOptimizerKind.SGD:
            if self.momentum == 0.0:
                return self.learning_rate * g
            velocity = self.momentum * self._first.get(name, np.zeros_like(g)) + g
            self._first[name] = velocity
            return self.learning_rate * velocity
        first = self.beta1 * self._first.get(name, np.zeros_like(g)) + (1 - self.beta1) * g
        second = self.beta2 * self._second.get(name, np.zeros_like(g)) + (1 - self.beta2) * g * g
        self._first[name], self._second[name] = first, second
        first_hat = first / (1 - self.beta1**self._steps)
        second_hat = second / (1 - self.beta2**self._steps)
        return self.learning_rate * first_hat / (np.sqrt(second_hat) + self.epsilon)
