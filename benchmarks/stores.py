"""Persisted transitions per second on SQLite, Redis and PostgreSQL.

For each store two pairs are timed, one operation after the other on one
connection:

- `Engine.fire` of the two-state benchmark definition, which loads the
  record, runs the machine, compare-and-sets the record and appends the
  audit event. Its floor is the same read and write issued directly with
  the driver. For SQLite and PostgreSQL that is a SELECT, then the UPDATE
  with the version check and the INSERT of the event in one transaction.
  For Redis it is an HGET, then the store's own commit script.
- `store.commit` alone against the floor's write alone.

The flow's data is the size of a grant's data in token_held. The Redis and
PostgreSQL rows use the servers given on the command line, each under a key
prefix or schema of its own that is deleted afterwards. A store module or
server that is missing makes its rows "not measured".
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FLOOR,
    SUBJECT,
    Scale,
    add_ratios,
    not_measured,
    row,
    section,
)
from benchmarks.common import target as make_target
from benchmarks.transition import KEY, REGISTRY, load_door
from flowengine.adapters.clock import SystemClock
from flowengine.engine import Engine, Store
from flowengine.errors import FlowEngineError
from flowengine.records import AuditEvent, FlowRecord

TARGET_SHARE = 0.5
WARM_UP_OPS = 20

# The data of a flow in token_held, with values of realistic length.
TOKEN_DATA: dict[str, Any] = {
    "access_token": secrets.token_urlsafe(32),
    "token_type": "Bearer",
    "expires_at": 1_900_000_000.0,
    "refresh_token": secrets.token_urlsafe(32),
    "scope": "foo bar",
    "turns": 0,
}
EVENT_TIME = "2026-01-01T00:00:00.000000Z"

# One operation. Its argument counts the calls, so that it can alternate
# between the two triggers.
Operation = Callable[[int], None]


class Unavailable(Exception):
    """A store cannot be measured: its module, driver or server is missing."""


# Exceptions that a shared store raises when its server cannot be reached.
_UNREACHABLE: tuple[type[Exception], ...] = (ConnectionError, FlowEngineError)


# --- the benchmark side: Engine.fire and store.commit ------------------------


def _engine_operations(store: Store) -> tuple[Operation, Operation]:
    """Return (fire one trigger, commit one record) on a new flow each."""
    engine = Engine(load_door(), REGISTRY, store, SystemClock())
    fire_id = engine.create(data=TOKEN_DATA).id
    triggers = ("unlock", "lock")

    def fire(counter: int) -> None:
        engine.fire(fire_id, triggers[counter % 2], key=KEY)

    commit_record = [engine.create(data=TOKEN_DATA)]

    def commit(_counter: int) -> None:
        old = commit_record[0]
        data = dict(old.data)
        data["turns"] = old.version + 1
        new = FlowRecord(
            id=old.id,
            definition=old.definition,
            state="unlocked" if old.state == "locked" else "locked",
            version=old.version + 1,
            created_at=old.created_at,
            updated_at=time.time(),
            data=data,
        )
        event = AuditEvent(
            flow_id=new.id,
            sequence=new.version,
            time=EVENT_TIME,
            trigger="unlock" if new.state == "unlocked" else "lock",
            source=old.state,
            destination=new.state,
            outcome="ok",
            details={"turns": data["turns"]},
        )
        store.commit(new, event)
        commit_record[0] = new

    return fire, commit


def _event_json(flow_id: str, version: int, source: str, dest: str) -> str:
    return json.dumps(
        {
            "flow_id": flow_id,
            "sequence": version,
            "time": EVENT_TIME,
            "trigger": "unlock" if dest == "unlocked" else "lock",
            "source": source,
            "destination": dest,
            "outcome": "ok",
            "details": {"turns": version},
        }
    )


# --- SQLite ------------------------------------------------------------------


@contextmanager
def _sqlite(folder: Path) -> Iterator[tuple[Store, Any]]:
    from flowengine.adapters.sqlite import SQLiteStore

    store = SQLiteStore(folder / "store.sqlite3")
    floor = _SQLiteFloor(folder / "floor.sqlite3")
    try:
        yield store, floor
    finally:
        store.close()
        floor.close()


class _SQLiteFloor:
    """The SQLite store's reads and writes, written directly with sqlite3."""

    def __init__(self, path: Path) -> None:
        from flowengine.adapters.sqlite import SQLiteStore

        SQLiteStore(path).close()  # the same schema
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute(
            "INSERT INTO flows VALUES (?, 'door', 'locked', 0, ?, ?, ?)",
            ("read-write", time.time(), time.time(), json.dumps(TOKEN_DATA)),
        )
        self.conn.execute(
            "INSERT INTO flows VALUES (?, 'door', 'locked', 0, ?, ?, ?)",
            ("write", time.time(), time.time(), json.dumps(TOKEN_DATA)),
        )
        self.write_version = 0

    def read_write(self, _counter: int) -> None:
        state, version, data = self.conn.execute(
            "SELECT state, version, data FROM flows WHERE id = ?", ("read-write",)
        ).fetchone()
        self._write("read-write", state, version, json.loads(data))

    def write_only(self, _counter: int) -> None:
        state = "locked" if self.write_version % 2 == 0 else "unlocked"
        self._write("write", state, self.write_version, dict(TOKEN_DATA))
        self.write_version += 1

    def _write(self, flow_id: str, state: str, version: int, data: Any) -> None:
        dest = "unlocked" if state == "locked" else "locked"
        data["turns"] = version + 1
        self.conn.execute("BEGIN IMMEDIATE")
        cursor = self.conn.execute(
            "UPDATE flows SET state = ?, version = ?, updated_at = ?, data = ? "
            "WHERE id = ? AND version = ?",
            (dest, version + 1, time.time(), json.dumps(data), flow_id, version),
        )
        if cursor.rowcount != 1:
            self.conn.execute("ROLLBACK")
            raise RuntimeError("floor lost its own compare-and-set")
        self.conn.execute(
            "INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                flow_id,
                version + 1,
                EVENT_TIME,
                "unlock",
                state,
                dest,
                "ok",
                json.dumps({"turns": version + 1}),
            ),
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


