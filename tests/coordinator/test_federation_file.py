"""The federation file: strict like agent.toml, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.errors import ConfigError
from edge_sponsor.coordinator.federation import Algorithm, ServerOptimizerKind, load_federation, parse_federation

GOOD = """
[federation]
name = "study"
ca_file = "pki/ca.crt"
cert_file = "/etc/coordinator/client.crt"
key_file = "pki/client.key"

[[agents]]
name = "a"
address = "10.0.0.1:7443"
dataset = "d"

[[agents]]
name = "b"
address = "[::1]:7443"
dataset = "d"

[[agents]]
name = "c"
address = "host.example:7443"
dataset = "other"

[training]
algorithm = "fedavg"
rounds = 7
server_optimizer = "sgd"
momentum = 0.9
"""


def test_a_good_file_with_defaults_and_relative_paths(tmp_path: Path) -> None:
    federation = parse_federation(GOOD, tmp_path / "federation.toml")
    assert federation.ca_file == tmp_path.resolve() / "pki" / "ca.crt"
    assert federation.cert_file == Path("/etc/coordinator/client.crt")
    assert [s.name for s in federation.sites] == ["a", "b", "c"]
    plan = federation.training
    assert plan.algorithm is Algorithm.FEDAVG and plan.rounds == 7
    assert plan.server_optimizer is ServerOptimizerKind.SGD and plan.momentum == 0.9
    assert plan.quorum == 2  # a majority of three by default
    assert federation.server_name is None


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        (("rounds = 7", "round = 7"), "training.round", "unknown key; did you mean 'rounds'?"),
        (("rounds = 7", "rounds = 0"), "training.rounds", "must be between 1 and 100000"),
        (("rounds = 7", "quorum = 4"), "training.quorum", "is 4 but the federation lists only 3 agents"),
        (('algorithm = "fedavg"', 'algorithm = "fedprox"'), "training.algorithm", "must be one of fedsgd, fedavg"),
        (("momentum = 0.9", "momentum = 1.5"), "training.momentum", "must be between 0.0 and 0.999"),
        (('name = "b"', 'name = "a"'), "agents[1].name", "'a' is listed twice"),
        (('address = "[::1]:7443"', 'address = "10.0.0.1:7443"'), "agents[1].address", "is listed twice"),
        (('name = "c"', 'name = "c d"'), "agents[2].name", "must be 1-64 letters"),
        (('address = "10.0.0.1:7443"', 'address = "10.0.0.1"'), "agents[0].address", "expected host:port"),
        (('dataset = "other"', 'datasets = "other"'), "agents[2].dataset", "is required"),
        (('dataset = "other"', 'dataset = "other"\ncolour = "x"'), "agents[2].colour", "unknown key"),
        (('ca_file = "pki/ca.crt"', ""), "federation.ca_file", "is required"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, change: tuple[str, str], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_federation(GOOD.replace(*change), tmp_path / "federation.toml")
    assert caught.value.source == str(tmp_path / "federation.toml")
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_no_agents_and_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="list at least one agent"):
        parse_federation(GOOD.split("[[agents]]", maxsplit=1)[0], tmp_path / "f.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_federation("[federation", tmp_path / "f.toml")
    with pytest.raises(ConfigError, match="file not found"):
        load_federation(tmp_path / "absent.toml")
