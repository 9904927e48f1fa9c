"""PostgreSQL store: flows shared by processes on several hosts through one database.

Two tables, created when missing: `flowengine_flows` with one row per flow
and its data as JSONB, and `flowengine_audit_events` with one row per audit
event and its details as JSONB. Each `commit` is one transaction holding the
compare-and-set `UPDATE ... WHERE id = ... AND version = ...` of the flow and
the insert of its event, so a failed check writes nothing. Each `delete` is
one transaction that locks the flow's row, then removes its events and the
row.

JSONB keeps numbers as `numeric`, so a float that JSON writes with an
exponent and no fraction, such as 1e+300, loads back as an int, and it
rejects the character U+0000 in strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from flowengine.adapters.rows import (
    EVENT_COLUMNS,
    FLOW_COLUMNS,
    event_from_row,
    event_row,
    flow_row,
    record_from_row,
)
from flowengine.errors import (
    ConfigError,
    ConflictError,
    FlowNotFoundError,
    StoreUnavailableError,
)
from flowengine.records import AuditEvent, FlowRecord

logger = logging.getLogger(__name__)

FLOWS_TABLE = "flowengine_flows"
EVENTS_TABLE = "flowengine_audit_events"

# Key of the transaction-level advisory lock held while creating the tables,
# so processes that start at once do not race on CREATE ... IF NOT EXISTS,
# which can fail with a unique violation in the system catalogs.
_SCHEMA_LOCK = 0x666C6F77656E67

_MAYBE_APPLIED = ". The write may have been applied, so reload the flow first"

# PostgreSQL cuts longer identifiers, so two long schema names could clash.
_MAX_IDENTIFIER_BYTES = 63

_FLOW_COLUMNS = sql.SQL(", ".join(FLOW_COLUMNS))
_EVENT_COLUMNS = sql.SQL(", ".join(EVENT_COLUMNS))

_CREATE_FLOWS = """
CREATE TABLE IF NOT EXISTS {flows} (
    id text PRIMARY KEY,
    definition text NOT NULL,
    state text NOT NULL,
    version bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    data jsonb NOT NULL
)
"""

_CREATE_EVENTS = """
CREATE TABLE IF NOT EXISTS {events} (
    flow_id text NOT NULL REFERENCES {flows} (id),
    sequence bigint NOT NULL,
    time text NOT NULL,
    trigger text NOT NULL,
    source text,
    destination text NOT NULL,
    outcome text NOT NULL,
    details jsonb NOT NULL,
    PRIMARY KEY (flow_id, sequence)
)
"""

_CREATE_INDEX = (
    "CREATE INDEX IF NOT EXISTS flowengine_flows_updated_at ON {flows} (updated_at)"
)


class PostgresStore:
    """Keep flows and audit events in PostgreSQL, shared by every process using it.

    Args:
        url: a `postgresql://` URL or a libpq connection string, such as
            postgresql://user:password@host:5432/dbname.
        schema: the schema of the tables, created if missing; None uses the
            first schema of the connection's search_path.
        max_connections: the maximum number of connections the store keeps
            open. Further threads wait for a free one, up to `timeout`.
        timeout: seconds to wait for a new connection or a free pooled one.

    Raises:
        ConfigError: the URL cannot be parsed, the schema name is invalid or
            max_connections is less than 1.
        StoreUnavailableError: the server cannot be reached, rejects the login, or
            (later, on any call) the connection is lost or none is free in
            time. A `commit` whose connection was lost may have been applied,
            so reload the flow before deciding again.

    Connections come from a pool, so create the store after forking worker
    processes, not before.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_connections: int = 10,
        timeout: float = 10.0,
    ) -> None:
        if max_connections < 1:
            raise ConfigError(
                f"max_connections is {max_connections}; the store needs at least 1"
            )
        settings = _parse_url(url)
        self.schema = _check_schema(schema)
        self.timeout = timeout
        self._location = _location(settings)
        self._password = settings.get("password") or None
        self._flows = _table(schema, FLOWS_TABLE)
        self._events = _table(schema, EVENTS_TABLE)
        connect_options: dict[str, Any] = {"autocommit": False}
        if "connect_timeout" not in settings:
            # libpq reads whole seconds, with a minimum of 2.
            connect_options["connect_timeout"] = max(2, round(timeout))

        self._create_tables(url, connect_options)
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs=connect_options,
            timeout=timeout,
            name="flowengine",
            open=False,
        )
        with self._reachable():
            self._pool.open(wait=True, timeout=timeout)
        logger.info(
            "PostgreSQL store at %s, schema %s",
            self._location,
            schema or "from search_path",
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self._location!r}, schema={self.schema!r})"

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        row = flow_row(record)
        event_values = event_row(event)
        with self._transaction(writing=True) as conn:
            inserted = conn.execute(
                sql.SQL(
                    "INSERT INTO {flows} ({columns}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb) "
                    "ON CONFLICT (id) DO NOTHING"
                ).format(flows=self._flows, columns=_FLOW_COLUMNS),
                row,
            )
            if inserted.rowcount != 1:
                raise ConflictError(record.id, -1)
            self._insert_event(conn, event_values)

    def load(self, flow_id: str) -> FlowRecord:
        with self._transaction() as conn:
            row = conn.execute(
                sql.SQL("SELECT {columns} FROM {flows} WHERE id = %s").format(
                    columns=_FLOW_COLUMNS, flows=self._flows
                ),
                (flow_id,),
            ).fetchone()
        if row is None:
            raise FlowNotFoundError(flow_id)
        return record_from_row(row)

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        data = json.dumps(dict(record.data))
        event_values = event_row(event)
        with self._transaction(writing=True) as conn:
            updated = conn.execute(
                sql.SQL(
                    "UPDATE {flows} SET state = %s, version = %s, updated_at = %s, "
                    "data = %s::jsonb WHERE id = %s AND version = %s"
                ).format(flows=self._flows),
                (
                    record.state,
                    record.version,
                    record.updated_at,
                    data,
                    record.id,
                    record.version - 1,
                ),
            )
            if updated.rowcount != 1:
                self._raise_missing_or_conflict(conn, record)
            self._insert_event(conn, event_values)

    def events(self, flow_id: str) -> list[AuditEvent]:
        with self._transaction() as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT {columns} FROM {events} WHERE flow_id = %s "
                    "ORDER BY sequence"
                ).format(columns=_EVENT_COLUMNS, events=self._events),
                (flow_id,),
            ).fetchall()
        if not rows:
            self.load(flow_id)
        return [event_from_row(row) for row in rows]

    def flows(self) -> list[FlowRecord]:
        """Return every flow, the least recently updated first."""
        with self._transaction() as conn:
            rows = conn.execute(
                sql.SQL("SELECT {columns} FROM {flows} ORDER BY updated_at, id").format(
                    columns=_FLOW_COLUMNS, flows=self._flows
                )
            ).fetchall()
        return [record_from_row(row) for row in rows]

    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None:
        """Remove the flow and its audit events in one transaction.

        Raises:
            FlowNotFoundError: no such flow.
            ConflictError: `expected_version` is given and differs from the
                stored version; nothing is removed.
        """
        with self._transaction(writing=True) as conn:
            # FOR UPDATE makes a concurrent commit wait, so it cannot add an
            # event between the version check and the deletes.
            row = conn.execute(
                sql.SQL("SELECT version FROM {flows} WHERE id = %s FOR UPDATE").format(
                    flows=self._flows
                ),
                (flow_id,),
            ).fetchone()
            if row is None:
                raise FlowNotFoundError(flow_id)
            if expected_version is not None and int(row[0]) != expected_version:
                raise ConflictError(flow_id, expected_version)
            conn.execute(
                sql.SQL("DELETE FROM {events} WHERE flow_id = %s").format(
                    events=self._events
                ),
                (flow_id,),
            )
            conn.execute(
                sql.SQL("DELETE FROM {flows} WHERE id = %s").format(flows=self._flows),
                (flow_id,),
            )

    def close(self) -> None:
        """Close every connection of the store."""
        self._pool.close()

    # --- connections -----------------------------------------------------

    def _create_tables(self, url: str, connect_options: dict[str, Any]) -> None:
        with self._reachable():
            conn = psycopg.connect(url, **connect_options)
        try:
            with conn.transaction():
                if self._tables_exist(conn):
                    return
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                # Another process may have created them while this one waited.
                if not self._tables_exist(conn):
                    self._run_schema_statements(conn)
        finally:
            conn.close()

    def _tables_exist(self, conn: psycopg.Connection[Any]) -> bool:
        # Checked first because CREATE ... IF NOT EXISTS needs the CREATE
        # privilege even when the object exists (PostgreSQL 15), and a role
        # allowed only to read and write rows must still open the store.
        row = conn.execute(
            sql.SQL("SELECT to_regclass(%s), to_regclass(%s)"),
            (
                self._flows.as_string(conn),
                self._events.as_string(conn),
            ),
        ).fetchone()
        return row is not None and None not in row

    def _run_schema_statements(self, conn: psycopg.Connection[Any]) -> None:
        if self.schema is not None:
            conn.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)
                )
            )
        names = {"flows": self._flows, "events": self._events}
        for statement in (_CREATE_FLOWS, _CREATE_EVENTS, _CREATE_INDEX):
            conn.execute(sql.SQL(statement).format(**names))
        logger.info("created the flowengine tables in %s", self._location)

    @contextmanager
    def _transaction(
        self, *, writing: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """Lend a pooled connection inside one transaction, committed on exit."""
        with (
            self._reachable(writing=writing),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            yield conn

    @contextmanager
    def _reachable(self, *, writing: bool = False) -> Iterator[None]:
        """Turn connection failures into StoreUnavailableError naming the server."""
        maybe_applied = _MAYBE_APPLIED if writing else ""
        try:
            yield
        except PoolTimeout as exc:
            raise StoreUnavailableError(
                f"no connection to PostgreSQL at {self._location} within "
                f"{self.timeout} s: the server cannot be reached or all pooled "
                "connections are busy; check the server or raise max_connections"
            ) from exc
        except psycopg.errors.TransactionRollback:
            raise
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot use PostgreSQL at {self._location}: {self._reason(exc)}; "
                "check that the server is running and that the store URL names "
                f"the right host, port, database and credentials{maybe_applied}"
            ) from exc

    def _reason(self, error: Exception) -> str:
        lines = str(error).strip().splitlines()
        reason = lines[0].rstrip(".") if lines else type(error).__name__
        if self._password:
            reason = reason.replace(self._password, "[secure]")
        return reason

    # --- rows ------------------------------------------------------------

    def _insert_event(
        self, conn: psycopg.Connection[Any], row: tuple[object, ...]
    ) -> None:
        conn.execute(
            sql.SQL(
                "INSERT INTO {events} ({columns}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
            ).format(events=self._events, columns=_EVENT_COLUMNS),
            row,
        )

    def _raise_missing_or_conflict(
        self, conn: psycopg.Connection[Any], record: FlowRecord
    ) -> None:
        exists = conn.execute(
            sql.SQL("SELECT 1 FROM {flows} WHERE id = %s").format(flows=self._flows),
            (record.id,),
        ).fetchone()
        if exists is None:
            raise FlowNotFoundError(record.id)
        raise ConflictError(record.id, record.version - 1)


def _parse_url(url: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        # The parser's message may quote the URL, password included.
        raise ConfigError(
            "the PostgreSQL store URL is invalid; write it as "
            "postgresql://user:password@host:5432/dbname"
        ) from exc


def _location(settings: dict[str, Any]) -> str:
    """Describe the server and database, without the password."""
    host = settings.get("host") or settings.get("hostaddr") or "localhost"
    port = settings.get("port") or "5432"
    database = settings.get("dbname") or "(the user's default)"
    user = settings.get("user") or "(the default user)"
    return f"{host}:{port}, database {database}, user {user}"


def _check_schema(schema: str | None) -> str | None:
    if schema is None:
        return None
    if not schema or len(schema.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"PostgreSQL schema name {schema!r} must be 1 to "
            f"{_MAX_IDENTIFIER_BYTES} bytes long; choose a shorter name"
        )
    if "\x00" in schema:
        raise ConfigError(
            f"PostgreSQL schema name {schema!r} contains a NUL character; remove it"
        )
    return schema


def _table(schema: str | None, name: str) -> sql.Identifier:
    if schema is None:
        return sql.Identifier(name)
    return sql.Identifier(schema, name)