# --- Redis -------------------------------------------------------------------


@contextmanager
def _redis(url: str) -> Iterator[tuple[Store, Any]]:
    try:
        import redis

        from flowengine.adapters import redis_store
    except ImportError as exc:
        raise Unavailable(f"store or driver not available ({exc})") from exc
    prefix = f"flowengine-bench-{secrets.token_hex(4)}:"
    unreachable: tuple[type[Exception], ...] = (
        *_UNREACHABLE,
        redis.exceptions.RedisError,
    )
    try:
        store = redis_store.RedisStore(url, prefix=prefix)
    except unreachable as exc:
        raise Unavailable(f"server not available ({type(exc).__name__})") from exc
    client = redis.Redis.from_url(url, decode_responses=True)
    floor = _RedisFloor(client, prefix + "floor:", redis_store)
    try:
        yield store, floor
    finally:
        store.close()
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()


class _RedisFloor:
    """The Redis store's read and commit script, called directly with redis-py."""

    def __init__(self, client: Any, prefix: str, module: Any) -> None:
        self.client = client
        self.prefix = prefix
        self.script = client.register_script(module._COMMIT_SCRIPT)
        self.versions = {"read-write": 0, "write": 0}
        for flow_id in self.versions:
            self._put(flow_id, 0, "locked", dict(TOKEN_DATA))

    def _keys(self, flow_id: str) -> list[str]:
        return [
            f"{self.prefix}flow:{flow_id}",
            f"{self.prefix}events:{flow_id}",
            f"{self.prefix}flows",
        ]

    def _record_json(self, flow_id: str, version: int, state: str, data: Any) -> str:
        now = time.time()
        return json.dumps(
            {
                "id": flow_id,
                "definition": "door",
                "state": state,
                "version": version,
                "created_at": now,
                "updated_at": now,
                "data": data,
            }
        )

    def _put(self, flow_id: str, version: int, state: str, data: Any) -> None:
        self.client.hset(
            self._keys(flow_id)[0],
            mapping={
                "version": str(version),
                "record": self._record_json(flow_id, version, state, data),
            },
        )

    def read_write(self, _counter: int) -> None:
        raw = self.client.hget(self._keys("read-write")[0], "record")
        record = json.loads(raw)
        self._commit("read-write", record["version"], record["state"], record["data"])

    def write_only(self, _counter: int) -> None:
        version = self.versions["write"]
        state = "locked" if version % 2 == 0 else "unlocked"
        self._commit("write", version, state, dict(TOKEN_DATA))
        self.versions["write"] = version + 1

    def _commit(self, flow_id: str, version: int, state: str, data: Any) -> None:
        dest = "unlocked" if state == "locked" else "locked"
        data["turns"] = version + 1
        outcome = self.script(
            keys=self._keys(flow_id),
            args=[
                str(version),
                str(version + 1),
                self._record_json(flow_id, version + 1, dest, data),
                _event_json(flow_id, version + 1, state, dest),
                repr(time.time()),
                flow_id,
            ],
        )
        if int(outcome) != 1:
            raise RuntimeError("floor lost its own compare-and-set")


