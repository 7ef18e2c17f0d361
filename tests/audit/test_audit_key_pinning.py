"""The identity key pinned outside the state directory (issue 19, item 3).

The attacker can write the state directory but has not got the agent's private
key: they rewrite an entry, recompute the chain, re-sign every checkpoint and
the head with a key pair of their own and put its public half (and private
key) where the agent's were. Against the pin in agent.toml, `audit verify`
fails and the daemon does not start; a rotation by `edge-agent keys rotate`,
signed by the old key, passes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_fixtures import SteppingClock, log_lines, write_lines, write_log
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.audit import AuditLog, events, verify_log
from agent.audit.canonical import GENESIS_HASH, checkpoint_statement, entry_hash, key_rotation_statement, line_bytes
from agent.audit.keys import load_public_key
from agent.audit.record import AuditRecord
from agent.audit.storage import read_head, write_head
from agent.audit.verify import Trust
from agent.cli.doctor import Doctor, DoctorLimits, Status
from agent.config import ConfigError, load_config
from agent.identity.agent_key import AgentKey, generate_key_file, load_key_file, public_key_path
from tests.conftest import Pki, spawn_agent, stop_agent, write_config

FILE1 = "audit-000001.jsonl"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_CONFIG"}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60, env=env)


def resign_log(directory: Path, key: AgentKey, edit: Callable[[dict[str, Any]], None]) -> None:
    """What the attacker does: edit entries, rechain, and sign every checkpoint and the head with `key`."""
    prev = GENESIS_HASH
    lines = []
    for raw in log_lines(directory / FILE1):
        entry = json.loads(raw)
        edit(entry)
        entry["prev"] = prev
        if entry["kind"] == events.AuditCheckpoint.kind:
            entry["covers_hash"] = prev
            entry["signer"] = key.fingerprint
            statement = checkpoint_statement(
                seq=entry["seq"],
                covers_seq=entry["covers_seq"],
                covers_hash=prev,
                time=entry["signed_time"],
                signer=key.fingerprint,
            )
            entry["signature"] = base64.b64encode(key.sign(statement)).decode()
        entry["hash"] = prev = entry_hash(entry)
        lines.append(line_bytes(entry))
    write_lines(directory / FILE1, lines)
    head = read_head(directory)
    assert head is not None
    unsigned = dataclasses.replace(head, hash=prev, signer=key.fingerprint, signature="")
    write_head(
        directory, dataclasses.replace(unsigned, signature=base64.b64encode(key.sign(unsigned.statement())).decode())
    )


def forge_rotation(directory: Path, old: AgentKey, new_fingerprint: str, new_public: bytes) -> None:
    """Appends an audit.key_rotated entry signed by `old` naming a key whose private half the forger lacks."""
    lines = log_lines(directory / FILE1)
    last = json.loads(lines[-1])
    entry: dict[str, Any] = {"seq": last["seq"] + 1, "time": last["time"], "kind": events.AuditKeyRotated.kind}
    statement = key_rotation_statement(
        seq=entry["seq"],
        covers_seq=last["seq"],
        covers_hash=last["hash"],
        time=last["time"],
        signer=old.fingerprint,
        new_signer=new_fingerprint,
    )
    entry |= events.AuditKeyRotated(
        covers_seq=last["seq"],
        covers_hash=last["hash"],
        signed_time=last["time"],
        signer=old.fingerprint,
        signer_public_key=base64.b64encode(old.public_bytes).decode(),
        new_signer=new_fingerprint,
        new_public_key=base64.b64encode(new_public).decode(),
        signature=base64.b64encode(old.sign(statement)).decode(),
    ).fields()
    entry["prev"] = last["hash"]
    entry["hash"] = entry_hash(entry)
    write_lines(directory / FILE1, [*lines, line_bytes(entry)])
    head = read_head(directory)
    assert head is not None
    unsigned = dataclasses.replace(head, seq=entry["seq"], hash=entry["hash"], signer=old.fingerprint, signature="")
    write_head(
        directory, dataclasses.replace(unsigned, signature=base64.b64encode(old.sign(unsigned.statement())).decode())
    )


def flip_port(entry: dict[str, Any]) -> None:
    if entry["kind"] == events.AgentStarted.kind:
        entry["port"] = 1


def pinned(key: AgentKey) -> Trust:
    return Trust(frozenset({key.fingerprint}), (key.public_key,), "the pinned key")


# ------------------------------------------------------------ the verifier, in process


def test_a_log_resigned_with_another_key_fails_against_the_pin(
    log_dir: Path, agent_key: AgentKey, other_key: AgentKey
) -> None:
    write_log(log_dir, agent_key, 12, checkpoint_every=5)
    resign_log(log_dir, other_key, lambda entry: entry.update(allowed=True) if "allowed" in entry else None)
    # The attacker's .pub is in the state directory: its key is material, not trust.
    result = verify_log(log_dir, Trust(frozenset({agent_key.fingerprint}), (other_key.public_key,), "the pinned key"))
    assert not result.ok
    assert [str(p) for p in result.problems] == [
        f"(log): the log is signed by {other_key.fingerprint}, not by the pinned key: the identity key was swapped "
        "and the log re-signed, or the wrong key was given"
    ]
    # What `audit verify` did before pinning: trust the .pub beside the key, which the attacker wrote.
    assert verify_log(log_dir, [other_key.public_key]).ok


def test_a_rotation_signed_by_the_old_key_hands_the_log_over(log_dir: Path, agent_key: AgentKey) -> None:
    new = AgentKey(Ed25519PrivateKey.generate())
    write_log(log_dir, agent_key, 7, checkpoint_every=5)
    with AuditLog.open(log_dir, agent_key, checkpoint_every=5, clock=SteppingClock()) as log:
        rotation = log.rotate_key(new, reason="yearly rotation")
    with AuditLog.open(log_dir, new, checkpoint_every=5) as log:
        log.append("rpc.decision", method="GetInfo")
    # Anchored at the end (the pin, updated to the new key) or at the start (the old key): both hold.
    for anchor in (new, agent_key):
        result = verify_log(log_dir, Trust(frozenset({anchor.fingerprint}), (), "the pinned key"))
        assert result.ok, result.problems
        assert result.signers == (agent_key.fingerprint, new.fingerprint)
        assert [(c.seq, c.old, c.new) for c in result.key_changes] == [
            (rotation.seq, agent_key.fingerprint, new.fingerprint)
        ]
    recovered = [json.loads(raw) for raw in log_lines(log_dir / FILE1) if b"audit.recovered" in raw]
    assert recovered == []


def test_a_key_change_without_a_rotation_entry_is_refused(
    log_dir: Path, agent_key: AgentKey, other_key: AgentKey
) -> None:
    write_log(log_dir, agent_key, 7, checkpoint_every=5)
    # The key file replaced (by hand, or by an attacker) and the agent started on it.
    with AuditLog.open(log_dir, other_key, checkpoint_every=5) as log:
        log.append("rpc.decision", method="GetInfo")
    result = verify_log(log_dir, [agent_key.public_key, other_key.public_key])
    assert not result.ok
    messages = " | ".join(p.message for p in result.problems)
    assert f"the head record is signed by {agent_key.fingerprint}, not by this agent's key" in messages
    assert f"checkpoint signed by {other_key.fingerprint}, but the log is signed by {agent_key.fingerprint}" in messages


def test_a_forged_rotation_to_the_pinned_key_does_not_launder_a_resigned_log(
    log_dir: Path, agent_key: AgentKey, other_key: AgentKey
) -> None:
    """The attacker re-signs with their key, then 'rotates' to the pinned key, whose private half they lack."""
    write_log(log_dir, agent_key, 7, checkpoint_every=5)
    resign_log(log_dir, other_key, flip_port)
    forge_rotation(log_dir, other_key, agent_key.fingerprint, agent_key.public_bytes)
    assert not verify_log(log_dir, pinned(agent_key)).ok
    # The agent, on the pinned key, does not sign over it silently: the change of signer is recorded.
    with AuditLog.open(log_dir, agent_key, checkpoint_every=5) as log:
        log.append("rpc.decision", method="GetInfo")
    result = verify_log(log_dir, pinned(agent_key))
    assert not result.ok
    assert any(events.RECOVERED_SIGNER_CHANGED in p.message for p in result.problems)


def test_a_rotation_not_signed_by_the_current_key_is_refused(
    log_dir: Path, agent_key: AgentKey, other_key: AgentKey
) -> None:
    write_log(log_dir, agent_key, 7, checkpoint_every=5)
    forge_rotation(log_dir, agent_key, other_key.fingerprint + "x", other_key.public_bytes)
    messages = " | ".join(p.message for p in verify_log(log_dir, pinned(agent_key)).problems)
    assert "new_public_key is not the key" in messages
    write_log(log_dir / "b", agent_key, 7, checkpoint_every=5)
    third = AgentKey(Ed25519PrivateKey.generate())
    forge_rotation(log_dir / "b", other_key, third.fingerprint, third.public_bytes)
    messages = " | ".join(p.message for p in verify_log(log_dir / "b", pinned(agent_key)).problems)
    assert (
        f"key rotation signed by {other_key.fingerprint}, but the log is signed by {agent_key.fingerprint}" in messages
    )


def test_the_rotation_entry_is_in_the_vocabulary(log_dir: Path, agent_key: AgentKey) -> None:
    new = AgentKey(Ed25519PrivateKey.generate())
    with AuditLog.open(log_dir, agent_key) as log:
        record: AuditRecord = log.rotate_key(new)
    assert record.kind == events.AuditKeyRotated.kind
    assert set(record.fields) == {f.name for f in events.SCHEMA[record.kind]}
    assert record.fields["new_signer"] == new.fingerprint


# ------------------------------------------------------------ configuration and doctor


def test_a_malformed_pin_names_the_file_and_key(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    config.write_text(config.read_text().replace("[identity]\n", '[identity]\npinned_fingerprint = "SHA256:abc"\n'))
    with pytest.raises(ConfigError) as error:
        load_config(config)
    assert str(config) in str(error.value) and "identity.pinned_fingerprint" in str(error.value)


def test_doctor_fails_a_key_that_is_not_the_pinned_one_and_warns_without_a_pin(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    key = load_key_file(tmp_path / "identity.key")

    def identity_line() -> tuple[Status, str]:
        doctor = Doctor(DoctorLimits(), now=dt.datetime.now(dt.UTC), logs_directory=tmp_path)
        result = next(r for r in doctor.run(lambda: load_config(config)) if r.name == "identity")
        return result.status, result.detail

    status, detail = identity_line()
    assert status is Status.WARN and f'pinned_fingerprint = "{key.fingerprint}"' in detail
    pin(config, key.fingerprint)
    assert identity_line()[0] is Status.OK
    generate_key_file(tmp_path / "identity.key", overwrite=True)
    status, detail = identity_line()
    assert status is Status.FAIL and key.fingerprint in detail and str(config) in detail


def test_a_reviewer_decision_is_not_signed_with_a_key_that_is_not_the_pinned_one(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    pin(config, load_key_file(tmp_path / "identity.key").fingerprint)
    generate_key_file(tmp_path / "identity.key", overwrite=True)  # swapped in the state directory
    reviewer = generate_key_file(tmp_path / "reviewer.key")
    refused = run_cli(
        "package",
        "approve",
        "sha256:" + "ab" * 32,
        "--config",
        str(config),
        "--reviewer-key",
        str(tmp_path / "reviewer.key"),
        "--reviewer",
        "Dr. Officer",
    )
    assert refused.returncode == 1 and "pinned_fingerprint" in refused.stderr and "Traceback" not in refused.stderr
    assert reviewer.fingerprint not in refused.stdout
    assert not (tmp_path / "state" / "audit").exists() or not list((tmp_path / "state" / "audit").glob("audit-*"))


def test_an_interrupted_rotation_is_finished_by_running_it_again(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    key_file = tmp_path / "identity.key"
    old = load_key_file(key_file)
    pin(config, old.fingerprint)
    # What `keys rotate` had done when it was killed: the new key staged, the log handed over to it.
    staged = generate_key_file(key_file.with_name("identity.key.new"))
    with AuditLog.open(tmp_path / "state" / "audit", old) as log:
        log.rotate_key(staged)
    rerun = run_cli("keys", "rotate", "--config", str(config))
    assert rerun.returncode == 0, rerun.stderr
    assert "finished a rotation that was interrupted" in rerun.stdout
    assert load_key_file(key_file).fingerprint == staged.fingerprint
    assert load_public_key(public_key_path(key_file)) == staged.public_key
    result = verify_log(tmp_path / "state" / "audit", pinned(staged))
    assert result.ok and len(result.key_changes) == 1


def test_keys_pin_writes_the_pin_into_the_config_file_and_keeps_the_rest(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki)
    config.write_text("# the hospital's own comment\n" + config.read_text())
    config.chmod(0o640)
    key = load_key_file(tmp_path / "identity.key")
    pinned_now = run_cli("keys", "pin", "--config", str(config))
    assert pinned_now.returncode == 0, pinned_now.stderr
    assert load_config(config).identity.pinned_fingerprint == key.fingerprint
    assert config.read_text().startswith("# the hospital's own comment\n") and config.stat().st_mode & 0o777 == 0o640
    assert "already pins" in run_cli("keys", "pin", "--config", str(config)).stdout
    # A different key (a swap, or a rotation) is never pinned over an existing pin by accident.
    generate_key_file(tmp_path / "identity.key", overwrite=True)
    refused = run_cli("keys", "pin", "--config", str(config))
    assert refused.returncode == 2 and "--replace" in refused.stderr and str(config) in refused.stderr
    assert load_config(config).identity.pinned_fingerprint == key.fingerprint
    replaced = run_cli("keys", "pin", "--config", str(config), "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert load_config(config).identity.pinned_fingerprint == load_key_file(tmp_path / "identity.key").fingerprint


def test_a_staged_key_the_log_does_not_hand_over_to_is_never_installed(tmp_path: Path, pki: Pki) -> None:
    """Someone who can write the state directory plants `<key>.new` and a log signed by it."""
    config = write_config(tmp_path, pki)
    key_file = tmp_path / "identity.key"
    old = load_key_file(key_file)
    pin(config, old.fingerprint)
    audit = tmp_path / "state" / "audit"
    write_log(audit, old, 12)
    planted = generate_key_file(key_file.with_name("identity.key.new"))
    resign_log(audit, planted, flip_port)
    refused = run_cli("keys", "rotate", "--config", str(config))
    assert refused.returncode == 2, refused.stdout
    assert "identity.key.new" in refused.stderr and "does not show the current key" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert load_key_file(key_file).fingerprint == old.fingerprint


# ------------------------------------------------------------ end to end: real files, real daemon


def pin(config: Path, fingerprint: str) -> None:
    text = config.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("pinned_fingerprint")]
    text = "\n".join(lines).replace("[identity]\n", f'[identity]\npinned_fingerprint = "{fingerprint}"\n')
    config.write_text(text + "\n")


@pytest.fixture
def production(tmp_path: Path, pki: Pki) -> tuple[Path, Path]:
    """A pinned agent.toml whose identity key lives in the state directory, as the .deb installs it."""
    config = write_config(tmp_path, pki)
    state = tmp_path / "state"
    key_file = state / "agent-identity.key"
    key = generate_key_file(key_file)
    config.write_text(config.read_text().replace(str(tmp_path / "identity.key"), str(key_file)))
    pin(config, key.fingerprint)
    return config, key_file


def test_swapping_the_key_and_resigning_the_log_is_caught_and_the_daemon_refuses_it(
    production: tuple[Path, Path], pki: Pki, tmp_path: Path
) -> None:
    config, key_file = production
    original = load_key_file(key_file)
    agent = spawn_agent(["--config", str(config)], tmp_path)
    with agent.client(pki) as client:
        client.list_datasets()
    assert stop_agent(agent) == 0
    audit = tmp_path / "state" / "audit"
    verified = run_cli("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout
    assert f"verified against: the pinned key {original.fingerprint}" in verified.stdout

    # The attack: a new key pair in place of the agent's, the log rewritten and re-signed with it.
    attacker = generate_key_file(key_file, overwrite=True)
    resign_log(audit, attacker, flip_port)

    verified = run_cli("audit", "verify", "--config", str(config))
    assert verified.returncode == 1
    assert "NOT INTACT" in verified.stdout
    assert (
        f"the log is signed by {attacker.fingerprint}, not by the pinned key {original.fingerprint}" in verified.stdout
    )
    assert str(config) in verified.stdout

    forged = (audit / FILE1).read_bytes()
    served = run_cli("serve", "--config", str(config))
    assert served.returncode == 3
    assert served.stderr.startswith("edge-agent: error: ") and "Traceback" not in served.stderr
    for named in (attacker.fingerprint, original.fingerprint, str(config), str(key_file)):
        assert named in served.stderr
    # Refused before the log is opened: the attacker's key signed nothing more.
    assert (audit / FILE1).read_bytes() == forged


def test_a_rotation_by_keys_rotate_verifies_and_the_daemon_needs_the_new_pin(
    production: tuple[Path, Path], pki: Pki, tmp_path: Path
) -> None:
    config, key_file = production
    old = load_key_file(key_file)
    assert stop_agent(spawn_agent(["--config", str(config)], tmp_path)) == 0

    rotated = run_cli("keys", "rotate", "--config", str(config), "--reason", "yearly rotation")
    assert rotated.returncode == 0, rotated.stderr
    new = load_key_file(key_file)
    assert new.fingerprint != old.fingerprint
    assert f'pinned_fingerprint = "{new.fingerprint}"' in rotated.stdout
    assert not key_file.with_name(key_file.name + ".new").exists()
    assert load_key_file(key_file).public_key == load_public_key(public_key_path(key_file))

    # Until the pin follows, the daemon refuses the new key: it cannot tell it from a swapped one.
    served = run_cli("serve", "--config", str(config))
    assert served.returncode == 3 and new.fingerprint in served.stderr and old.fingerprint in served.stderr

    pin(config, new.fingerprint)
    assert stop_agent(spawn_agent(["--config", str(config)], tmp_path)) == 0
    verified = run_cli("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout
    assert "key rotated at seq" in verified.stdout and f"{old.fingerprint} -> {new.fingerprint}" in verified.stdout
    rotations = [json.loads(raw) for raw in log_lines(tmp_path / "state" / "audit" / FILE1) if b"key_rotated" in raw]
    assert [(r["signer"], r["new_signer"], r["reason"]) for r in rotations] == [
        (old.fingerprint, new.fingerprint, "yearly rotation")
    ]
