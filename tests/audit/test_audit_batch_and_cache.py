"""append_many, and the tail a process remembers between its appends: what changed on disk is always seen."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from audit_fixtures import SteppingClock, write_log

import agent.audit.log as audit_log_module
from agent.audit import AuditLog, events, verify_log
from agent.audit.storage import HEAD_FILENAME, list_log_files
from agent.identity.agent_key import AgentKey

DECISION: dict[str, Any] = {"method": "RunTask", "caller": "c", "allowed": True, "correlation_id": "r1"}
STARTED: dict[str, Any] = {"task_id": "task-1", "caller": "c", "hyperparameters": {"q": 0.01}, "round": 3}


def entries(directory: Path) -> list[dict[str, Any]]:
    found = []
    for _, path in list_log_files(directory):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.name != "audit.lock"}


def recovered(directory: Path) -> list[str]:
    return [e["condition"] for e in entries(directory) if e["kind"] == events.AuditRecovered.kind]


def assert_verifies(directory: Path, key: AgentKey) -> None:
    result = verify_log(directory, [key.public_key])
    assert result.ok, result.problems[:5]
    seqs = [e["seq"] for e in entries(directory)]
    assert seqs == list(range(1, len(seqs) + 1))


# ------------------------------------------------------------ append_many


def test_append_many_writes_exactly_what_appends_one_by_one_would(tmp_path: Path, agent_key: AgentKey) -> None:
    # Checkpoints every 3 entries and small files: both fall inside batches.
    batch = [(f"test.{i}", {"index": i, "padding": "x" * 200}) for i in range(7)]
    one_by_one, together = tmp_path / "one", tmp_path / "together"
    with AuditLog.open(one_by_one, agent_key, checkpoint_every=3, max_file_bytes=1024, clock=SteppingClock()) as log:
        for _ in range(2):
            singles = [log.append(kind, **fields) for kind, fields in batch]
    with AuditLog.open(together, agent_key, checkpoint_every=3, max_file_bytes=1024, clock=SteppingClock()) as log:
        for _ in range(2):
            records = log.append_many(batch)
    assert files(together) == files(one_by_one)
    assert records == singles
    assert len(list_log_files(together)) > 1
    assert any(e["kind"] == events.AuditCheckpoint.kind for e in entries(together))
    assert_verifies(together, agent_key)


def test_append_many_is_one_write_and_one_head(
    log_dir: Path, agent_key: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog.open(log_dir, agent_key)
    calls: list[str] = []
    real_append, real_head = audit_log_module.append_durably, audit_log_module.write_head
    monkeypatch.setattr(audit_log_module, "append_durably", lambda *a: calls.append("write") or real_append(*a))
    monkeypatch.setattr(audit_log_module, "write_head", lambda *a: calls.append("head") or real_head(*a))
    seen: list[str] = []
    log._observer = lambda record: seen.append(record.kind)
    log.append_many([("rpc.decision", DECISION), ("task.started", STARTED)])
    assert calls == ["write", "head"]
    assert seen == ["rpc.decision", "task.started"]
    log.close()
    assert [e["kind"] for e in entries(log_dir)] == ["rpc.decision", "task.started", "audit.checkpoint"]
    assert_verifies(log_dir, agent_key)


def test_append_many_writes_nothing_when_one_entry_is_refused(log_dir: Path, agent_key: AgentKey) -> None:
    log = AuditLog.open(log_dir, agent_key)
    log.append("agent.started")
    before = files(log_dir)
    with pytest.raises(TypeError):
        log.append_many([("rpc.decision", DECISION), ("task.started", {"bad": object()})])
    with pytest.raises(ValueError, match="may not be named"):
        log.append_many([("rpc.decision", DECISION), ("task.started", {"seq": 1})])
    assert files(log_dir) == before
    assert log.append_many([]) == []
    log.close()
    assert_verifies(log_dir, agent_key)


def write_batch_after_four_entries(log_dir: Path, key: AgentKey) -> bytes:
    """Returns the head record as it was before the batch."""
    write_log(log_dir, key, 4, close=False)
    head = (log_dir / HEAD_FILENAME).read_bytes()
    log = AuditLog.open(log_dir, key)
    log.append_many([("rpc.decision", DECISION), ("task.started", STARTED)])
    log.close(final_checkpoint=False)
    return head


def test_a_batch_cut_short_by_a_crash_leaves_a_torn_line_that_is_repaired(
    log_dir: Path, agent_key: AgentKey
) -> None:
    head = write_batch_after_four_entries(log_dir, agent_key)
    # The crash: the write reached the disk up to the middle of the second line, the head never moved.
    _, path = list_log_files(log_dir)[-1]
    data = path.read_bytes()
    second = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: second + 40])
    (log_dir / HEAD_FILENAME).write_bytes(head)

    AuditLog.open(log_dir, agent_key).close()
    assert recovered(log_dir) == [events.RECOVERED_PARTIAL_LINE, events.RECOVERED_HEAD_BEHIND]
    # The batch's complete first line stays, chained; the torn second one is gone.
    assert [e["kind"] for e in entries(log_dir)][4:7] == ["rpc.decision", "audit.recovered", "audit.recovered"]
    assert_verifies(log_dir, agent_key)


def test_a_crash_after_a_whole_batch_but_before_its_head_is_not_passed_off_as_a_crash(
    log_dir: Path, agent_key: AgentKey
) -> None:
    # At most one entry past the head can come from a crash between entry and head; a batch of two
    # whose head was lost looks exactly like two appended entries, and stays an error.
    head = write_batch_after_four_entries(log_dir, agent_key)
    (log_dir / HEAD_FILENAME).write_bytes(head)

    AuditLog.open(log_dir, agent_key).close()
    assert recovered(log_dir) == [events.RECOVERED_UNSIGNED_ENTRIES]
    assert not verify_log(log_dir, [agent_key.public_key]).ok


def test_an_append_that_brings_a_checkpoint_leaves_one_unsigned_entry_at_most(
    log_dir: Path, agent_key: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry gets its own head before the checkpoint is written: a crash in between is a notice."""
    log = AuditLog.open(log_dir, agent_key, checkpoint_every=3)
    log.append("test.one")
    log.append("test.two")
    real_head = audit_log_module.write_head
    heads: list[int] = []

    def crash_at_the_checkpoints_head(directory: Path, head: Any) -> None:
        heads.append(head.seq)
        if len(heads) == 2:
            raise KeyboardInterrupt("power cut")
        real_head(directory, head)

    monkeypatch.setattr(audit_log_module, "write_head", crash_at_the_checkpoints_head)
    with pytest.raises(KeyboardInterrupt):
        log.append("test.three")
    monkeypatch.undo()
    assert heads == [3, 4]  # the entry's head was written, then the checkpoint's was cut off

    AuditLog.open(log_dir, agent_key).close()
    assert recovered(log_dir) == [events.RECOVERED_HEAD_BEHIND]
    assert verify_log(log_dir, [agent_key.public_key]).ok


