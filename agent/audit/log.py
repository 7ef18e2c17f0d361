"""The tamper-evident audit log: hash-chained JSON Lines with signed checkpoints.

Every entry names the hash of the one before it; every `checkpoint_every`
entries, and at close, a checkpoint entry carries an Ed25519 signature over
(seq, hash) of the chain so far; after every append a signed head record
names the last entry, so that cutting entries off the end is detected too.

Several processes append to one log (the daemon, and `edge-agent package
approve` run by a compliance officer): each append takes an exclusive
`flock` on `audit.lock`, finds the tail on disk, writes, fsyncs, and
rewrites the head before releasing it. Within a process a threading lock
serialises callers. A process remembers what its last write left on disk
(the log files' names, the last file's size and last line, the head's bytes)
and, when all of that is still there byte for byte, skips re-reading and
re-verifying the tail: anything another process or a crash changed in between
sends it down the full path, which repairs and reconciles as before.

`append` returns only once the entry is on disk (written and fsynced), so
a caller that answers an RPC afterwards never answers for an unrecorded act.
`append_many` writes several entries with one write, one fsync and one head;
a crash part-way leaves a torn last line, repaired at the next open like any
other. A crash after the write but before the head is renamed leaves more than
one entry after the signed head, which is recorded as `unsigned_entries`
(an error, as for anything beyond one entry): a batch buys speed with that
cost, never with a weaker check. A checkpoint is never batched with the entry
before it, so `append` keeps the one-entry crash window it always had; the
daemon writes every entry with `append`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.audit import events
from agent.audit.canonical import (
    GENESIS_HASH,
    RESERVED_KEYS,
    checkpoint_statement,
    entry_hash,
    key_rotation_statement,
    line_bytes,
    normalise_field,
)
from agent.audit.errors import AuditClosedError, AuditCorruptError
from agent.audit.record import AuditRecord, format_time
from agent.audit.storage import (
    DIRECTORY_MODE,
    LOCK_FILE_MODE,
    LOCK_FILENAME,
    HeadRecord,
    append_durably,
    head_path,
    list_log_files,
    log_file_name,
    read_head,
    read_last_line,
    write_head,
)
from agent.identity.agent_key import AgentKey

DEFAULT_CHECKPOINT_EVERY = 100
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024

Clock = Callable[[], dt.datetime]
Observer = Callable[[AuditRecord], None]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Tail:
    """The end of the chain as found on disk, under the lock."""

    seq: int
    hash: str
    kind: str | None
    file_index: int  # the file the next entry goes to (before rotation)
    file_size: int
    last_checkpoint_seq: int
    names: tuple[str, ...] = ()  # the log files present, in order


@dataclass(frozen=True)
class _Seen:
    """What this process's last write left on disk: if it is all still there, so is `tail`."""

    tail: _Tail
    last_line: bytes  # the last line of log file `tail.file_index`, with its newline
    head: bytes


@dataclass
class _Batch:
    """Entries prepared in memory, written by _flush with one write per file and one head."""

    lines: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, line)
    records: list[AuditRecord] = field(default_factory=list)
    time: str = ""


