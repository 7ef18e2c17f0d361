"""The audit directory on disk: numbered log files, the signed head record, the lock.

audit-000001.jsonl, audit-000002.jsonl, ...   the hash-chained entries
audit.head.json                               signed (seq, hash, file) of the last entry
audit.lock                                    flock()ed by every writer (and verifiers, shared)
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.audit.canonical import canonical_bytes, head_statement
from agent.durable import fsync_directory

FILE_PATTERN = re.compile(r"^audit-(\d{6,})\.jsonl$")
HEAD_FILENAME = "audit.head.json"
LOCK_FILENAME = "audit.lock"
LOG_FILE_MODE = 0o640
LOCK_FILE_MODE = 0o660
DIRECTORY_MODE = 0o750


def log_file_name(index: int) -> str:
    return f"audit-{index:06d}.jsonl"


def list_log_files(directory: Path) -> list[tuple[int, Path]]:
    """The log files present, by number (gaps are the verifier's business)."""
    found: list[tuple[int, Path]] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        match = FILE_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), directory / name))
    return sorted(found)


def append_durably(path: Path, data: bytes) -> bool:
    """Appends and fsyncs; returns True when the file was created by this call."""
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_directory(path.parent)
    return created


@dataclass(frozen=True)
class LastLine:
    """The end of a log file: its last complete line and any unterminated bytes after it."""

    line: bytes | None  # without the newline
    line_offset: int  # where `line` starts
    complete_size: int  # size up to and including the last newline
    partial: bytes  # bytes after the last newline (a write cut short)


def read_last_line(path: Path, chunk: int = 65536) -> LastLine:
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        buffer = b""
        position = size
        # Find the last newline, then the one before it.
        while True:
            newline = buffer.rfind(b"\n")
            if newline >= 0:
                complete_size = position + newline + 1
                partial = buffer[newline + 1 :]
                before = buffer[:newline]
                start = before.rfind(b"\n")
                while start < 0 and position > 0:
                    step = min(chunk, position)
                    position -= step
                    handle.seek(position)
                    before = handle.read(step) + before
                    start = before.rfind(b"\n")
                line = before[start + 1 :]
                return LastLine(line, position + start + 1, complete_size, partial)
            if position == 0:
                return LastLine(None, 0, 0, buffer)
            step = min(chunk, position)
            position -= step
            handle.seek(position)
            buffer = handle.read(step) + buffer


@dataclass(frozen=True)
class HeadRecord:
    """Signed statement of the last entry written; rewritten atomically after every append."""

    seq: int
    hash: str
    file: str
    last_checkpoint_seq: int
    time: str
    signer: str
    signature: str  # base64 Ed25519 over head_statement(...)

    def statement(self) -> bytes:
        return head_statement(
            seq=self.seq,
            hash=self.hash,
            file=self.file,
            last_checkpoint_seq=self.last_checkpoint_seq,
            time=self.time,
            signer=self.signer,
        )

    def to_bytes(self) -> bytes:
        # Not asdict(): it deep-copies every field, and this runs at every append.
        return canonical_bytes({name: getattr(self, name) for name in self.__dataclass_fields__}) + b"\n"

    def verify(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), self.statement())
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def parse(cls, data: bytes) -> HeadRecord:
        """Raises ValueError unless `data` is exactly a head record in canonical form."""
        try:
            raw: Any = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict) or set(raw) != set(cls.__dataclass_fields__):
            raise ValueError("not a head record (unexpected keys)")
        types = {"seq": int, "last_checkpoint_seq": int}
        for name, value in raw.items():
            expected = types.get(name, str)
            if type(value) is not expected:
                raise ValueError(f"head field {name!r} has the wrong type")
        head = cls(**raw)
        if head.to_bytes() != data:
            raise ValueError("not in canonical form (edited?)")
        return head


def head_path(directory: Path) -> Path:
    return directory / HEAD_FILENAME


def read_head(directory: Path) -> HeadRecord | None:
    """The head record, None when absent; raises ValueError when unreadable."""
    try:
        data = head_path(directory).read_bytes()
    except FileNotFoundError:
        return None
    return HeadRecord.parse(data)


def write_head(directory: Path, head: HeadRecord) -> bytes:
    """Atomically replaces the head record (temp file, fsync, rename, fsync the directory); returns its bytes."""
    data = head.to_bytes()
    fd, tmp = tempfile.mkstemp(prefix=f".{HEAD_FILENAME}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, LOG_FILE_MODE)
        os.replace(tmp, head_path(directory))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(directory)
    return data


@contextlib.contextmanager
def shared_lock(directory: Path) -> Iterator[None]:
    """Readers take the lock shared so they never see an append half-done.

    A reader without access to the lock file (read-only copy of the log)
    goes on without it.
    """
    try:
        fd = os.open(directory / LOCK_FILENAME, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