def test_nothing_changed_on_disk_means_the_tail_is_not_read_again(
    log_dir: Path, agent_key: AgentKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of the remembered tail: a second append of ours neither re-reads nor re-verifies."""
    log = AuditLog.open(log_dir, agent_key)
    log.append("test.one")

    def not_again(*args: object) -> None:
        raise AssertionError("the tail was read again although nothing changed")

    monkeypatch.setattr(AuditLog, "_read_tail", not_again)
    monkeypatch.setattr(AuditLog, "_reconcile_head", not_again)
    log.append("test.two")
    monkeypatch.undo()
    log.close()
    assert [e["kind"] for e in entries(log_dir)][-3:] == ["test.one", "test.two", "audit.checkpoint"]
    assert_verifies(log_dir, agent_key)


# ------------------------------------------------------------ the remembered tail


def _other_writer(directory: str, pem: bytes, count: int, max_file_bytes: int) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, password=None)
    log = AuditLog.open(Path(directory), AgentKey(key), max_file_bytes=max_file_bytes)  # type: ignore[arg-type]
    for index in range(count):
        log.append("test.other", index=index, padding="y" * 300)
    log.close(final_checkpoint=False)


def _run_other_process(directory: Path, key: AgentKey, count: int, max_file_bytes: int = 64 * 1024 * 1024) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    process = multiprocessing.get_context("spawn").Process(
        target=_other_writer, args=(str(directory), pem, count, max_file_bytes)
    )
    process.start()
    process.join(timeout=60)
    assert process.exitcode == 0


@pytest.mark.parametrize("rotates", [False, True], ids=["same-file", "other-process-rotates"])
def test_another_process_appending_between_two_of_ours_is_seen(
    log_dir: Path, agent_key: AgentKey, rotates: bool
) -> None:
    max_file_bytes = 2048 if rotates else 64 * 1024 * 1024
    log = AuditLog.open(log_dir, agent_key, max_file_bytes=max_file_bytes)
    log.append("test.ours", index=0)
    log.append_many([("test.ours", {"index": 1}), ("test.ours", {"index": 2})])
    files_before = len(list_log_files(log_dir))
    _run_other_process(log_dir, agent_key, 8, max_file_bytes)
    assert (len(list_log_files(log_dir)) > files_before) == rotates
    log.append("test.ours", index=3)
    log.append_many([("test.ours", {"index": 4})])
    log.close()
    kinds = [e["kind"] for e in entries(log_dir)]
    assert kinds == ["test.ours"] * 3 + ["test.other"] * 8 + ["test.ours"] * 2 + ["audit.checkpoint"]
    assert recovered(log_dir) == []
    assert_verifies(log_dir, agent_key)


def test_a_torn_line_left_by_another_writer_is_repaired_before_our_next_append(
    log_dir: Path, agent_key: AgentKey
) -> None:
    log = AuditLog.open(log_dir, agent_key)
    log.append("test.ours", index=0)
    _, path = list_log_files(log_dir)[-1]
    with path.open("ab") as handle:
        handle.write(b'{"seq":2,"time":"2026-03-01T08:09:00.000000Z","kind":"test.oth')
    log.append("test.ours", index=1)
    log.close()
    assert recovered(log_dir) == [events.RECOVERED_PARTIAL_LINE]
    assert_verifies(log_dir, agent_key)


def test_a_head_put_back_between_our_appends_is_recorded(log_dir: Path, agent_key: AgentKey) -> None:
    log = AuditLog.open(log_dir, agent_key)
    log.append("test.ours", index=0)
    old_head = (log_dir / HEAD_FILENAME).read_bytes()
    log.append("test.ours", index=1)
    (log_dir / HEAD_FILENAME).write_bytes(old_head)
    log.append("test.ours", index=2)
    log.close()
    assert recovered(log_dir) == [events.RECOVERED_HEAD_BEHIND]
    assert_verifies(log_dir, agent_key)


def test_a_head_deleted_between_our_appends_is_recorded(log_dir: Path, agent_key: AgentKey) -> None:
    log = AuditLog.open(log_dir, agent_key)
    log.append("test.ours", index=0)
    (log_dir / HEAD_FILENAME).unlink()
    log.append("test.ours", index=1)
    log.close()
    assert recovered(log_dir) == [events.RECOVERED_HEAD_MISSING]


def test_a_same_size_rewrite_of_the_last_line_is_seen(log_dir: Path, agent_key: AgentKey) -> None:
    # The size alone would not tell: the last line itself is compared.
    log = AuditLog.open(log_dir, agent_key)
    log.append("test.ours", index=0)
    _, path = list_log_files(log_dir)[-1]
    data = path.read_bytes()
    digit = data.rindex(b'"hash":"') + len(b'"hash":"')
    flipped = b"1" if data[digit : digit + 1] != b"1" else b"2"
    path.write_bytes(data[:digit] + flipped + data[digit + 1 :])
    log.append("test.ours", index=1)
    log.close()
    assert recovered(log_dir) == [events.RECOVERED_HEAD_MISMATCH]
