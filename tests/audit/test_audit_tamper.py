"""The verifier against a keyless (and a key-swapping) attacker: each edit is found, and where."""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from audit_fixtures import SteppingClock, log_lines, rechain, write_lines, write_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.audit import AuditLog, AuditLogNotFoundError, verify_log
from agent.audit.canonical import checkpoint_statement, entry_hash, line_bytes
from agent.audit.storage import HEAD_FILENAME, list_log_files
from agent.identity.agent_key import AgentKey

FILE1 = "audit-000001.jsonl"


@pytest.fixture
def intact(log_dir: Path, agent_key: AgentKey) -> Path:
    """20 entries, a checkpoint every 5, closed (ends with a checkpoint): 24 lines in one file."""
    write_log(log_dir, agent_key, 20, checkpoint_every=5)
    return log_dir


def verify(directory: Path, key: AgentKey):  # type: ignore[no-untyped-def]
    return verify_log(directory, [key.public_key])


def test_an_untouched_log_verifies(intact: Path, agent_key: AgentKey) -> None:
    result = verify(intact, agent_key)
    assert result.ok and result.problems == [] and result.notices == []
    assert result.entries_checked == 24 and result.last_checkpoint_seq == 24 and result.last_seq == 24


def test_an_edited_field_is_found_on_its_line(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    assert b'"allowed":false' in lines[9]
    lines[9] = lines[9].replace(b'"allowed":false', b'"allowed":true')
    write_lines(path, lines)
    result = verify(intact, agent_key)
    assert not result.ok
    first = result.first_break
    assert first is not None and (first.file, first.line, first.seq) == (FILE1, 10, 10)
    assert "does not match its hash" in first.message
    assert len(result.problems) == 1


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    entry = json.loads(lines[9])
    entry["allowed"] = True
    entry["hash"] = entry_hash(entry)
    lines[9] = line_bytes(entry)
    write_lines(path, lines)
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (11, 11)
    assert "prev does not match" in first.message


def test_a_rewritten_chain_fails_at_the_next_checkpoint(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    entry = json.loads(lines[1])
    entry["caller"] = "someone-else"
    lines[1] = line_bytes(entry)
    write_lines(path, rechain(lines, 1))
    result = verify(intact, agent_key)
    first = result.first_break
    # The first checkpoint (line 6) signed the original chain.
    assert first is not None and (first.line, first.seq) == (6, 6)
    assert "checkpoint signature is not valid" in first.message
    assert any(p.file == FILE1 and "not the entry the signed head record names" in p.message for p in result.problems)


def test_a_deleted_line_is_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    del lines[11]
    write_lines(path, lines)
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.file, first.line, first.seq) == (FILE1, 12, 13)
    assert "seq 13 where 12 was expected (entries deleted?)" in first.message


def test_swapped_lines_are_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)
    result = verify(intact, agent_key)
    first = result.first_break
    assert first is not None and (first.line, first.seq) == (3, 4)
    assert "seq 4 where 3 was expected" in first.message and "prev does not match" in first.message


def test_an_inserted_line_is_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    forged = json.loads(lines[3])
    forged.update(caller="spiffe://attacker", allowed=True, seq=5, prev=json.loads(lines[3])["hash"])
    forged["hash"] = entry_hash(forged)
    lines.insert(4, line_bytes(forged))
    write_lines(path, lines)
    first = verify(intact, agent_key).first_break
    # The forgery chains onto line 4; the original entry 5 no longer fits after it.
    assert first is not None and (first.line, first.seq) == (6, 5)
    assert "inserted, reordered or replayed" in first.message


def test_a_replayed_line_is_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    lines.insert(3, lines[2])
    write_lines(path, lines)
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (4, 3)


def test_a_tail_truncated_after_the_last_checkpoint_is_found(log_dir: Path, agent_key: AgentKey) -> None:
    write_log(log_dir, agent_key, 13, checkpoint_every=5, close=False)  # 15 lines, last checkpoint at 12
    path = log_dir / FILE1
    lines = log_lines(path)
    write_lines(path, lines[:-2])
    result = verify(log_dir, agent_key)
    assert not result.ok and result.last_checkpoint_seq == 12
    first = result.first_break
    assert first is not None and (first.file, first.line, first.seq) == (FILE1, 13, 13)
    assert "log truncated: it ends at seq 13" in first.message and "says seq 15" in first.message