# --- PostgreSQL --------------------------------------------------------------


@contextmanager
def _postgres(url: str) -> Iterator[tuple[Store, Any]]:
    try:
        import psycopg

        from flowengine.adapters import postgres
    except ImportError as exc:
        raise Unavailable(f"store or driver not available ({exc})") from exc
    schema = f"flowengine_bench_{secrets.token_hex(4)}"
    try:
        store = postgres.PostgresStore(url, schema=schema)
    except _UNREACHABLE as exc:
        raise Unavailable(f"server not available ({type(exc).__name__})") from exc
    conn = psycopg.connect(url, autocommit=True)
    try:
        yield store, _PostgresFloor(conn, schema)
    finally:
        store.close()
        conn.execute(
            psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                psycopg.sql.Identifier(schema)
            )
        )
        conn.close()


class _PostgresFloor:
    """The PostgreSQL store's read and write, written directly with psycopg.

    The read runs outside a transaction (autocommit); the write is one
    transaction.
    """

    def __init__(self, conn: Any, schema: str) -> None:
        self.conn = conn
        self.flows = f'"{schema}".flowengine_flows'
        self.events = f'"{schema}".flowengine_audit_events'
        for flow_id in ("floor-read-write", "floor-write"):
            conn.execute(
                f"INSERT INTO {self.flows} VALUES "  # noqa: S608 (names made here)
                "(%s, 'door', 'locked', 0, %s, %s, %s::jsonb)",
                (flow_id, time.time(), time.time(), json.dumps(TOKEN_DATA)),
            )
        self.write_version = 0

    def read_write(self, _counter: int) -> None:
        state, version, data = self.conn.execute(
            f"SELECT state, version, data FROM {self.flows} "  # noqa: S608
            "WHERE id = %s",
            ("floor-read-write",),
        ).fetchone()
        self._write("floor-read-write", state, version, data)

    def write_only(self, _counter: int) -> None:
        state = "locked" if self.write_version % 2 == 0 else "unlocked"
        self._write("floor-write", state, self.write_version, dict(TOKEN_DATA))
        self.write_version += 1

    def _write(self, flow_id: str, state: str, version: int, data: Any) -> None:
        dest = "unlocked" if state == "locked" else "locked"
        data["turns"] = version + 1
        with self.conn.transaction():
            updated = self.conn.execute(
                f"UPDATE {self.flows} SET state = %s, version = %s, "  # noqa: S608
                "updated_at = %s, data = %s::jsonb WHERE id = %s AND version = %s",
                (dest, version + 1, time.time(), json.dumps(data), flow_id, version),
            )
            if updated.rowcount != 1:
                raise RuntimeError("floor lost its own compare-and-set")
            self.conn.execute(
                f"INSERT INTO {self.events} VALUES "  # noqa: S608
                "(%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
                (
                    flow_id,
                    version + 1,
                    EVENT_TIME,
                    "unlock",
                    state,
                    dest,
                    "ok",
                    json.dumps({"turns": version + 1}),
                ),
            )


