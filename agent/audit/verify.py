"""Checking an audit directory: chain, checkpoints, head record, file sequence.

The verifier takes the writers' lock (shared) only long enough to note the
head record and the size of every file, then checks that snapshot without
holding up the daemon: files only grow and new files only appear after it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.audit import events
from agent.audit.canonical import (
    GENESIS_HASH,
    checkpoint_statement,
    entry_hash,
    key_rotation_statement,
    line_bytes,
)
from agent.audit.errors import AuditLogNotFoundError
from agent.audit.storage import (
    FILE_PATTERN,
    HEAD_FILENAME,
    HeadRecord,
    head_path,
    list_log_files,
    log_file_name,
    shared_lock,
)
from agent.identity.agent_key import fingerprint

MAX_PROBLEMS = 200


@dataclass(frozen=True)
class Problem:
    """Where the log is broken (or, as a notice, something to know about)."""

    file: str | None
    line: int | None
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = self.file or "(log)"
        if self.line is not None:
            where += f":{self.line}"
        if self.seq is not None:
            where += f" (seq {self.seq})"
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Trust:
    """Whom the log must be signed by.

    `anchors` are the fingerprints trusted outright: the key pinned in agent.toml,
    or keys the person verifying names. `keys` are public keys to check signatures
    with; having a key does not make it trusted (a .pub file in the state directory
    is whatever its last writer put there). The log's signers form a chain, one
    key at a time, each new key introduced by an `audit.key_rotated` entry signed
    by the one before; the log is trusted when an anchor is in that chain.
    `described` says what the anchors are, for messages.
    """

    anchors: frozenset[str]
    keys: tuple[Ed25519PublicKey, ...]
    described: str = "a trusted key"

    @classmethod
    def of_keys(cls, keys: Sequence[Ed25519PublicKey], described: str = "a trusted key") -> Trust:
        return cls(frozenset(fingerprint(key) for key in keys), tuple(keys), described)


@dataclass(frozen=True)
class KeyChange:
    """A change of signer the log announced with a valid `audit.key_rotated` entry."""

    seq: int
    old: str
    new: str


@dataclass(frozen=True)
class VerificationResult:
    ok: bool
    entries_checked: int
    last_checkpoint_seq: int
    problems: list[Problem]
    # Not failures: crash recoveries the writer recorded, unsigned tails of files, ...
    notices: list[Problem] = field(default_factory=list)
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    # The keys that signed the log, in order, and where one handed over to the next.
    signers: tuple[str, ...] = ()
    key_changes: tuple[KeyChange, ...] = ()

    @property
    def first_break(self) -> Problem | None:
        return self.problems[0] if self.problems else None


@dataclass(frozen=True)
class _Snapshot:
    files: list[tuple[int, Path, int]]  # (number, path, size to read)
    head: bytes | None


@dataclass
class _Walk:
    keys: dict[str, Ed25519PublicKey]
    head: HeadRecord | None
    problems: list[Problem] = field(default_factory=list)
    notices: list[Problem] = field(default_factory=list)
    expected_seq: int | None = 1
    prev_hash: str | None = GENESIS_HASH
    entries: int = 0
    last_checkpoint_seq: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH
    last_file: str | None = None
    last_line: int | None = None
    # Where the head's entry and the one after it were found.
    head_entry: tuple[str, int, str] | None = None  # (file, line, hash)
    after_head: tuple[str, int] | None = None
    # The key expected to sign here (None until the first valid signature), and the chain so far.
    signer: str | None = None
    signers: list[str] = field(default_factory=list)
    key_changes: list[KeyChange] = field(default_factory=list)

    def signed_by(self, signer: str) -> None:
        if self.signer is None:
            self.signer = signer
            self.signers.append(signer)

    def problem(self, file: str | None, line: int | None, seq: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(file, line, seq, message))
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append(Problem(None, None, None, "too many problems; stopped listing them"))

    def notice(self, file: str | None, line: int | None, seq: int | None, message: str) -> None:
        self.notices.append(Problem(file, line, seq, message))


def verify_log(directory: Path, trusted: Trust | Sequence[Ed25519PublicKey]) -> VerificationResult:
    """Verifies the log in `directory` against the agent's key (a Trust, or public keys trusted outright).

    `ok` is True only when every entry is intact and chained, every
    checkpoint and the head are signed by the log's key at that point, a
    change of key happens only through a valid `audit.key_rotated` entry, a
    trusted key is among the signers, no file is missing and the signed head
    record names the last entry. `problems` lists, in log order, where it
    breaks; the first one is where the chain first breaks.
    Raises AuditLogNotFoundError when `directory` holds no log at all.
    """
    trust = trusted if isinstance(trusted, Trust) else Trust.of_keys(trusted)
    snapshot = _snapshot(directory)
    keys = {fingerprint(key): key for key in trust.keys} | _rotated_keys(snapshot)
    head: HeadRecord | None = None
    head_problem: str | None = None
    if snapshot.head is not None:
        try:
            head = HeadRecord.parse(snapshot.head)
        except ValueError as exc:
            head_problem = f"the head record is unreadable: {exc}"
    walk = _Walk(keys, head)

    _check_file_numbers(walk, snapshot)
    for position, (number, path, size) in enumerate(snapshot.files):
        _check_file(walk, number, path, size, last=position == len(snapshot.files) - 1)
    _check_head(walk, head, head_problem)
    _check_anchor(walk, trust)
    if walk.last_seq > walk.last_checkpoint_seq:
        walk.notice(
            None,
            None,
            walk.last_checkpoint_seq + 1,
            f"entries {walk.last_checkpoint_seq + 1}..{walk.last_seq} follow the last checkpoint; "
            "only the signed head record covers them",
        )
    return VerificationResult(
        ok=not walk.problems,
        entries_checked=walk.entries,
        last_checkpoint_seq=walk.last_checkpoint_seq,
        problems=walk.problems,
        notices=walk.notices,
        last_seq=walk.last_seq,
        last_hash=walk.last_hash,
        signers=tuple(walk.signers),
        key_changes=tuple(walk.key_changes),
    )


def _snapshot(directory: Path) -> _Snapshot:
    if not directory.is_dir():
        raise AuditLogNotFoundError(f"{directory}: no such audit directory")
    with shared_lock(directory):
        files = [(number, path, path.stat().st_size) for number, path in list_log_files(directory)]
        try:
            head: bytes | None = head_path(directory).read_bytes()
        except FileNotFoundError:
            head = None
    if not files and head is None:
        raise AuditLogNotFoundError(f"{directory}: no audit log here (no audit-*.jsonl, no {HEAD_FILENAME})")
    return _Snapshot(files, head)


def _rotated_keys(snapshot: _Snapshot) -> dict[str, Ed25519PublicKey]:
    """The public keys that audit.key_rotated entries carry, by fingerprint.

    Read ahead because the checkpoints before a rotation are signed by the key it
    retires, which may be written nowhere else. Keys, not trust: a fingerprint is
    the hash of its key, and who may sign where is decided by the walk.
    """
    found: dict[str, Ed25519PublicKey] = {}
    for _, path, size in snapshot.files:
        with path.open("rb") as handle:
            data = handle.read(size)
        for raw in data.split(b"\n"):
            if b'"kind":"audit.key_rotated"' not in raw:
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # reported by the walk
            for name in ("signer_public_key", "new_public_key"):
                key = _raw_public_key(entry.get(name)) if isinstance(entry, dict) else None
                if key is not None:
                    found[fingerprint(key)] = key
    return found


def _check_file_numbers(walk: _Walk, snapshot: _Snapshot) -> None:
    present = {number for number, _, _ in snapshot.files}
    highest = max(present, default=0)
    if walk.head is not None:
        # The head names the file of the last entry: a missing last file is a gap too.
        match = FILE_PATTERN.match(walk.head.file)
        if match:
            highest = max(highest, int(match.group(1)))
    for number in range(1, highest + 1):
        if number not in present:
            walk.problem(log_file_name(number), None, None, "log file missing (deleted or renamed)")


def _check_file(walk: _Walk, number: int, path: Path, size: int, *, last: bool) -> None:
    name = path.name
    with path.open("rb") as handle:
        data = handle.read(size)
    if not data:
        walk.notice(name, None, None, "empty log file")
        return
    lines = data.split(b"\n")
    partial = lines.pop()
    for index, raw in enumerate(lines, start=1):
        _check_line(walk, name, index, raw)
    if partial:
        where = len(lines) + 1
        if last:
            walk.notice(
                name,
                where,
                None,
                f"incomplete last line ({len(partial)} bytes): a write was cut short by a crash; "
                "the agent removes it and records an audit.recovered entry when it next opens the log",
            )
        else:
            walk.problem(name, where, None, f"line without newline ({len(partial)} bytes) before the end of the log")
            walk.prev_hash = None
            walk.expected_seq = None


def _check_line(walk: _Walk, file: str, line: int, raw: bytes) -> None:
    try:
        entry: Any = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        walk.problem(file, line, walk.expected_seq, f"not a valid JSON entry ({exc})")
        walk.prev_hash = None
        walk.expected_seq = None if walk.expected_seq is None else walk.expected_seq + 1
        return
    shape = _shape_error(entry)
    if shape is not None:
        walk.problem(file, line, walk.expected_seq, shape)
        walk.prev_hash = None
        walk.expected_seq = None if walk.expected_seq is None else walk.expected_seq + 1
        return
    seq: int = entry["seq"]
    messages: list[str] = []
    if line_bytes(entry) != raw + b"\n":
        messages.append("not in the form the agent writes (edited by hand?)")
    if entry_hash(entry) != entry["hash"]:
        messages.append("content does not match its hash (entry edited)")
    if walk.expected_seq is not None and seq != walk.expected_seq:
        if seq > walk.expected_seq:
            messages.append(f"seq {seq} where {walk.expected_seq} was expected (entries deleted?)")
        else:
            messages.append(
                f"seq {seq} where {walk.expected_seq} was expected (entry inserted, reordered or replayed?)"
            )
    if walk.prev_hash is not None and entry["prev"] != walk.prev_hash:
        messages.append("prev does not match the hash of the entry before it (chain broken here)")
    if entry["kind"] == events.AuditCheckpoint.kind:
        checkpoint_error = _checkpoint_error(walk, entry)
        if checkpoint_error is not None:
            messages.append(checkpoint_error)
        elif not messages:
            walk.last_checkpoint_seq = seq
    if entry["kind"] == events.AuditKeyRotated.kind:
        rotation_error = _rotation_error(walk, entry)
        if rotation_error is not None:
            messages.append(rotation_error)
    if messages:
        walk.problem(file, line, seq, "; ".join(messages))
    if entry["kind"] == events.AuditRecovered.kind:
        _note_recovery(walk, file, line, seq, entry)

    walk.entries += 1
    walk.prev_hash = entry["hash"]
    walk.expected_seq = seq + 1
    walk.last_seq = seq
    walk.last_hash = entry["hash"]
    walk.last_file = file
    walk.last_line = line
    if walk.head is not None:
        if seq == walk.head.seq and walk.head_entry is None:
            walk.head_entry = (file, line, entry["hash"])
        elif seq == walk.head.seq + 1 and walk.after_head is None:
            walk.after_head = (file, line)


def _shape_error(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not a JSON object"
    for name, expected in (("seq", int), ("time", str), ("kind", str), ("prev", str), ("hash", str)):
        if name not in entry:
            return f"entry has no {name!r}"
        if type(entry[name]) is not expected:
            return f"entry's {name!r} is not a {expected.__name__}"
    if entry["seq"] < 1:
        return "entry's seq is not positive"
    return None


# The fields a checkpoint and a key rotation share (agent.audit.events.ChainStatement), and a rotation's own.
_STATEMENT_FIELDS = {"covers_seq": int, "covers_hash": str, "signed_time": str, "signer": str, "signature": str}
_ROTATION_FIELDS = {**_STATEMENT_FIELDS, "signer_public_key": str, "new_signer": str, "new_public_key": str}


def _statement_error(walk: _Walk, entry: dict[str, Any], what: str, fields: dict[str, type]) -> str | None:
    """What checkpoints and key rotations have in common: typed fields, covering the entry before,
    signed by the log's key at this point (a new key comes only through a key rotation)."""
    for name, expected in fields.items():
        if type(entry.get(name)) is not expected:
            return f"{what} field {name!r} missing or mistyped"
    if entry["covers_seq"] != entry["seq"] - 1 or entry["covers_hash"] != entry["prev"]:
        return f"{what} does not cover the entry before it"
    return _signer_change_error(what, walk, entry["signer"])


