"""agent.toml validation: every problem names the file, the key and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import ConfigError, load_config, parse_config
from agent.config.development import development_config
from agent.datasets import DatasetFormat

SOURCE = Path("/etc/edge-agent/agent.toml")

VALID = """
[agent]
id = "st-olav-oncology"
state_dir = "/var/lib/edge-agent"

[tls]
cert_file = "tls/agent.crt"
key_file = "tls/agent.key"
client_ca_file = "/etc/edge-agent/tls/coordinators-ca.crt"

[governance]
policy_file = "policy.toml"
"""


def test_minimal_valid_config_gets_defaults_and_resolves_relative_paths() -> None:
    config = parse_config(VALID, SOURCE)
    assert config.agent_id == "st-olav-oncology"
    assert config.state_dir == Path("/var/lib/edge-agent")
    assert config.tls.cert_file == Path("/etc/edge-agent/tls/agent.crt")
    assert config.identity.key_file == Path("/var/lib/edge-agent/agent-identity.key")
    assert config.server.listen == "127.0.0.1:7443"
    assert config.server.max_message_bytes == 16 * 1024 * 1024
    assert config.logging.format == "json"
    assert config.datasets == ()
    assert config.policy_file == Path("/etc/edge-agent/policy.toml")
    assert not config.development


def test_full_config_with_datasets() -> None:
    text = (
        VALID
        + """
[server]
listen = "0.0.0.0:8443"
grace_seconds = 5
max_workers = 4

[logging]
level = "debug"
format = "console"

[[datasets]]
id = "onco-2024"
path = "/srv/data/onco"
format = "parquet"
description = "Oncology"
columns = ["age", "stage"]

[[datasets]]
id = "labs"
path = "/srv/data/labs.csv"
"""
    )
    config = parse_config(text, SOURCE)
    assert config.server.listen == "0.0.0.0:8443"
    assert config.server.grace_seconds == 5.0
    assert [d.id for d in config.datasets] == ["onco-2024", "labs"]
    assert config.datasets[0].columns == ("age", "stage")
    assert config.datasets[1].format is DatasetFormat.CSV


@pytest.mark.parametrize(
    ("edit", "key", "problem"),
    [
        (lambda t: t.replace('id = "st-olav-oncology"', ""), "agent.id", "is required"),
        (lambda t: t.replace('"st-olav-oncology"', '"bad id!"'), "agent.id", "must be 1-64"),
        (
            lambda t: t.replace('state_dir = "/var/lib/edge-agent"', "state_dir = 3"),
            "agent.state_dir",
            "expected a string",
        ),
        (lambda t: t + '[server]\nlisen = "0.0.0.0:1"\n', "server.lisen", "did you mean 'listen'"),
        (lambda t: t + '[server]\nlisten = "nohost"\n', "server.listen", "expected HOST:PORT"),
        (lambda t: t + '[server]\nlisten = "h:99999"\n', "server.listen", "between 0 and 65535"),
        (lambda t: t + '[server]\nlisten = "::1:0"\n', "server.listen", "needs brackets"),
        (lambda t: t + '[server]\nlisten = "[::1:0"\n', "server.listen", "[IPV6]:PORT"),
        (lambda t: t + '[server]\nlisten = "a b:1"\n', "server.listen", "not an IPv4 address or host name"),
        (lambda t: t + "[server]\nmax_workers = 0\n", "server.max_workers", "between 1 and 1024"),
        (lambda t: t + "[server]\ngrace_seconds = true\n", "server.grace_seconds", "got a boolean"),
        (lambda t: t + '[logging]\nlevel = "loud"\n', "logging.level", "must be one of"),
        (lambda t: t.split("[tls]")[0], "tls", "is required"),
        (lambda t: t.replace('policy_file = "policy.toml"', ""), "governance.policy_file", "is required"),
        (lambda t: t.replace('key_file = "tls/agent.key"', ""), "tls.key_file", "is required"),
        (lambda t: t + '[[datasets]]\nid = "x"\n', "datasets[0].path", "is required"),
        (lambda t: t + '[[datasets]]\nid = "Upper"\npath = "/d.csv"\n', "datasets[0].id", "Upper"),
        (lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.bin"\n', "datasets[0].format", ""),
        (lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.csv"\nformat = "excel"\n', "datasets[0].format", "excel"),
        (
            lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.csv"\ncolumns = ["a", "a"]\n',
            "datasets[0].columns",
            "more than once",
        ),
        (
            lambda t: t + '[[datasets]]\nid = "x"\npath = "/a.csv"\n[[datasets]]\nid = "x"\npath = "/b.csv"\n',
            "datasets[1].id",
            "duplicate",
        ),
        (
            lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.csv"\ncolumns = ["a", "pid"]\nprivacy_unit = "pid"\n',
            "datasets[0].columns",
            "'pid', the privacy_unit",
        ),
        (
            lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.csv"\nprivacy_unit = ""\n',
            "datasets[0].privacy_unit",
            "must name a column",
        ),
        (
            lambda t: t + '[[datasets]]\nid = "x"\npath = "/d.csv"\nprivacy_unit = 3\n',
            "datasets[0].privacy_unit",
            "expected a string",
        ),
        (lambda t: t + "surprise = 1\n", "governance.surprise", "unknown key"),
        (lambda t: "datasets = 3\n" + t, "datasets", "array of tables"),
        (lambda t: t + "[agent2]\n", "agent2", "unknown key"),
    ],
)
def test_invalid_config_names_file_key_and_problem(edit: object, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as failure:
        parse_config(edit(VALID), SOURCE)  # type: ignore[operator]
    message = str(failure.value)
    assert message.startswith(f"{SOURCE}: ")
    assert failure.value.key == key
    assert problem in message


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


def test_development_defaults_live_under_the_state_dir(tmp_path: Path) -> None:
    config = development_config(tmp_path / "s")
    assert config.development
    assert config.tls.client_ca_file == tmp_path / "s" / "dev-pki" / "ca.crt"
    assert config.dataset_registry_file == tmp_path / "s" / "datasets.sqlite"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_either_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text, SOURCE)
    except ConfigError as exc:
        assert str(exc).startswith(str(SOURCE))


def test_a_dataset_declares_its_privacy_unit() -> None:
    config = parse_config(
        VALID + '[[datasets]]\nid = "visits"\npath = "/v.parquet"\ncolumns = ["age"]\nprivacy_unit = "patient_id"\n',
        SOURCE,
    )
    assert config.datasets[0].privacy_unit == "patient_id"
    assert config.datasets[0].columns == ("age",)
    plain = parse_config(VALID + '[[datasets]]\nid = "labs"\npath = "/l.csv"\n', SOURCE)
    assert plain.datasets[0].privacy_unit is None and plain.datasets[0].columns is None
