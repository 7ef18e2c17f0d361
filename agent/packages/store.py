"""Content-addressed package store with staged uploads, rollback protection and review.

Layout under ``root`` (the agent passes ``state_dir / "packages"``)::

    index.sqlite              packages, decisions, honoured approvals (WAL, synchronous=FULL)
    blobs/sha256/<hex>        verified archives, named by the sha256 of their bytes
    staging/upload-*.part     uploads in progress (locked by their writer)

A package exists for readers exactly when its index row exists. ``commit`` verifies
the staged file, then -- inside one ``BEGIN IMMEDIATE`` transaction -- checks rollback
protection, renames the file into ``blobs`` (same file system, fsync of file and
directory) and inserts the row. A crash before the commit leaves at most a staging
file or an unindexed blob, both removed when the store is next opened (under the same
write lock, so a concurrent committer's blob is never mistaken for debris).
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.durable import fsync_directory
from agent.durable_sqlite import read_only, write_transaction
from agent.identity.agent_key import AgentKey
from agent.packages.canonical import parse_strict_json
from agent.packages.decisions import Decision, DecisionKind, format_time, sign_decision
from agent.packages.errors import (
    DecisionError,
    PackageRejected,
    PackageStoreError,
    RejectionCode,
    UnknownPackageError,
)
from agent.packages.limits import PackageLimits
from agent.packages.manifest import Manifest, parse_manifest
from agent.packages.semver import SemVer
from agent.packages.trust import TrustStore
from agent.packages.verification import VerifiedPackage, verify_package

# 2: the honoured table (opening a version 1 index adds it).
_SCHEMA_VERSION = 2
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_CREATE = (
    """CREATE TABLE IF NOT EXISTS packages (
        digest         TEXT PRIMARY KEY NOT NULL,
        name           TEXT NOT NULL,
        version        TEXT NOT NULL,
        publisher      TEXT NOT NULL,
        size           INTEGER NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
        uploaded_at    TEXT NOT NULL,
        signer_key_ids TEXT NOT NULL,
        manifest       BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS packages_by_name ON packages (name)",
    """CREATE TABLE IF NOT EXISTS decisions (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        digest   TEXT NOT NULL REFERENCES packages (digest),
        decision TEXT NOT NULL
    )""",
    # Approvals the daemon has let a task run on (by signature), so that each is audited once
    # when first honoured, also one restored from a backup or written without `package approve`.
    """CREATE TABLE IF NOT EXISTS honoured (
        signature   TEXT PRIMARY KEY NOT NULL,
        digest      TEXT NOT NULL,
        honoured_at TEXT NOT NULL
    )""",
)
_SELECT = "SELECT digest, version, size, status, uploaded_at, signer_key_ids, manifest FROM packages"


class PackageStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, eq=False)
class StoredPackage:
    digest: str
    size: int
    status: PackageStatus
    uploaded_at: datetime
    signer_key_ids: tuple[str, ...]
    manifest: Manifest
    manifest_bytes: bytes
    decision: Decision | None
    """The latest review decision (None: pending, or approved by policy without review)."""

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version.text