def _signer_change_error(what: str, walk: _Walk, signer: str) -> str | None:
    if walk.signer is None or signer == walk.signer:
        return None
    return (
        f"{what} signed by {signer}, but the log is signed by {walk.signer} up to here: a new key must be "
        f"introduced by an {events.AuditKeyRotated.kind} entry signed by the old one (key swapped?)"
    )


def _statement(entry: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's or a key rotation's signature covers, rebuilt from the entry."""
    chain: dict[str, Any] = {
        "seq": entry["seq"],
        "covers_seq": entry["covers_seq"],
        "covers_hash": entry["covers_hash"],
        "time": entry["signed_time"],
        "signer": entry["signer"],
    }
    if entry["kind"] == events.AuditKeyRotated.kind:
        return key_rotation_statement(**chain, new_signer=entry["new_signer"])
    return checkpoint_statement(**chain)


def _signature_valid(key: Ed25519PublicKey, signature: str, statement: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), statement)
    except (InvalidSignature, ValueError):
        return False
    return True


def _checkpoint_error(walk: _Walk, entry: dict[str, Any]) -> str | None:
    error = _statement_error(walk, entry, "checkpoint", _STATEMENT_FIELDS)
    if error is not None:
        return error
    key = walk.keys.get(entry["signer"])
    if key is None:
        return f"checkpoint signed by a key that is not trusted ({entry['signer']})"
    if not _signature_valid(key, entry["signature"], _statement(entry)):
        return "checkpoint signature is not valid (forged or altered checkpoint)"
    walk.signed_by(entry["signer"])
    return None


def _rotation_error(walk: _Walk, entry: dict[str, Any]) -> str | None:
    """Checks an audit.key_rotated entry; when valid, its new key signs from here on."""
    error = _statement_error(walk, entry, "key rotation", _ROTATION_FIELDS)
    if error is not None:
        return error
    old = _raw_public_key(entry["signer_public_key"])
    new = _raw_public_key(entry["new_public_key"])
    if old is None or fingerprint(old) != entry["signer"]:
        return f"key rotation: signer_public_key is not the key {entry['signer']}"
    if new is None or fingerprint(new) != entry["new_signer"]:
        return f"key rotation: new_public_key is not the key {entry['new_signer']}"
    if not _signature_valid(old, entry["signature"], _statement(entry)):
        return "key rotation signature is not valid (forged or altered rotation)"
    walk.signed_by(entry["signer"])
    walk.key_changes.append(KeyChange(entry["seq"], entry["signer"], entry["new_signer"]))
    walk.signer = entry["new_signer"]
    walk.signers.append(entry["new_signer"])
    return None


def _raw_public_key(text: object) -> Ed25519PublicKey | None:
    if not isinstance(text, str):
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return None


def _check_anchor(walk: _Walk, trust: Trust) -> None:
    """The chain of signers must reach a trusted key: a consistent log signed by another key is a forgery."""
    if not walk.signers or trust.anchors.intersection(walk.signers):
        return
    walk.problem(
        None,
        None,
        None,
        f"the log is signed by {' then '.join(walk.signers)}, not by {trust.described}: the identity key was "
        "swapped and the log re-signed, or the wrong key was given",
    )


def _note_recovery(walk: _Walk, file: str, line: int, seq: int, entry: dict[str, Any]) -> None:
    # Versions before 0.2 wrote the condition as `reason`.
    condition = entry.get("condition", entry.get("reason"))
    message = entry.get("message") or condition
    text = f"the agent recorded a recovery when opening the log ({condition}): {message}"
    if condition in events.RECOVERED_NOTICE_REASONS:
        walk.notice(file, line, seq, text)
    else:
        walk.problem(file, line, seq, text)


def _check_head(walk: _Walk, head: HeadRecord | None, head_problem: str | None) -> None:
    if head_problem is not None:
        walk.problem(HEAD_FILENAME, None, None, head_problem)
        return
    if head is None:
        walk.problem(
            HEAD_FILENAME, None, None, "head record missing: removal of entries at the end cannot be ruled out"
        )
        return
    key = walk.keys.get(head.signer)
    changed = _signer_change_error("head record", walk, head.signer)
    if changed is not None:
        walk.problem(HEAD_FILENAME, None, head.seq, changed)
    elif key is None:
        walk.problem(HEAD_FILENAME, None, head.seq, f"head record signed by a key that is not trusted ({head.signer})")
    elif not head.verify(key):
        walk.problem(HEAD_FILENAME, None, head.seq, "head record signature is not valid (forged or altered)")
    else:
        walk.signed_by(head.signer)
    end = f"{walk.last_file}:{walk.last_line}" if walk.last_file else "the start"
    if head.seq > walk.last_seq:
        walk.problem(
            walk.last_file,
            walk.last_line,
            walk.last_seq,
            f"log truncated: it ends at seq {walk.last_seq} ({end}) but the signed head record says "
            f"seq {head.seq} was written to {head.file}",
        )
        if head.last_checkpoint_seq > walk.last_checkpoint_seq:
            walk.problem(
                walk.last_file,
                walk.last_line,
                walk.last_seq,
                f"the signed head names a checkpoint at seq {head.last_checkpoint_seq}; the last one in the "
                f"log is at seq {walk.last_checkpoint_seq} (truncated across a checkpoint)",
            )
        return
    if walk.head_entry is None:
        walk.problem(HEAD_FILENAME, None, head.seq, f"no entry with seq {head.seq}, which the head record signs")
        return
    file, line, hash_ = walk.head_entry
    if hash_ != head.hash:
        walk.problem(file, line, head.seq, "this is not the entry the signed head record names (replaced)")
    if file != head.file:
        walk.problem(file, line, head.seq, f"the signed head record places this entry in {head.file} (renamed file?)")
    if head.seq < walk.last_seq and walk.after_head is not None:
        after_file, after_line = walk.after_head
        walk.problem(
            after_file,
            after_line,
            head.seq + 1,
            f"entries {head.seq + 1}..{walk.last_seq} come after the last signed head record "
            "(appended without the agent's key?)",
        )
    if head.last_checkpoint_seq != walk.last_checkpoint_seq and head.seq == walk.last_seq:
        walk.problem(
            HEAD_FILENAME,
            None,
            head.seq,
            f"the signed head names a checkpoint at seq {head.last_checkpoint_seq}; "
            f"the log's last valid checkpoint is at seq {walk.last_checkpoint_seq}",
        )