# --- measuring ----------------------------------------------------------------


def _rate(operation: Operation, ops: int, time_limit: float) -> float:
    """Return operations per second over up to `ops` operations."""
    for counter in range(WARM_UP_OPS):
        operation(counter)
    started = time.perf_counter()
    deadline = started + time_limit
    done = 0
    for counter in range(WARM_UP_OPS, WARM_UP_OPS + ops):
        operation(counter)
        done += 1
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - started)


def _measure_store(name: str, opened: Any, scale: Scale) -> list[dict[str, Any]]:
    """Time the four operations of one store, interleaving subject and floor."""
    with opened as (store, floor):
        fire, commit = _engine_operations(store)
        pairs = {
            "fire": (fire, floor.read_write),
            "commit": (commit, floor.write_only),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(scale.store_repeats):
            for kind, (subject, bottom) in pairs.items():
                for role, operation in ((SUBJECT, subject), (FLOOR, bottom)):
                    rate = _rate(operation, scale.store_ops, scale.run_time_limit)
                    rates.setdefault((kind, role), []).append(rate)
    labels = {
        ("fire", SUBJECT): f"{name}: Engine.fire (load, machine, commit)",
        ("fire", FLOOR): f"{name}: driver read + CAS write + event insert (floor)",
        ("commit", SUBJECT): f"{name}: store.commit alone",
        ("commit", FLOOR): f"{name}: driver CAS write + event insert (floor)",
    }
    return [
        row(labels[key], key[1], values, group=f"{name} {key[0]}")
        for key, values in rates.items()
    ]


def _unavailable_rows(name: str, reason: str) -> list[dict[str, Any]]:
    return [
        not_measured(f"{name}: Engine.fire (load, machine, commit)", SUBJECT, reason),
        not_measured(f"{name}: driver read + CAS write + event insert", FLOOR, reason),
    ]


def run(scale: Scale, redis_url: str, postgres_url: str) -> dict[str, Any]:
    """Measure each available store against its driver floor."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        backends: list[tuple[str, Callable[[], Any]]] = [
            ("SQLite", lambda: _sqlite(Path(folder))),
            ("Redis", lambda: _redis(redis_url)),
            ("PostgreSQL", lambda: _postgres(postgres_url)),
        ]
        for name, open_backend in backends:
            try:
                rows.extend(_measure_store(name, open_backend(), scale))
            except Unavailable as exc:
                rows.extend(_unavailable_rows(name, str(exc)))
    add_ratios(rows, group="group")
    return _section(scale, rows)


def _section(scale: Scale, rows: list[dict[str, Any]]) -> dict[str, Any]:
    fire_rows = [
        item
        for item in rows
        if item["role"] == SUBJECT and "Engine.fire" in item["label"]
    ]
    shares = {
        item["label"].split(":")[0]: item.get("ratio_to_floor") for item in fire_rows
    }
    measured = {name: share for name, share in shares.items() if share is not None}
    met = (
        all(share >= TARGET_SHARE for share in measured.values()) if measured else None
    )
    detail = ", ".join(
        f"{name} {share:.0%}" if share is not None else f"{name} not measured"
        for name, share in shares.items()
    )
    return section(
        "stores",
        "Stores",
        unit="transitions per second",
        higher_is_better=True,
        rows=rows,
        target=make_target(
            f"Engine.fire at least {TARGET_SHARE:.0%} of each driver floor",
            met,
            f"share of the floor: {detail}",
        ),
        setup={
            "operations_per_run": scale.store_ops,
            "runs": scale.store_repeats,
            "warm_up_operations": WARM_UP_OPS,
            "callers": "one, sequential",
            "data": "a token-holding grant's fields, about 200 bytes of JSON",
        },
        notes=[
            "The floor does the same work with no library in between: the same "
            "SQL or Redis script, JSON encoding of the same fields, and the "
            "same compare-and-set on the version.",
            "SQLite runs with WAL and synchronous=NORMAL, as SQLiteStore sets "
            "them, so a commit is not flushed to disk before it returns.",
        ],
    )
