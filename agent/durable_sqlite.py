"""SQLite the way every durable store of the agent uses it (dataset registry, package index, privacy ledger).

Each operation opens its own short-lived connection: another process (the CLI
beside the daemon) may write, and a long-lived connection would pin an old
WAL snapshot.
"""

from __future__ import annotations

import sqlite3
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
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for pragma in pragmas:
            conn.execute(pragma)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
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
