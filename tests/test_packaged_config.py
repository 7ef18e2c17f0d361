"""The example config shipped in packaging/ must stay valid."""

from __future__ import annotations

from pathlib import Path

from agent.config import load_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_example_config_is_valid() -> None:
    config = load_config(REPO / "packaging" / "agent.toml")
    assert config.agent_id == "hospital-example"
    assert config.server.listen == "0.0.0.0:7443"
    assert config.tls.client_ca_file == Path("/etc/edge-agent/tls/coordinators-ca.crt")
    assert config.datasets == ()
    assert config.metrics.listen == "127.0.0.1:9464"


def test_the_commented_dataset_example_parses_with_its_privacy_unit() -> None:
    from agent.config.loader import parse_config

    text = (REPO / "packaging" / "agent.toml").read_text()
    block = text[text.index("# [[datasets]]"):]
    uncommented = "\n".join(
        line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("# #")
    )
    config = parse_config(text + "\n" + uncommented + "\n", REPO / "packaging" / "agent.toml")
    (spec,) = config.datasets
    assert spec.privacy_unit == "patient_id"
    assert spec.columns is not None and "patient_id" not in spec.columns
