"""The federation file's evaluation_release_dropped_units: off by default, only with whole-cohort evaluations."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.errors import ConfigError
from edge_sponsor.coordinator.federation import parse_federation
from tests.coordinator.test_federation_file import GOOD


def test_evaluations_ask_for_the_dropped_units_only_when_told(tmp_path: Path) -> None:
    assert not parse_federation(GOOD, tmp_path / "federation.toml").training.evaluation_release_dropped_units
    asked = GOOD + "evaluation_release_dropped_units = true\n"
    assert parse_federation(asked, tmp_path / "federation.toml").training.evaluation_release_dropped_units


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            "evaluation_release_dropped_units = true\nevaluation_sampling_rate = 0.5\n",
            "needs evaluation_sampling_rate = 1",
        ),
        ('evaluation_release_dropped_units = "yes"\n', "true or false"),
    ],
)
def test_a_setting_every_agent_would_refuse_names_the_key(tmp_path: Path, lines: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_federation(GOOD + lines, tmp_path / "federation.toml")
    assert caught.value.key == "training.evaluation_release_dropped_units"
    assert problem in caught.value.problem
