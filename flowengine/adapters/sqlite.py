"""SQLite store: the default, a single file that survives restarts.

Each commit is one `BEGIN IMMEDIATE` transaction holding the compare-and-set
update of the flow and the insert of its audit event, so several threads or
processes on one host can share the file safely.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

from flowengine.adapters.rows import (
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    event_from_row,
    event_row,
    flow_row,
    record_from_row,
)
from flowengine.errors import ConflictError, FlowNotFoundError, StoreUnavailableError
from flowengine.records import AuditEvent, FlowRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flows (
    id TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    flow_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    time TEXT NOT NULL,
    trigger TEXT NOT NULL,
    source TEXT,
    destination TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (flow_id, sequence)
);
"""

_FLOW_COLUMNS = ", ".join(FLOW_COLUMNS)
_EVENT_COLUMNS = ", ".join(EVENT_COLUMNS)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _translate_errors(method: _Method) -> _Method:
    """Raise StoreUnavailableError for a locked, damaged or unreadable store.

    A locked database ("database is locked" after the busy timeout) and a
    damaged file or row are not the caller's fault, and their raw sqlite3
    or JSON errors would name neither the store nor the fix.
    """

    @functools.wraps(method)
    def call(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(
                f"SQLite store {self.path} cannot be used ({exc}); if another "
                "process has a long write lock, retry once it is released"
            ) from exc
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.DatabaseError, ValueError, KeyError) as exc:
            raise StoreUnavailableError(
                f"SQLite store {self.path} is damaged or is not a flowengine "
                f"store ({type(exc).__name__}: {str(exc)[:100]}); restore it "
                "from a backup or point the store setting at another file"
            ) from exc

    return cast(_Method, call)


def _create_private_file(path: Path) -> None:
    # The store contains tokens, state values and PKCE verifiers, so a new file
    # and folder are readable by their owner only. SQLite gives its -wal and
    # -shm files the database file's permissions.
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


class SQLiteStore:
    """Keep flows and audit events in one SQLite database file.

    Args:
        path: the database file, created with its parent folder if missing;
            ":memory:" keeps a private database per thread (for tests only).
        timeout: seconds a writer waits for another writer's lock.
    """

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        if self.path != ":memory:":
            self.path = str(Path(self.path).expanduser())
            _create_private_file(Path(self.path))
        self._local = threading.local()
        self._create_schema()

    @_translate_errors
    def _create_schema(self) -> None:
        # executescript() first commits any open transaction, so it cannot run
        # inside _transaction. Each CREATE ... IF NOT EXISTS is atomic alone.
        self._connection().executescript(_SCHEMA)

    @_translate_errors
    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        with self._transaction() as conn:
            try:
                conn.execute(
                    f"INSERT INTO flows ({_FLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    flow_row(record),
                )
            except sqlite3.IntegrityError as exc:
                raise ConflictError(record.id, -1) from exc
            _insert_event(conn, event)

    @_translate_errors
    def load(self, flow_id: str) -> FlowRecord:
        row = (
            self._connection()
            .execute(f"SELECT {_FLOW_COLUMNS} FROM flows WHERE id = ?", (flow_id,))
            .fetchone()
        )
        if row is None:
            raise FlowNotFoundError(flow_id)
        return record_from_row(row)

    @_translate_errors
    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE flows SET state = ?, version = ?, updated_at = ?, data = ? "
                "WHERE id = ? AND version = ?",
                (
                    record.state,
                    record.version,
                    record.updated_at,
                    json.dumps(dict(record.data)),
                    record.id,
                    record.version - 1,
                ),
            )
            if cursor.rowcount != 1:
                exists = conn.execute(
                    "SELECT 1 FROM flows WHERE id = ?", (record.id,)
                ).fetchone()
                if exists is None:
                    raise FlowNotFoundError(record.id)
                raise ConflictError(record.id, record.version - 1)
            _insert_event(conn, event)

    @_translate_errors
    def events(self, flow_id: str) -> list[AuditEvent]:
        conn = self._connection()
        rows = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM audit_events WHERE flow_id = ? "
            "ORDER BY sequence",
            (flow_id,),
        ).fetchall()
        if not rows:
            self.load(flow_id)
        return [event_from_row(row) for row in rows]

    @_translate_errors
    def flows(self) -> list[FlowRecord]:
        rows = (
            self._connection()
            .execute(f"SELECT {_FLOW_COLUMNS} FROM flows ORDER BY updated_at")
            .fetchall()
        )
        return [record_from_row(row) for row in rows]

    @_translate_errors
    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None:
        """Remove the flow and its audit events in one transaction.

        Raises:
            FlowNotFoundError: no such flow.
            ConflictError: `expected_version` is given and differs from the
                stored version; nothing is removed.
        """
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT version FROM flows WHERE id = ?", (flow_id,)
            ).fetchone()
            if row is None:
                raise FlowNotFoundError(flow_id)
            if expected_version is not None and row[0] != expected_version:
                raise ConflictError(flow_id, expected_version)
            conn.execute("DELETE FROM audit_events WHERE flow_id = ?", (flow_id,))
            conn.execute("DELETE FROM flows WHERE id = ?", (flow_id,))

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _insert_event(conn: sqlite3.Connection, event: AuditEvent) -> None:
    conn.execute(
        f"INSERT INTO audit_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        event_row(event),
    )
