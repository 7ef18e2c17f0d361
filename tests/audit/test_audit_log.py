"""The writer: chain, checkpoints, rotation, durability, concurrency, crash recovery."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from audit_fixtures import SteppingClock, write_log

from agent.audit import AuditClosedError, AuditCorruptError, AuditLog, events, verify_log
from agent.audit.query import read_records
from agent.audit.storage import HEAD_FILENAME, list_log_files
from agent.identity.agent_key import AgentKey


def entries(directory: Path) -> list[dict[str, object]]:
    found = []
    for _, path in list_log_files(directory):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def test_entries_are_chained_and_checkpoints_signed(log_dir: Path, agent_key: AgentKey) -> None:
    log = AuditLog.open(log_dir, agent_key, checkpoint_every=3, clock=SteppingClock())
    first = log.append(events.AgentStarted.kind, version="1.0", agent_id="a")
    second = log.append(events.RpcDecision.kind, caller="c", allowed=False, reason="no", rule="r", dataset=None)
    assert first.seq == 1 and first.prev == "0" * 64
    assert second.prev == first.hash and second.fields["dataset"] is None
    log.append(events.AgentStopped.kind, agent_id="a")
    log.close()
    log.close()  # idempotent
    kinds = [e["kind"] for e in entries(log_dir)]
    # A checkpoint after 3 entries; none again at close since the log ends with one.
    assert kinds == ["agent.started", "rpc.decision", "agent.stopped", "audit.checkpoint"]
    checkpoint = entries(log_dir)[-1]
    assert checkpoint["covers_seq"] == 3 and checkpoint["signer"] == agent_key.fingerprint
    result = verify_log(log_dir, [agent_key.public_key])
    assert result.ok, result.problems
    assert result.entries_checked == 4 and result.last_checkpoint_seq == 4
    assert result.notices == []


def test_append_returns_the_stored_record_and_rejects_what_json_cannot_hold(log_dir: Path, agent_key: AgentKey) -> None:
    with AuditLog.open(log_dir, agent_key) as log:
        record = log.append("task.finished", hyperparameters={"sigma": 1.1, "steps": (1, 2)}, epsilon_charged=0.25)
        assert record.fields["hyperparameters"] == {"sigma": 1.1, "steps": [1, 2]}
        assert record.log_fields()["audit_seq"] == 1
        with pytest.raises(TypeError):
            log.append("x.y", value=object())
        with pytest.raises(TypeError):
            log.append("x.y", value=float("nan"))
        with pytest.raises(TypeError):
            log.append("x.y", value={1: "non-str key"})
        with pytest.raises(ValueError, match="seq"):
            log.append("x.y", seq=5)
    with pytest.raises(AuditClosedError):
        log.append("x.y")
    stored = list(read_records(log_dir))
    assert [r.kind for r in stored] == ["task.finished", "audit.checkpoint"]
    assert stored[0] == record


def test_chain_continues_across_rotated_files(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 60, checkpoint_every=7, max_file_bytes=2048)
    files = list_log_files(log_dir)
    assert [n for n, _ in files] == list(range(1, len(files) + 1)) and len(files) >= 4
    for (_, before), (_, after) in itertools.pairwise(files):
        assert before.stat().st_size <= 2048
        last = json.loads(before.read_text().splitlines()[-1])
        first = json.loads(after.read_text().splitlines()[0])
        assert first["prev"] == last["hash"] and first["seq"] == last["seq"] + 1
    result = verify_log(log_dir, [agent_key.public_key])
    assert result.ok, result.problems
    assert result.entries_checked == len(entries(log_dir))


def test_observer_sees_every_entry_including_the_logs_own(log_dir: Path, agent_key: AgentKey) -> None:
    seen: list[str] = []
    with AuditLog.open(log_dir, agent_key, checkpoint_every=2, observer=lambda r: seen.append(r.kind)) as log:
        log.append("a.b")
        log.append("a.c")
    assert seen == ["a.b", "a.c", "audit.checkpoint"]


def _process_writer(directory: str, key_pem: bytes, name: str, count: int) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    log = AuditLog.open(Path(directory), AgentKey(private), checkpoint_every=25, max_file_bytes=16 * 1024)
    for index in range(count):
        log.append("test.write", writer=name, index=index)
    log.close()


def test_two_processes_and_four_threads_build_one_chain(log_dir: Path, agent_key: AgentKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = agent_key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    log_dir.mkdir()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_process_writer, args=(str(log_dir), pem, f"process-{i}", 200)) for i in range(2)
    ]
    for process in processes:
        process.start()
    log = AuditLog.open(log_dir, agent_key, checkpoint_every=25, max_file_bytes=16 * 1024)

    def thread_writer(name: str) -> None:
        for index in range(50):
            log.append("test.write", writer=name, index=index)

    threads = [threading.Thread(target=thread_writer, args=(f"thread-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    log.close()

    records = list(read_records(log_dir))
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    writes = [(r.fields["writer"], r.fields["index"]) for r in records if r.kind == "test.write"]
    assert len(writes) == len(set(writes)) == 2 * 200 + 4 * 50
    for writer in ("process-0", "process-1", "thread-0", "thread-3"):
        indexes = [i for w, i in writes if w == writer]
        assert indexes == sorted(indexes)
    assert len(list_log_files(log_dir)) > 1
    result = verify_log(log_dir, [agent_key.public_key])
    assert result.ok, result.problems[:5]


def test_a_half_written_line_is_repaired_and_recorded(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 8, close=False)
    _, last = list_log_files(log_dir)[-1]
    last_seq = len(entries(log_dir))
    torn = b'{"seq":%d,"time":"2026-03-01T08:09:00.000000Z","kind":"rpc.dec' % (last_seq + 1)
    with last.open("ab") as handle:
        handle.write(torn)
    # Before the agent reopens the log: intact, with a notice about the torn line.
    before = verify_log(log_dir, [agent_key.public_key])
    assert before.ok, before.problems
    assert any("incomplete last line" in n.message for n in before.notices)

    log = AuditLog.open(log_dir, agent_key)
    log.append("agent.started")
    log.close()
    recovered = [e for e in entries(log_dir) if e["kind"] == events.AuditRecovered.kind]
    assert len(recovered) == 1
    assert recovered[0]["condition"] == "partial_line" and recovered[0]["discarded_bytes"] == len(torn)
    assert recovered[0]["seq"] == last_seq + 1
    result = verify_log(log_dir, [agent_key.public_key])
    assert result.ok, result.problems
    assert [n.seq for n in result.notices if "recorded a recovery" in n.message] == [last_seq + 1]


def test_a_crash_between_entry_and_head_is_recorded_as_a_notice(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 4, close=False)
    head = (log_dir / HEAD_FILENAME).read_bytes()
    log = AuditLog.open(log_dir, agent_key)
    log.append("task.started", dataset="onco")
    log.close(final_checkpoint=False)
    (log_dir / HEAD_FILENAME).write_bytes(head)  # as if the head rename never happened
    assert not verify_log(log_dir, [agent_key.public_key]).ok

    AuditLog.open(log_dir, agent_key).close()
    result = verify_log(log_dir, [agent_key.public_key])
    assert result.ok, result.problems
    assert any("head_behind" in n.message for n in result.notices)


def test_the_writer_does_not_launder_a_truncated_log(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 12)
    _, path = list_log_files(log_dir)[-1]
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-3]))
    AuditLog.open(log_dir, agent_key).close()
    recovered = [e for e in entries(log_dir) if e["kind"] == events.AuditRecovered.kind]
    assert [e["condition"] for e in recovered] == ["log_truncated"]
    result = verify_log(log_dir, [agent_key.public_key])
    assert not result.ok
    assert "log_truncated" in result.problems[0].message


def test_a_corrupt_last_line_stops_the_writer(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 3)
    _, path = list_log_files(log_dir)[-1]
    with path.open("ab") as handle:
        handle.write(b"not json at all\n")
    with pytest.raises(AuditCorruptError, match="not a valid audit entry"):
        AuditLog.open(log_dir, agent_key)