class AuditLog:
    """Append-only, hash-chained, signed. Create with `AuditLog.open(...)`."""

    def __init__(
        self,
        directory: Path,
        signer: AgentKey,
        *,
        checkpoint_every: int,
        max_file_bytes: int,
        clock: Clock,
        observer: Observer | None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if max_file_bytes < 1024:
            raise ValueError("max_file_bytes must be at least 1024")
        self._directory = directory
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._max_file_bytes = max_file_bytes
        self._clock = clock
        self._observer = observer
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._closed = False
        # Derived once: both cost a public-key computation per call.
        self._fingerprint = signer.fingerprint
        self._public_key = signer.public_key
        self._seen: _Seen | None = None

    # ------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        directory: Path,
        signer: AgentKey,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        clock: Clock = _utc_now,
        observer: Observer | None = None,
    ) -> AuditLog:
        """Opens (creating if needed) the log in `directory`.

        A line cut short by a crash is truncated away and an `audit.recovered`
        entry records it; so does a head record that disagrees with the log.
        Raises AuditCorruptError when the last complete line is not a valid
        entry: the writer will not chain onto something it cannot read.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
        log = cls(
            directory,
            signer,
            checkpoint_every=checkpoint_every,
            max_file_bytes=max_file_bytes,
            clock=clock,
            observer=observer,
        )
        try:
            with log._locked():
                log._prepare()
        except BaseException:
            log._release()
            raise
        return log

    def close(self, *, final_checkpoint: bool = True) -> None:
        """Writes a final checkpoint (unless the log already ends with one). Idempotent.

        `final_checkpoint=False` leaves the log as a crash would (for tests and
        for a process that must exit without signing).
        """
        with self._thread_lock:
            if self._closed:
                return
            try:
                if final_checkpoint:
                    with self._file_lock():
                        tail = self._prepare()
                        if tail.kind != events.AuditCheckpoint.kind:
                            self._write_checkpoint(tail)
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def directory(self) -> Path:
        return self._directory

    # ------------------------------------------------------------ writing

    def record(self, event: events.AuditEvent) -> AuditRecord:
        """Appends one event of the vocabulary (agent.audit.events), durably, and returns it.

        This is how the agent writes; `append` is the storage primitive below it.
        """
        return self.append(event.kind, **event.fields())

    def append(self, kind: str, **fields: Any) -> AuditRecord:
        """Appends one entry, durably, and returns it.

        Fields must be JSON values (None, bool, int, finite float, str, lists,
        dicts with str keys): anything else raises TypeError, and names that
        the entry itself uses (seq, time, kind, prev, hash) raise ValueError.
        """
        return self.append_many([(kind, fields)])[0]

    def append_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[AuditRecord]:
        """Appends the entries in order, durably, with one write, one fsync and one signed head.

        Each entry is checked as by append(); if any is refused nothing is written.
        Checkpoints fall where one-by-one appends would put them.
        """
        checked = [(kind, _checked_fields(kind, fields)) for kind, fields in entries]
        if not checked:
            return []
        with self._locked():
            tail = self._prepare()
            batch = _Batch()
            records = []
            for kind, stored in checked:
                records.append(self._stage(tail, batch, kind, stored))
                if tail.seq - tail.last_checkpoint_seq >= self._checkpoint_every:
                    # The entries so far get their own head first: a crash before the
                    # checkpoint's head then leaves one unsigned entry (a notice), as it
                    # did when every entry was written on its own.
                    self._flush(tail, batch)
                    batch = _Batch()
                    self._write_checkpoint(tail)
            if batch.lines:
                self._flush(tail, batch)
            return records

    def checkpoint(self) -> None:
        """Writes a signed checkpoint now (unless the log already ends with one)."""
        with self._locked():
            tail = self._prepare()
            if tail.kind != events.AuditCheckpoint.kind:
                self._write_checkpoint(tail)

    def rotate_key(self, new_signer: AgentKey, *, reason: str | None = None) -> AuditRecord:
        """Hands the log over to `new_signer`: an `audit.key_rotated` entry signed by the current key.

        The head that names the entry is already signed by the new key, and so is
        everything this log writes afterwards. The verifier accepts a change of
        signer only through such an entry (docs/audit.md, key rotation).
        """
        with self._locked():
            tail = self._prepare()
            time = format_time(self._clock())
            statement = key_rotation_statement(
                seq=tail.seq + 1,
                covers_seq=tail.seq,
                covers_hash=tail.hash,
                time=time,
                signer=self._fingerprint,
                new_signer=new_signer.fingerprint,
            )
            rotation = events.AuditKeyRotated(
                covers_seq=tail.seq,
                covers_hash=tail.hash,
                signed_time=time,
                signer=self._fingerprint,
                signer_public_key=base64.b64encode(self._signer.public_bytes).decode("ascii"),
                new_signer=new_signer.fingerprint,
                new_public_key=base64.b64encode(new_signer.public_bytes).decode("ascii"),
                signature=base64.b64encode(self._signer.sign(statement)).decode("ascii"),
                reason=reason,
            )
            self._signer = new_signer
            self._fingerprint = new_signer.fingerprint
            self._public_key = new_signer.public_key
            return self._write(tail, rotation)

    # ------------------------------------------------------------ internals

    def _locked(self) -> _BothLocks:
        return _BothLocks(self)

    def _file_lock(self) -> _FileLock:
        return _FileLock(self)

    def _lock_descriptor(self) -> int:
        # A forked child must not share the parent's open file description:
        # flock() would then consider both the holder.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = os.open(self._directory / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
            self._lock_pid = os.getpid()
        return self._lock_fd

    def _prepare(self) -> _Tail:
        """Under the lock: repair a torn last line, reconcile the head, return the tail."""
        files = list_log_files(self._directory)
        names = tuple(path.name for _, path in files)
        seen = self._seen
        if seen is not None and self._unchanged(seen, names):
            return dataclasses.replace(seen.tail)
        # Stale (someone else wrote, or a crash did): forgotten until this process writes again.
        self._seen = None
        repaired = self._repair_partial_line(files)
        tail = self._read_tail(files)
        tail.names = names
        head_problem = self._reconcile_head(tail)
        if repaired is not None:
            self._write(tail, repaired)
        if head_problem is not None:
            self._write(tail, head_problem)
        return tail

    def _unchanged(self, seen: _Seen, names: tuple[str, ...]) -> bool:
        """True when the log files, the last file's size and last line, and the head are as this process left them.

        Then the tail is the one remembered, the head is the one this process signed, and
        there is no torn line: the full path would find nothing to repair or record.
        """
        if names != seen.tail.names:
            return False
        try:
            fd = os.open(self._directory / log_file_name(seen.tail.file_index), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            size = os.fstat(fd).st_size
            length = len(seen.last_line)
            if size != seen.tail.file_size or size < length:
                return False
            if os.pread(fd, length, size - length) != seen.last_line:
                return False
        finally:
            os.close(fd)
        try:
            head = head_path(self._directory).read_bytes()
        except FileNotFoundError:
            return False
        return head == seen.head

    def _repair_partial_line(self, files: list[tuple[int, Path]]) -> events.AuditRecovered | None:
        for _, path in reversed(files):
            if path.stat().st_size == 0:
                continue
            end = read_last_line(path)
            if not end.partial:
                return None
            with path.open("r+b") as handle:
                handle.truncate(end.complete_size)
                handle.flush()
                os.fsync(handle.fileno())
            return events.AuditRecovered(
                condition=events.RECOVERED_PARTIAL_LINE,
                severity="notice",
                file=path.name,
                offset=end.complete_size,
                discarded_bytes=len(end.partial),
                discarded_sha256=hashlib.sha256(end.partial).hexdigest(),
                discarded_preview=end.partial[:120].decode("ascii", errors="backslashreplace"),
                message="an entry was cut short (crash or power loss while writing); "
                "its bytes were removed and this entry records it",
            )
        return None

    def _read_tail(self, files: list[tuple[int, Path]]) -> _Tail:
        if not files:
            return _Tail(0, GENESIS_HASH, None, 1, 0, 0)
        current_index, current_path = files[-1]
        current_size = current_path.stat().st_size
        for _, path in reversed(files):
            end = read_last_line(path)
            if end.line is None:
                continue
            entry = _parse_tail_entry(path, end.line)
            tail = _Tail(entry["seq"], entry["hash"], entry["kind"], current_index, current_size, 0)
            tail.last_checkpoint_seq = self._last_checkpoint_seq(tail, files)
            return tail
        return _Tail(0, GENESIS_HASH, None, current_index, current_size, 0)

    def _last_checkpoint_seq(self, tail: _Tail, files: list[tuple[int, Path]]) -> int:
        if tail.kind == events.AuditCheckpoint.kind:
            return tail.seq
        try:
            head = read_head(self._directory)
        except ValueError:
            head = None
        if head is not None and head.seq == tail.seq and head.hash == tail.hash:
            return head.last_checkpoint_seq
        # Rare (first append after a crash or a damaged head): look for it.
        for _, path in reversed(files):
            last = 0
            with path.open("rb") as handle:
                for raw in handle:
                    if b'"kind":"audit.checkpoint"' in raw:
                        try:
                            last = int(json.loads(raw)["seq"])
                        except (ValueError, KeyError, TypeError):
                            continue
            if last:
                return last
        return 0

    def _reconcile_head(self, tail: _Tail) -> events.AuditRecovered | None:
        """Compares the signed head with the log's end; any disagreement is recorded."""
        try:
            head = read_head(self._directory)
        except ValueError as exc:
            return _head_event(events.RECOVERED_HEAD_INVALID, tail, None, f"the head record is unreadable: {exc}")
        if head is None:
            if tail.seq == 0:
                return None
            return _head_event(
                events.RECOVERED_HEAD_MISSING, tail, None, "the head record is missing although the log has entries"
            )
        if head.signer != self._fingerprint:
            # Signing on would vouch for a history some other key wrote (a swapped key, a
            # re-signed log); a legitimate change of key leaves a head signed by the new key.
            return _head_event(
                events.RECOVERED_SIGNER_CHANGED,
                tail,
                head,
                f"the head record is signed by {head.signer}, not by this agent's key {self._fingerprint}: "
                "the identity key was replaced without `edge-agent keys rotate`, or the log re-signed",
            )
        if not head.verify(self._public_key):
            return _head_event(events.RECOVERED_HEAD_INVALID, tail, head, "the head record's signature is invalid")
        if head.seq == tail.seq:
            if head.hash == tail.hash:
                return None
            return _head_event(
                events.RECOVERED_HEAD_MISMATCH, tail, head, "the last entry is not the one the head record signed"
            )
        if head.seq > tail.seq:
            return _head_event(
                events.RECOVERED_LOG_TRUNCATED,
                tail,
                head,
                f"the log ends at seq {tail.seq} but the head record says seq {head.seq} was written: "
                "entries were removed",
            )
        if tail.seq - head.seq == 1:
            return _head_event(
                events.RECOVERED_HEAD_BEHIND,
                tail,
                head,
                "the last entry was written but the head record not updated (crash between the two)",
            )
        return _head_event(
            events.RECOVERED_UNSIGNED_ENTRIES,
            tail,
            head,
            f"{tail.seq - head.seq} entries follow the signed head record; at most one can come from a crash",
        )

    def _write(self, tail: _Tail, event: events.AuditEvent) -> AuditRecord:
        """Appends the log's own entry after `tail` and advances `tail` in place."""
        batch = _Batch()
        record = self._stage(tail, batch, event.kind, _checked_fields(event.kind, event.fields()))
        self._flush(tail, batch)
        return record

    def _stage(self, tail: _Tail, batch: _Batch, kind: str, fields: Mapping[str, Any]) -> AuditRecord:
        """Prepares the entry after `tail` in `batch` and advances `tail` in place (nothing is written yet)."""
        entry: dict[str, Any] = {"seq": tail.seq + 1, "time": format_time(self._clock()), "kind": kind}
        entry.update(fields)
        entry["prev"] = tail.hash
        entry["hash"] = entry_hash(entry)
        data = line_bytes(entry)
        if tail.file_size > 0 and tail.file_size + len(data) > self._max_file_bytes:
            tail.file_index += 1
            tail.file_size = 0
        name = log_file_name(tail.file_index)
        if name not in tail.names:
            tail.names = (*tail.names, name)
        batch.lines.append((name, data))
        tail.seq = entry["seq"]
        tail.hash = entry["hash"]
        tail.kind = kind
        tail.file_size += len(data)
        if kind == events.AuditCheckpoint.kind:
            tail.last_checkpoint_seq = tail.seq
        batch.time = entry["time"]
        record = AuditRecord.from_entry(entry, file=name)
        batch.records.append(record)
        return record

    def _flush(self, tail: _Tail, batch: _Batch) -> None:
        """Writes the staged lines (one write and fsync per file), then one signed head for the last."""
        self._seen = None
        for name, lines in itertools.groupby(batch.lines, key=lambda line: line[0]):
            append_durably(self._directory / name, b"".join(data for _, data in lines))
        last_file, last_line = batch.lines[-1]
        head = self._write_head(tail, last_file, batch.time)
        self._seen = _Seen(dataclasses.replace(tail), last_line, head)
        if self._observer is not None:
            for record in batch.records:
                self._observer(record)

    def _write_head(self, tail: _Tail, file: str, time: str) -> bytes:
        """Signs and writes the head record; returns its bytes as written."""
        unsigned = HeadRecord(tail.seq, tail.hash, file, tail.last_checkpoint_seq, time, self._fingerprint, "")
        signature = base64.b64encode(self._signer.sign(unsigned.statement())).decode("ascii")
        return write_head(self._directory, dataclasses.replace(unsigned, signature=signature))

    def _write_checkpoint(self, tail: _Tail) -> AuditRecord:
        time = format_time(self._clock())
        signer = self._fingerprint
        statement = checkpoint_statement(
            seq=tail.seq + 1, covers_seq=tail.seq, covers_hash=tail.hash, time=time, signer=signer
        )
        checkpoint = events.AuditCheckpoint(
            covers_seq=tail.seq,
            covers_hash=tail.hash,
            signed_time=time,
            signer=signer,
            signature=base64.b64encode(self._signer.sign(statement)).decode("ascii"),
        )
        return self._write(tail, checkpoint)


