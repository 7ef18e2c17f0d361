"""SQLite the way every durable store of the agent uses it (dataset registry, package index, privacy ledger).

Another process (the CLI beside the daemon) may read and write the same file,
so no connection is ever left inside a transaction: that would pin an old WAL
snapshot. The dataset registry and package index open a short-lived connection
per operation (write_transaction, read_only); the privacy ledger, on every
task's critical path, reuses connections (ReusedConnections).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path


@contextmanager
def write_transaction(path: Path, busy_timeout: float, *pragmas: str) -> Iterator[sqlite3.Connection]:
    """A connection inside BEGIN IMMEDIATE (one writer at a time across threads and processes),
    committed on success and durable when this returns, rolled back otherwise.

    WAL lets readers go on while one process writes; synchronous=FULL puts the
    COMMIT on disk before it returns. ``pragmas`` are run before the transaction.
    """
    with closing(sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)) as conn:
        _durable_wal(conn)
        for pragma in pragmas:
            conn.execute(pragma)
        with _immediate(conn):
            yield conn


def _durable_wal(conn: sqlite3.Connection) -> None:
    # Switching a file to WAL takes an exclusive lock without waiting on the busy timeout
    # (concurrent openers would see "database is locked"); a file in WAL mode stays so.
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE, then COMMIT on success or ROLLBACK on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may already have rolled back on its own (e.g. disk full);
        # a second ROLLBACK would mask the original error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_only(path: Path, busy_timeout: float) -> Iterator[sqlite3.Connection]:
    """A read-only connection; mode=ro never creates the file."""
    uri = path.absolute().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)) as conn:
        yield conn


class ReusedConnections:
    """Long-lived connections to one database file, for a store that many threads use.

    Opening a connection per operation costs more than the operation: the two
    PRAGMAs, and above all the checkpoint SQLite runs when the last connection to
    a WAL file closes (copying the WAL into the file with another fsync). Here
    an idle connection is taken for each operation and given back afterwards, so
    each one serves one thread at a time (hence check_same_thread=False) and the
    pool grows only as far as operations overlap.

    No connection is given back inside a transaction, so none pins an old WAL
    snapshot: other processes' writes are seen by the next operation. Callers must
    not keep a cursor beyond the ``with`` block (an unfinished SELECT holds a read
    snapshot while its cursor lives). While connections are open the file's latest
    transactions may be in its WAL (``-wal``) only: copy it with SQLite's backup, and
    replace it only with its users stopped. After close() every operation opens and
    closes its own connection, as write_transaction does.
    """

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._switching = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        # A forked child must not use its parent's connections (SQLite forbids it).
        self._pid = os.getpid()
        self._inherited: list[sqlite3.Connection] = []
        self._closed = False

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Like write_transaction(): inside BEGIN IMMEDIATE, committed (durably) on success."""
        conn = self._take(create=True)
        if conn is None:  # pragma: no cover - _take(create=True) always returns one
            raise sqlite3.OperationalError(f"cannot open {self._path}")
        reusable = False
        try:
            with _immediate(conn):
                yield conn
            reusable = True
        finally:
            self._give_back(conn, reusable)

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """An idle pooled connection, else a read-only one of its own (mode=ro never creates the file).

        The caller checks that the file exists: only a writer may create it.
        """
        conn = self._take(create=False)
        if conn is None:
            with read_only(self._path, self._busy_timeout) as fresh:
                yield fresh
            return
        reusable = False
        try:
            yield conn
            reusable = True
        finally:
            self._give_back(conn, reusable)

    def close(self) -> None:
        """Closes the idle connections; those in use are closed when given back. Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, *, create: bool) -> sqlite3.Connection | None:
        with self._lock:
            if self._pid != os.getpid():
                # Inherited across fork: never used, and kept referenced so that the garbage
                # collector never closes them here either (SQLite forbids using a connection
                # across fork(), closing included).
                self._inherited.extend(self._idle)
                self._idle = []
                self._pid = os.getpid()
            conn = self._idle.pop() if self._idle else None
        if conn is None and create:
            conn = self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            # One at a time: threads opening their first connections to a new file at once
            # would each try to switch it to WAL (see _durable_wal).
            with self._switching:
                _durable_wal(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _give_back(self, conn: sqlite3.Connection, reusable: bool) -> None:
        # A connection that saw an error, or is somehow still inside a transaction, is not reused.
        if reusable and not conn.in_transaction:
            with self._lock:
                if not self._closed and self._pid == os.getpid():
                    self._idle.append(conn)
                    return
        conn.close()