def test_a_tail_truncated_across_a_checkpoint_is_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    write_lines(path, log_lines(path)[:-4])  # removes the final checkpoint, 2 entries and the one before
    result = verify(intact, agent_key)
    messages = [p.message for p in result.problems]
    assert any("log truncated: it ends at seq 20" in m for m in messages)
    assert any("truncated across a checkpoint" in m for m in messages)


def test_a_truncated_tail_with_the_head_removed_is_still_reported(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    write_lines(path, log_lines(path)[:-3])
    (intact / HEAD_FILENAME).unlink()
    result = verify(intact, agent_key)
    assert not result.ok and "head record missing" in result.problems[0].message


def test_entries_appended_after_the_signed_head_are_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    extra = json.loads(lines[-2])
    extra.update(seq=25, prev=json.loads(lines[-1])["hash"])
    extra["hash"] = entry_hash(extra)
    write_lines(path, [*lines, line_bytes(extra)])
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (25, 25)
    assert "after the last signed head record" in first.message


def _resign_checkpoint(path: Path, index: int, key: AgentKey, *, claim: str | None = None) -> None:
    lines = log_lines(path)
    entry = json.loads(lines[index])
    assert entry["kind"] == "audit.checkpoint"
    entry["signer"] = claim or key.fingerprint
    statement = checkpoint_statement(
        seq=entry["seq"],
        covers_seq=entry["covers_seq"],
        covers_hash=entry["covers_hash"],
        time=entry["signed_time"],
        signer=entry["signer"],
    )
    entry["signature"] = base64.b64encode(key.sign(statement)).decode()
    lines[index] = line_bytes(entry)
    write_lines(path, rechain(lines, index, prev=entry["prev"]))


def test_a_forged_checkpoint_signature_is_found(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    entry = json.loads(lines[11])
    entry["signature"] = base64.b64encode(bytes(64)).decode()
    lines[11] = line_bytes(entry)
    write_lines(path, rechain(lines, 11))
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (12, 12)
    assert "checkpoint signature is not valid" in first.message


def test_a_checkpoint_signed_with_another_key_is_found(intact: Path, agent_key: AgentKey, other_key: AgentKey) -> None:
    _resign_checkpoint(intact / FILE1, 5, other_key)
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (6, 6)
    assert f"not trusted ({other_key.fingerprint})" in first.message
    # Whoever trusts both keys accepts that checkpoint; the later ones, signed over the original
    # chain, still do not fit the rewritten one.
    both = verify_log(intact, [agent_key.public_key, other_key.public_key])
    assert both.problems and all(p.line != 6 for p in both.problems)
    assert (both.problems[0].line, both.problems[0].seq) == (12, 12)


def test_a_checkpoint_claiming_the_agents_key_but_signed_by_another_is_found(
    intact: Path, agent_key: AgentKey, other_key: AgentKey
) -> None:
    _resign_checkpoint(intact / FILE1, 5, other_key, claim=agent_key.fingerprint)
    first = verify(intact, agent_key).first_break
    assert first is not None and first.line == 6 and "checkpoint signature is not valid" in first.message


def test_a_log_verified_with_the_wrong_key_fails(intact: Path, other_key: AgentKey) -> None:
    result = verify(intact, other_key)
    assert not result.ok and "not trusted" in result.problems[0].message


def test_a_forged_head_record_is_found(intact: Path, agent_key: AgentKey) -> None:
    head = (intact / HEAD_FILENAME).read_bytes()
    (intact / HEAD_FILENAME).write_bytes(head.replace(b'"seq":24', b'"seq":23'))
    assert not verify(intact, agent_key).ok


@pytest.fixture
def rotated(log_dir: Path, agent_key: AgentKey) -> Path:
    write_log(log_dir, agent_key, 40, checkpoint_every=6, max_file_bytes=2048)
    assert len(list_log_files(log_dir)) >= 4
    assert verify(log_dir, agent_key).ok
    return log_dir


def test_a_deleted_rotated_file_is_found(rotated: Path, agent_key: AgentKey) -> None:
    (rotated / "audit-000002.jsonl").unlink()
    result = verify(rotated, agent_key)
    first = result.first_break
    assert first is not None and (first.file, first.line) == ("audit-000002.jsonl", None)
    assert "log file missing" in first.message
    assert any(p.file == "audit-000003.jsonl" and p.line == 1 for p in result.problems)


def test_a_renamed_rotated_file_is_found(rotated: Path, agent_key: AgentKey) -> None:
    files = list_log_files(rotated)
    _, last = files[-1]
    last.rename(rotated / f"audit-{len(files) + 1:06d}.jsonl")
    result = verify(rotated, agent_key)
    assert not result.ok
    assert result.problems[0].file == last.name and "missing" in result.problems[0].message


def test_a_deleted_last_file_is_found(rotated: Path, agent_key: AgentKey) -> None:
    _, last = list_log_files(rotated)[-1]
    last.unlink()
    messages = [str(p) for p in verify(rotated, agent_key).problems]
    assert any(last.name in m and "missing" in m for m in messages)
    assert any("log truncated" in m for m in messages)


def test_malformed_json_is_reported_with_its_line(intact: Path, agent_key: AgentKey) -> None:
    path = intact / FILE1
    lines = log_lines(path)
    lines[6] = lines[6][:30] + b"\n"
    write_lines(path, lines)
    first = verify(intact, agent_key).first_break
    assert first is not None and (first.line, first.seq) == (7, 7) and "not a valid JSON entry" in first.message


def test_an_equivalent_but_rewritten_number_is_found(log_dir: Path, agent_key: AgentKey) -> None:
    with AuditLog.open(log_dir, agent_key, clock=SteppingClock()) as log:
        log.append("task.finished", epsilon_charged=1e-05)
    path = log_dir / FILE1
    data = path.read_bytes()
    assert b"1e-05" in data
    path.write_bytes(data.replace(b"1e-05", b"1E-05"))
    first = verify(log_dir, agent_key).first_break
    assert first is not None and first.line == 1 and "not in the form the agent writes" in first.message


def test_an_empty_or_missing_directory_is_an_input_error(tmp_path: Path, agent_key: AgentKey) -> None:
    with pytest.raises(AuditLogNotFoundError):
        verify(tmp_path / "nope", agent_key)
    with pytest.raises(AuditLogNotFoundError):
        verify(tmp_path, agent_key)


# ---------------------------------------------------------------- property


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, agent_key: AgentKey) -> dict[str, bytes]:
    directory = tmp_path_factory.mktemp("pristine") / "audit"
    with AuditLog.open(directory, agent_key, checkpoint_every=4, max_file_bytes=1500, clock=SteppingClock()) as log:
        for index in range(14):
            log.append(
                "task.finished",
                coordinator=f"coordinator-{index % 2}",
                dataset="onco",
                epsilon_charged=0.125 * index,
                delta=1e-05,
                hyperparameters={"sigma": 1.1, "clip": 1.0, "names": ["a", "é"]},
                correlation_id=None,
                ok=index % 2 == 0,
            )
    assert verify_log(directory, [agent_key.public_key]).ok
    return {path.name: path.read_bytes() for path in directory.iterdir() if path.name != "audit.lock"}


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_edit_is_detected(pristine: dict[str, bytes], agent_key: AgentKey, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(pristine)), label="file")
    content = pristine[name]
    position = data.draw(st.integers(0, len(content) - 1), label="position")
    new_byte = data.draw(st.integers(0, 255).filter(lambda b: b != content[position]), label="byte")
    edited = content[:position] + bytes([new_byte]) + content[position + 1 :]
    directory = Path(tempfile.mkdtemp(prefix="audit-edit-"))
    try:
        for file_name, file_content in pristine.items():
            (directory / file_name).write_bytes(edited if file_name == name else file_content)
        result = verify_log(directory, [agent_key.public_key])
        assert not result.ok, f"edit of {name}[{position}] to {new_byte:#x} went unnoticed"
    finally:
        shutil.rmtree(directory)


def test_every_position_flipped_is_detected(pristine: dict[str, bytes], agent_key: AgentKey) -> None:
    """Exhaustive over one file: the case bit (e/E, hex digits) and the low bit at every byte."""
    name = "audit-000001.jsonl"
    content = pristine[name]
    directory = Path(tempfile.mkdtemp(prefix="audit-sweep-"))
    try:
        for file_name, file_content in pristine.items():
            (directory / file_name).write_bytes(file_content)
        target = directory / name
        missed = []
        for position in range(len(content)):
            for mask in (0x20, 0x01):
                edited = bytearray(content)
                edited[position] ^= mask
                target.write_bytes(bytes(edited))
                if verify_log(directory, [agent_key.public_key]).ok:
                    missed.append((position, mask))
        assert missed == []
    finally:
        shutil.rmtree(directory)