def _checked_fields(kind: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The fields as stored; raises as append() documents."""
    if not isinstance(kind, str) or not kind:
        raise ValueError("audit kind must be a non-empty string")
    clashes = RESERVED_KEYS.intersection(fields)
    if clashes:
        raise ValueError(f"audit fields may not be named {sorted(clashes)}")
    return {name: normalise_field(name, value) for name, value in fields.items()}


def _parse_tail_entry(path: Path, line: bytes) -> dict[str, Any]:
    try:
        entry: Any = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        entry = None
    if (
        not isinstance(entry, dict)
        or type(entry.get("seq")) is not int
        or not isinstance(entry.get("hash"), str)
        or not isinstance(entry.get("kind"), str)
    ):
        raise AuditCorruptError(
            f"{path}: the last line is not a valid audit entry; refusing to append to it "
            "(run `edge-agent audit verify` and keep a copy of the directory for investigation)"
        )
    return entry


def _head_event(condition: str, tail: _Tail, head: HeadRecord | None, message: str) -> events.AuditRecovered:
    return events.AuditRecovered(
        condition=condition,
        severity="notice" if condition in events.RECOVERED_NOTICE_REASONS else "error",
        log_seq=tail.seq,
        log_hash=tail.hash,
        head_seq=head.seq if head else None,
        head_hash=head.hash if head else None,
        head_file=head.file if head else None,
        message=message,
    )


class _FileLock:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._fd = -1

    def __enter__(self) -> None:
        self._fd = self._log._lock_descriptor()
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class _BothLocks:
    def __init__(self, log: AuditLog) -> None:
        self._log = log
        self._file_lock: _FileLock | None = None

    def __enter__(self) -> None:
        self._log._thread_lock.acquire()
        try:
            if self._log._closed:
                raise AuditClosedError(f"audit log {self._log.directory} is closed")
            self._file_lock = _FileLock(self._log)
            self._file_lock.__enter__()
        except BaseException:
            self._log._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            if self._file_lock is not None:
                self._file_lock.__exit__()
        finally:
            self._log._thread_lock.release()
