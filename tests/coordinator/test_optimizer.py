"""The server optimizer's arithmetic against hand-computed steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_sponsor.coordinator.federation import ServerOptimizerKind
from edge_sponsor.coordinator.optimizer import ServerOptimizer


def params() -> dict[str, np.ndarray]:
    return {"w": np.array([1.0, -2.0], np.float32), "b": np.array(0.5, np.float32)}


def test_sgd_without_and_with_momentum() -> None:
    plain = ServerOptimizer(ServerOptimizerKind.SGD, 0.1)
    out = plain.step(params(), {"w": np.array([1.0, 1.0]), "b": np.array(-2.0)})
    np.testing.assert_allclose(out["w"], [0.9, -2.1], rtol=1e-6)
    assert out["b"].dtype == np.float32 and float(out["b"]) == pytest.approx(0.7)

    heavy = ServerOptimizer(ServerOptimizerKind.SGD, 1.0, momentum=0.5)
    p = {"w": np.zeros(1, np.float32)}
    p = heavy.step(p, {"w": np.ones(1)})  # velocity 1
    p = heavy.step(p, {"w": np.ones(1)})  # velocity 1.5
    np.testing.assert_allclose(p["w"], [-2.5])


@given(st.floats(min_value=-1e3, max_value=1e3).filter(lambda g: abs(g) > 1e-3), st.floats(0.001, 1.0))
def test_adam_first_step_moves_each_coordinate_by_the_learning_rate(gradient: float, lr: float) -> None:
    # Bias correction makes Adam's first step lr * sign(g), whatever the gradient's scale.
    adam = ServerOptimizer(ServerOptimizerKind.ADAM, lr)
    out = adam.step({"w": np.zeros(1, np.float32)}, {"w": np.array([gradient])})
    assert float(out["w"][0]) == pytest.approx(-lr * np.sign(gradient), rel=1e-4)


def test_refuses_updates_that_do_not_fit() -> None:
    adam = ServerOptimizer(ServerOptimizerKind.ADAM, 0.1)
    with pytest.raises(ValueError, match="no value for b"):
        adam.step(params(), {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        adam.step(params(), {"w": np.zeros(3), "b": np.zeros(())})
    with pytest.raises(ValueError, match="learning_rate"):
        ServerOptimizer(ServerOptimizerKind.SGD, 0.0)