def parse_digest(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; ``ValueError`` otherwise."""
    match = _DIGEST.match(digest)
    if match is None:
        raise ValueError(f"{digest!r} is not a package digest (sha256:<64 lowercase hex>)")
    return match.group(1)


class StagedUpload:
    """An upload being received. Use as a context manager; it is aborted unless committed."""

    def __init__(self, path: Path, handle: Any, expected_size: int, expected_sha256: str | None) -> None:
        self._path = path
        self._handle = handle
        self._hash = hashlib.sha256()
        self.expected_size = expected_size
        self.expected_sha256 = expected_sha256
        self.received = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        """Appends ``chunk``; refuses (and aborts) beyond the declared size."""
        if self._closed:
            raise PackageStoreError("the upload is already finished or aborted")
        if self.received + len(chunk) > self.expected_size:
            self.abort()
            raise PackageRejected(
                RejectionCode.UPLOAD_EXCEEDS_DECLARED_SIZE,
                f"the upload sent more than the {self.expected_size} bytes it declared",
            )
        self._handle.write(chunk)
        self._hash.update(chunk)
        self.received += len(chunk)

    def abort(self) -> None:
        """Discards the upload (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._path.unlink(missing_ok=True)
        finally:
            self._handle.close()  # releases the lock

    def _finish(self) -> tuple[Path, str, bytes]:
        """Checks size and digest, makes the file durable; returns (path, hex, bytes)."""
        if self._closed:
            raise PackageStoreError("the upload is already finished or aborted")
        if self.received != self.expected_size:
            raise PackageRejected(
                RejectionCode.UPLOAD_TRUNCATED,
                f"the upload ended after {self.received} of {self.expected_size} declared bytes",
            )
        hex_digest = self._hash.hexdigest()
        if self.expected_sha256 is not None and hex_digest != parse_digest(self.expected_sha256):
            raise PackageRejected(
                RejectionCode.UPLOAD_DIGEST_MISMATCH,
                f"the upload's sha256 is {hex_digest}, not the declared {self.expected_sha256}",
            )
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.seek(0)
        data = self._handle.read(self.expected_size + 1)
        if hashlib.sha256(data).hexdigest() != hex_digest:
            raise PackageStoreError("the staged upload changed on disk")
        return self._path, hex_digest, data

    def __enter__(self) -> StagedUpload:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.abort()


class PackageStore:
    """The agent's packages. Safe to use from several threads and processes at once:
    each operation opens its own short-lived SQLite connection."""

    def __init__(self, root: Path, *, busy_timeout: float = 10.0) -> None:
        self._root = root
        self._index = root / "index.sqlite"
        self._blobs = root / "blobs" / "sha256"
        self._staging = root / "staging"
        self._busy_timeout = busy_timeout
        if not root.parent.is_dir():
            raise PackageStoreError(f"cannot open the package store {root}: {root.parent} does not exist")
        try:
            for directory in (root, root / "blobs", self._blobs, self._staging):
                directory.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise PackageStoreError(f"cannot create the package store {root}: {exc.strerror}") from exc
        self._sweep()

    @property
    def root(self) -> Path:
        return self._root

    # -- uploads ----------------------------------------------------------------------

    def begin_upload(
        self, expected_size: int, expected_sha256: str | None, limits: PackageLimits | None = None
    ) -> StagedUpload:
        """Starts an upload of ``expected_size`` bytes (``expected_sha256``: ``sha256:<hex>`` or None)."""
        limits = limits or PackageLimits()
        if expected_size > limits.max_archive_bytes:
            raise PackageRejected(
                RejectionCode.ARCHIVE_TOO_LARGE,
                f"the upload declares {expected_size} bytes, more than the limit of {limits.max_archive_bytes}",
            )
        if expected_size < 1:
            raise PackageRejected(RejectionCode.UPLOAD_TRUNCATED, "the upload declares no bytes")
        if expected_sha256 is not None:
            try:
                parse_digest(expected_sha256)
            except ValueError as exc:
                raise PackageRejected(RejectionCode.UPLOAD_DIGEST_MISMATCH, str(exc)) from None
        fd, name = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=self._staging)
        handle = os.fdopen(fd, "w+b")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            handle.close()
            Path(name).unlink(missing_ok=True)
            raise
        return StagedUpload(Path(name), handle, expected_size, expected_sha256)

    def commit(
        self,
        staged: StagedUpload,
        trust: TrustStore,
        limits: PackageLimits,
        now: datetime,
        require_approval: bool,
        *,
        check: Callable[[VerifiedPackage], None] | None = None,
    ) -> StoredPackage:
        """Verifies and stores a finished upload; the staging file is gone afterwards.

        ``check`` (e.g. the policy's allowed package names) runs on the verified package
        before anything is stored; whatever it raises propagates and nothing is stored.
        Committing a digest already stored is idempotent (returns the stored record,
        whatever its status). Raises ``PackageRejected`` (nothing stored) otherwise.
        """
        try:
            path, hex_digest, data = staged._finish()
            verified = verify_package(data, trust, limits, now)
            if check is not None:
                check(verified)
            return self._insert(path, hex_digest, verified, now, require_approval)
        finally:
            staged.abort()

    def add(
        self,
        data: bytes,
        trust: TrustStore,
        limits: PackageLimits,
        now: datetime,
        require_approval: bool,
        *,
        check: Callable[[VerifiedPackage], None] | None = None,
    ) -> StoredPackage:
        """Stores a whole archive held in memory (a staged upload of one chunk)."""
        with self.begin_upload(len(data), None, limits) as staged:
            staged.write(data)
            return self.commit(staged, trust, limits, now, require_approval, check=check)

    def _insert(
        self, staged_path: Path, hex_digest: str, verified: VerifiedPackage, now: datetime, require_approval: bool
    ) -> StoredPackage:
        manifest = verified.manifest
        blob = self._blobs / hex_digest
        with self._write() as conn:
            existing = self._row(conn, verified.digest)
            if existing is not None:
                return existing
            rows = conn.execute(
                "SELECT version FROM packages WHERE name = ? AND status IN ('pending', 'approved')",
                (manifest.name,),
            ).fetchall()
            for (text,) in rows:
                accepted = SemVer.parse(text)
                if manifest.version < accepted:
                    raise PackageRejected(
                        RejectionCode.ROLLBACK,
                        f"{manifest.name} {manifest.version} is older than the accepted version {accepted}",
                    )
                if manifest.version == accepted:
                    raise PackageRejected(
                        RejectionCode.VERSION_CONFLICT,
                        f"{manifest.name} {accepted} is already accepted with different contents; "
                        "publish a new version",
                    )
            os.chmod(staged_path, 0o600)
            os.replace(staged_path, blob)
            try:
                fsync_directory(self._blobs)
                status = PackageStatus.PENDING if require_approval else PackageStatus.APPROVED
                conn.execute(
                    "INSERT INTO packages (digest, name, version, publisher, size, status, uploaded_at,"
                    " signer_key_ids, manifest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        verified.digest,
                        manifest.name,
                        manifest.version.text,
                        manifest.publisher,
                        verified.size,
                        status.value,
                        format_time(now),
                        json.dumps(list(verified.signer_key_ids)),
                        verified.manifest_bytes,
                    ),
                )
                stored = self._row(conn, verified.digest)
            except BaseException:
                blob.unlink(missing_ok=True)
                raise
        if stored is None:  # pragma: no cover - the row was just inserted
            raise PackageStoreError("the package vanished while it was stored")
        return stored

    # -- reading ----------------------------------------------------------------------

    def get(self, digest: str) -> StoredPackage | None:
        with self._read() as conn:
            return self._row(conn, digest)

    def list(self) -> builtins.list[StoredPackage]:
        """Every package, by name then upload time."""
        with self._read() as conn:
            rows = conn.execute(f"{_SELECT} ORDER BY name, uploaded_at").fetchall()
            return [self._to_package(conn, row) for row in rows]

    def pending(self) -> builtins.list[StoredPackage]:
        return [p for p in self.list() if p.status is PackageStatus.PENDING]

    def read_bytes(self, digest: str) -> bytes:
        """The stored archive; raises ``PackageStoreError`` if the blob was altered on disk."""
        if self.get(digest) is None:
            raise UnknownPackageError(digest)
        hex_digest = parse_digest(digest)
        try:
            data = (self._blobs / hex_digest).read_bytes()
        except OSError as exc:
            raise PackageStoreError(f"package {digest} cannot be read: {exc.strerror}") from exc
        if hashlib.sha256(data).hexdigest() != hex_digest:
            raise PackageStoreError(f"package {digest} was altered on disk")
        return data

    def open_verified(self, digest: str, trust: TrustStore, limits: PackageLimits, now: datetime) -> VerifiedPackage:
        """Re-verifies a stored package against today's trust store (keys may have been
        revoked since the upload). Callers still check ``get(digest).status``."""
        return verify_package(self.read_bytes(digest), trust, limits, now)

    # -- review -----------------------------------------------------------------------

    def approve(self, digest: str, reviewer: AgentKey, reviewer_name: str, now: datetime, reason: str = "") -> Decision:
        """Records a signed approval of a PENDING package."""
        return self._decide(digest, DecisionKind.APPROVE, reviewer=reviewer, name=reviewer_name, now=now, reason=reason)

    def reject(self, digest: str, reason: str, reviewer: AgentKey, reviewer_name: str, now: datetime) -> Decision:
        """Records a signed rejection of a PENDING package, or withdraws an approval."""
        if not reason.strip():
            raise DecisionError("a rejection needs a reason")
        return self._decide(digest, DecisionKind.REJECT, reviewer=reviewer, name=reviewer_name, now=now, reason=reason)

    def _decide(
        self, digest: str, kind: DecisionKind, *, reviewer: AgentKey, name: str, now: datetime, reason: str
    ) -> Decision:
        with self._write() as conn:
            stored = self._row(conn, digest)
            if stored is None:
                raise UnknownPackageError(digest)
            allowed = (
                (PackageStatus.PENDING,)
                if kind is DecisionKind.APPROVE
                else (PackageStatus.PENDING, PackageStatus.APPROVED)
            )
            if stored.status not in allowed:
                raise DecisionError(f"package {digest} is {stored.status.value}; it cannot be {kind.value}d")
            decision = sign_decision(
                digest, decision=kind, reviewer=reviewer, reviewer_name=name, now=now, reason=reason
            )
            status = PackageStatus.APPROVED if kind is DecisionKind.APPROVE else PackageStatus.REJECTED
            conn.execute(
                "INSERT INTO decisions (digest, decision) VALUES (?, ?)",
                (digest, json.dumps(decision.to_json(), sort_keys=True)),
            )
            conn.execute("UPDATE packages SET status = ? WHERE digest = ?", (status.value, digest))
        return decision

    def decisions(self, digest: str) -> builtins.list[Decision]:
        """Every decision recorded for ``digest``, oldest first, as stored (not verified)."""
        with self._read() as conn:
            rows = conn.execute("SELECT decision FROM decisions WHERE digest = ? ORDER BY id", (digest,)).fetchall()
        try:
            return [Decision.from_json(json.loads(text)) for (text,) in rows]
        except (ValueError, DecisionError) as exc:
            message = f"the package index {self._index} holds a damaged decision on {digest}: {exc}"
            raise PackageStoreError(message) from exc

    def cache_status(self, digest: str, status: PackageStatus) -> None:
        """Sets the status column to what the reviewers' signatures say. The column is only a
        cache for listings when the policy requires approval; a rejection stays final."""
        with self._write() as conn:
            conn.execute(
                "UPDATE packages SET status = ? WHERE digest = ? AND status != 'rejected'", (status.value, digest)
            )

    def honour(self, approval: Decision, now: datetime, first_time: Callable[[], object]) -> None:
        """Notes that a task runs on ``approval``; calls ``first_time`` (which audits it) the first
        time only, inside the same transaction, so the note is kept only if ``first_time`` returns."""
        signature = base64.b64encode(approval.signature).decode("ascii")
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO honoured (signature, digest, honoured_at) VALUES (?, ?, ?)",
                (signature, approval.digest, format_time(now)),
            )
            if cursor.rowcount == 1:
                first_time()

    # -- internals --------------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, digest: str) -> StoredPackage | None:
        row = conn.execute(f"{_SELECT} WHERE digest = ?", (digest,)).fetchone()
        return None if row is None else self._to_package(conn, row)

    def _to_package(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> StoredPackage:
        digest, _version, size, status, uploaded_at, signers, manifest_bytes = row
        decision_row = conn.execute(
            "SELECT decision FROM decisions WHERE digest = ? ORDER BY id DESC LIMIT 1", (digest,)
        ).fetchone()
        try:
            manifest = parse_manifest(parse_strict_json(bytes(manifest_bytes)))
            return StoredPackage(
                digest=digest,
                size=int(size),
                status=PackageStatus(status),
                uploaded_at=datetime.fromisoformat(uploaded_at),
                signer_key_ids=tuple(json.loads(signers)),
                manifest=manifest,
                manifest_bytes=bytes(manifest_bytes),
                decision=None if decision_row is None else Decision.from_json(json.loads(decision_row[0])),
            )
        except (ValueError, TypeError, PackageRejected, DecisionError) as exc:
            raise PackageStoreError(f"the package index {self._index} holds a damaged entry {digest}: {exc}") from exc

    def _sweep(self) -> None:
        """Removes abandoned staging files and blobs that no index row names."""
        for entry in self._staging.iterdir():
            with contextlib.suppress(OSError), entry.open("rb") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an upload in progress in some process
                entry.unlink(missing_ok=True)
        with self._write() as conn:
            known = {parse_digest(d) for (d,) in conn.execute("SELECT digest FROM packages")}
            for blob in self._blobs.iterdir():
                if blob.name not in known:
                    blob.unlink(missing_ok=True)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot (deferred transaction); the schema exists since __init__."""
        with self._errors("read"), read_only(self._index, self._busy_timeout) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise PackageStoreError(f"cannot {action} the package index {self._index}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with (
            self._errors("update"),
            write_transaction(self._index, self._busy_timeout, "PRAGMA foreign_keys=ON") as conn,
        ):
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > _SCHEMA_VERSION:
                raise PackageStoreError(
                    f"the package index {self._index} has schema version {version}, newer than this agent"
                )
            if version < _SCHEMA_VERSION:
                for statement in _CREATE:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            yield conn
