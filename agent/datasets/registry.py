"""Datasets registered at run time with ``edge-agent dataset add|remove``.

The CLI writes and the daemon reads from different processes, so every
operation opens its own short-lived SQLite connection instead of keeping one
open: a long-lived reader would pin an old WAL snapshot and never see the CLI's
changes, and would keep the file locked against maintenance.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from agent.datasets.errors import (
    DatasetRegistryError,
    DatasetSpecError,
    DuplicateDatasetError,
    UnknownDatasetError,
)
from agent.datasets.spec import DatasetFormat, DatasetSource, DatasetSpec
from agent.durable_sqlite import read_only, write_transaction

# Bumped when the table layout changes, so that an older agent refuses a file
# written by a newer one instead of misreading it. Version 2 added
# privacy_unit: an agent of version 1 would serve such a dataset row by row,
# silently dropping the unit, so it must refuse the file instead.
_SCHEMA_VERSION = 2

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS datasets (
    id          TEXT PRIMARY KEY NOT NULL,
    path        TEXT NOT NULL,
    format      TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    columns     TEXT,
    added_at    TEXT NOT NULL,
    privacy_unit TEXT
)
"""

# Version 1 files lack the column; they are migrated by the next write, and read
# before that as if every entry had none (each row its own unit, as before).
_MIGRATE_TO_2 = "ALTER TABLE datasets ADD COLUMN privacy_unit TEXT"

_Row = tuple[str, str, str, str, str | None, str | None]


class DatasetRegistry:
    """Run-time dataset registrations stored in a SQLite file."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        # busy_timeout: how long an operation waits for another process's
        # write transaction before failing; CLI writes are tiny, so a few
        # seconds is generous.
        self._path = path
        self._busy_timeout = busy_timeout

    @property
    def path(self) -> Path:
        return self._path

    def add(self, spec: DatasetSpec) -> None:
        """Register ``spec``; raise DuplicateDatasetError if its id is taken."""
        columns = None if spec.columns is None else json.dumps(builtins.list(spec.columns))
        with self._errors("add a dataset to"), self._write() as conn:
            exists = conn.execute("SELECT 1 FROM datasets WHERE id = ?", (spec.id,)).fetchone()
            if exists is not None:
                raise DuplicateDatasetError(
                    spec.id, f"dataset {spec.id!r} is already registered in {self._path}"
                )
            conn.execute(
                "INSERT INTO datasets (id, path, format, description, columns, added_at, privacy_unit)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.id,
                    str(spec.path),
                    spec.format.value,
                    spec.description,
                    columns,
                    datetime.now(UTC).isoformat(),
                    spec.privacy_unit,
                ),
            )

    def remove(self, dataset_id: str) -> None:
        """Unregister a dataset; raise UnknownDatasetError if it is not registered."""
        if not self._path.exists():
            raise self._unknown(dataset_id)
        with self._errors("remove a dataset from"), self._write() as conn:
            cursor = conn.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
            if cursor.rowcount == 0:
                raise self._unknown(dataset_id)

    def list(self, on_invalid: Callable[[DatasetRegistryError], None] | None = None) -> builtins.list[DatasetSpec]:
        """All registered datasets, sorted by id.

        A damaged entry raises DatasetRegistryError, unless ``on_invalid`` is
        given: then it is reported there and skipped (the daemon keeps serving
        the other datasets).
        """
        with self._errors("read"), self._read() as conn:
            if conn is None:
                return []
            rows: builtins.list[_Row] = conn.execute(f"{_select(conn)} ORDER BY id").fetchall()
        specs = []
        for row in rows:
            try:
                specs.append(self._to_spec(row))
            except DatasetRegistryError as exc:
                if on_invalid is None:
                    raise
                on_invalid(exc)
        return specs

    def get(self, dataset_id: str) -> DatasetSpec | None:
        """The registered dataset with this id, or None."""
        with self._errors("read"), self._read() as conn:
            if conn is None:
                return None
            row: _Row | None = conn.execute(f"{_select(conn)} WHERE id = ?", (dataset_id,)).fetchone()
        return None if row is None else self._to_spec(row)

    # ------------------------------------------------------------------ internals

    def _unknown(self, dataset_id: str) -> UnknownDatasetError:
        return UnknownDatasetError(
            dataset_id, f"dataset {dataset_id!r} is not registered in {self._path}"
        )

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        # sqlite3's messages ("file is not a database") do not say which file;
        # the operator needs the path to fix or move it.
        try:
            yield
        except sqlite3.Error as exc:
            raise DatasetRegistryError(
                f"cannot {action} the dataset registry {self._path}: {exc}"
            ) from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection | None]:
        """A read-only connection, or None when there is nothing to read.

        mode=ro guarantees that merely listing never creates the file (the
        daemon may start before anyone registered anything).
        """
        if not self._path.exists():
            yield None
            return
        with read_only(self._path, self._busy_timeout) as conn:
            if not self._has_table(conn):
                yield None
                return
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection inside an IMMEDIATE transaction, committed on success."""
        parent = self._path.parent
        if not parent.is_dir():
            # Creating the state directory is the installer's job (ownership
            # and mode matter); creating it here would hide a misconfiguration.
            raise DatasetRegistryError(
                f"cannot create the dataset registry {self._path}: "
                f"directory {parent} does not exist"
            )
        # WAL lets the daemon keep reading while the CLI writes; FULL makes
        # a registration durable once the CLI has reported success.
        with write_transaction(self._path, self._busy_timeout) as conn:
            if not self._has_table(conn):
                conn.execute(_CREATE_TABLE)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif not _has_privacy_unit(conn):
                # In the same transaction as the write: a crash leaves the file
                # either wholly version 1 or wholly version 2.
                conn.execute(_MIGRATE_TO_2)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            yield conn

    def _has_table(self, conn: sqlite3.Connection) -> bool:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise DatasetRegistryError(
                f"the dataset registry {self._path} has schema version {version}, "
                f"newer than this agent supports ({_SCHEMA_VERSION}); upgrade the agent"
            )
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'datasets'"
        ).fetchone()
        return found is not None

    def _to_spec(self, row: _Row) -> DatasetSpec:
        dataset_id, path, fmt, description, columns_json, privacy_unit = row
        try:
            columns = None if columns_json is None else _parse_columns(columns_json)
            return DatasetSpec(
                id=dataset_id,
                path=Path(path),
                format=DatasetFormat(fmt),
                description=description,
                columns=columns,
                source=DatasetSource.REGISTRY,
                privacy_unit=privacy_unit,
            )
        except (ValueError, TypeError, DatasetSpecError) as exc:
            # Only a hand-edited or damaged file gets here: add() validated
            # every row it wrote.
            raise DatasetRegistryError(
                f"the dataset registry {self._path} holds an invalid entry {dataset_id!r}: {exc}"
            ) from exc


def _has_privacy_unit(conn: sqlite3.Connection) -> bool:
    return any(row[1] == "privacy_unit" for row in conn.execute("PRAGMA table_info(datasets)"))


_SELECT = "SELECT id, path, format, description, columns, privacy_unit FROM datasets"
# A read-only connection cannot migrate a version 1 file; it reads NULL instead.
_SELECT_V1 = "SELECT id, path, format, description, columns, NULL FROM datasets"


def _select(conn: sqlite3.Connection) -> str:
    return _SELECT if _has_privacy_unit(conn) else _SELECT_V1


def _parse_columns(text: str) -> tuple[str, ...]:
    value = json.loads(text)
    if not isinstance(value, builtins.list):
        raise DatasetSpecError(f"columns must be a JSON list, got {text!r}")
    return tuple(value)
