"""Contract tests shared by every store, and the behaviour of each store.

The Redis and PostgreSQL tests use the servers at FLOWENGINE_TEST_REDIS_URL
and FLOWENGINE_TEST_POSTGRES_URL (by default on 127.0.0.1), each test under
its own key prefix or schema, which is deleted afterwards. They are skipped
when the server cannot be reached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import hostile
import pytest

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.adapters.stores import open_store, pop_query_parameter
from flowengine.engine import Store
from flowengine.errors import (
    ConfigError,
    ConflictError,
    FlowNotFoundError,
    StoreUnavailableError,
)
from flowengine.records import AuditEvent, FlowRecord

REDIS_URL = os.environ.get("FLOWENGINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FLOWENGINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

START = 1_700_000_000.0

JSON_DATA: dict[str, Any] = {
    "text": "plain",
    "unicode": 'Grüße, 東京, emoji 🔐, quote " and back\\slash',
    "ключ": "значение",
    "empty": "",
    "int": 42,
    "big": 2**62,
    "negative": -7,
    "float": 0.1,
    "true": True,
    "false": False,
    "none": None,
    "list": [1, "two", None, [3.5], {"deep": ["x"]}],
    "nested": {"a": {"b": {"c": []}}},
}


def make_record(
    flow_id: str = "f1",
    version: int = 0,
    state: str = "closed",
    data: dict[str, Any] | None = None,
) -> FlowRecord:
    return FlowRecord(
        id=flow_id,
        definition="door",
        state=state,
        version=version,
        created_at=START,
        updated_at=START + version,
        data=dict(data or {}),
    )


def make_event(
    flow_id: str = "f1",
    sequence: int = 0,
    destination: str = "closed",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent(
        flow_id=flow_id,
        sequence=sequence,
        time="2023-11-14T22:13:20.000000Z",
        trigger="create" if sequence == 0 else "open",
        source=None if sequence == 0 else "closed",
        destination=destination,
        outcome="ok",
        details=dict(details or {}),
    )


def create(store: Store, flow_id: str = "f1", **data: Any) -> FlowRecord:
    record = make_record(flow_id, data=data)
    store.create(record, make_event(flow_id))
    return record


def commit(store: Store, flow_id: str, version: int, **data: Any) -> FlowRecord:
    record = make_record(flow_id, version, "open", data)
    store.commit(record, make_event(flow_id, version, "open"))
    return record


# --- stores to test ----------------------------------------------------------


class ClosableStore(Store, Protocol):
    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Backend:
    """A kind of store and a location that any process can open it from."""

    kind: str
    location: str

    def open(self) -> ClosableStore:
        return cast(ClosableStore, open_store(self.location))


SHARED_KINDS = ["sqlite", "redis", "postgres"]


def with_query(url: str, name: str, value: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}{name}={value}"


@functools.cache
def server_problem(kind: str) -> str | None:
    """Return why the test server of `kind` cannot be used, or None."""
    try:
        if kind == "redis":
            import redis

            client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
            client.ping()
            client.close()
        else:
            import psycopg

            psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except ImportError as exc:
        return f"{exc.name} is not installed; pip install '.[test]'"
    except Exception as exc:  # any failure means the server is not usable
        variable = f"FLOWENGINE_TEST_{kind.upper()}_URL"
        return f"{kind} test server unusable ({type(exc).__name__}); set {variable}"
    return None


def require_server(kind: str) -> None:
    problem = server_problem(kind)
    if problem is not None:
        pytest.skip(problem)


def delete_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def drop_postgres_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


@contextlib.contextmanager
def backend_for(kind: str, folder: Path) -> Iterator[Backend]:
    """Yield a backend whose data lives only for this test."""
    if kind == "memory":
        yield Backend(kind, "memory:")
    elif kind == "sqlite":
        yield Backend(kind, f"sqlite://{folder / 'flows.db'}")
    elif kind == "redis":
        require_server(kind)
        prefix = f"flowengine-test-{secrets.token_hex(8)}:"
        try:
            yield Backend(kind, with_query(REDIS_URL, "prefix", prefix))
        finally:
            delete_redis_keys(prefix)
    elif kind == "postgres":
        require_server(kind)
        schema = f"flowengine_test_{secrets.token_hex(8)}"
        try:
            yield Backend(kind, with_query(POSTGRES_URL, "schema", schema))
        finally:
            drop_postgres_schema(schema)
    else:
        raise ValueError(f"unknown store kind {kind!r}")


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, tmp_path) as chosen:
        yield chosen


@pytest.fixture(params=SHARED_KINDS)
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, tmp_path) as chosen:
        yield chosen


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


@pytest.fixture
def redis_backend(tmp_path: Path) -> Iterator[Backend]:
    with backend_for("redis", tmp_path) as chosen:
        yield chosen


@pytest.fixture
def postgres_backend(tmp_path: Path) -> Iterator[Backend]:
    with backend_for("postgres", tmp_path) as chosen:
        yield chosen


@pytest.fixture
def refused_port() -> Iterator[int]:
    """Return a loopback port that is bound but not listening, so connects fail."""
    with hostile.refused_port() as port:
        yield port


# --- the contract of every store -------------------------------------------


def test_store_create_then_load(store: Store) -> None:
    record = create(store, n=1)

    assert store.load("f1") == record


def test_store_create_writes_event(store: Store) -> None:
    create(store)

    assert store.events("f1") == [make_event()]


def test_store_flows_lists_every_flow(store: Store) -> None:
    created = [create(store, f"f{index}", n=index) for index in range(5)]

    flows = store.flows()

    assert sorted(flows, key=lambda r: r.id) == created


def test_store_flows_empty(store: Store) -> None:
    assert store.flows() == []


def test_store_duplicate_create_raises_conflict(store: Store) -> None:
    original = create(store, n=1)

    with pytest.raises(ConflictError) as caught:
        create(store, n=2)

    assert caught.value.flow_id == "f1"
    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]


def test_store_load_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(FlowNotFoundError) as caught:
        store.load("absent")

    assert caught.value.flow_id == "absent"
    assert "'absent'" in str(caught.value)


def test_store_events_of_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(FlowNotFoundError):
        store.events("absent")


def test_store_commit_of_missing_raises_not_found(store: Store) -> None:
    with pytest.raises(FlowNotFoundError):
        commit(store, "absent", 1)

    assert store.flows() == []


def test_store_commit_saves_record_and_event(store: Store) -> None:
    create(store)

    first = commit(store, "f1", 1, n=1)
    second = commit(store, "f1", 2, n=2)

    assert store.load("f1") == second
    assert first.version == 1
    assert [e.sequence for e in store.events("f1")] == [0, 1, 2]
    assert store.events("f1")[2] == make_event("f1", 2, "open")


@pytest.mark.parametrize("version", [0, 2, 5, -1])
def test_store_commit_wrong_version_writes_nothing(store: Store, version: int) -> None:
    original = create(store, n=1)

    with pytest.raises(ConflictError) as caught:
        commit(store, "f1", version, n=99)

    assert caught.value.expected_version == version - 1
    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]


def test_store_commit_stale_record_raises_conflict(store: Store) -> None:
    create(store)
    winner = commit(store, "f1", 1, winner=True)

    with pytest.raises(ConflictError):
        commit(store, "f1", 1, winner=False)

    assert store.load("f1") == winner
    assert len(store.events("f1")) == 2


def test_store_flows_are_independent(store: Store) -> None:
    create(store, "f1")
    other = create(store, "f2", n=2)

    commit(store, "f1", 1)

    assert store.load("f2") == other
    assert len(store.events("f2")) == 1


def test_store_data_round_trips_json(store: Store) -> None:
    create(store, **JSON_DATA)

    assert store.load("f1").data == JSON_DATA

    commit(store, "f1", 1, **JSON_DATA, extra="✓")

    assert store.load("f1").data == {**JSON_DATA, "extra": "✓"}


def test_store_event_details_round_trip(store: Store) -> None:
    create(store)
    event = make_event("f1", 1, "open", details=JSON_DATA)

    store.commit(make_record("f1", 1, "open"), event)

    assert store.events("f1")[1].details == JSON_DATA


def test_store_event_fields_round_trip(store: Store) -> None:
    create(store)
    event = AuditEvent(
        flow_id="f1",
        sequence=1,
        time="2023-11-14T22:13:21.500000Z",
        trigger="lock",
        source="closed",
        destination="closed",
        outcome="door_jammed",
        details={"error": "DoorJammedError"},
    )

    store.commit(make_record("f1", 1, "closed"), event)

    assert store.events("f1")[1] == event


def test_loaded_record_is_a_copy(store: Store) -> None:
    create(store, n=1, items=["a"], nested={"k": "v"})

    loaded = store.load("f1")
    loaded.data["n"] = 2  # type: ignore[index]
    loaded.data["items"].append("b")
    loaded.data["nested"]["k"] = "changed"

    assert store.load("f1").data == {"n": 1, "items": ["a"], "nested": {"k": "v"}}


def test_listed_record_is_a_copy(store: Store) -> None:
    create(store, items=["a"])

    store.flows()[0].data["items"].append("b")

    assert store.load("f1").data == {"items": ["a"]}


def test_created_record_is_copied_in(store: Store) -> None:
    data: dict[str, Any] = {"items": ["a"]}
    store.create(make_record(data=data), make_event())

    data["items"].append("b")

    assert store.load("f1").data == {"items": ["a"]}


def test_committed_record_is_copied_in(store: Store) -> None:
    create(store)
    record = make_record("f1", 1, "open", {"items": ["a"]})
    store.commit(record, make_event("f1", 1, "open"))

    record.data["items"].append("b")

    assert store.load("f1").data == {"items": ["a"]}


def test_loaded_events_are_copies(store: Store) -> None:
    details: dict[str, Any] = {"steps": ["a"]}
    store.create(make_record(), make_event(details=details))

    details["steps"].append("from caller")
    store.events("f1")[0].details["steps"].append("from reader")

    assert store.events("f1")[0].details == {"steps": ["a"]}


def test_store_delete_removes_flow_and_events(store: Store) -> None:
    create(store)
    commit(store, "f1", 1, n=1)

    store.delete("f1")

    with pytest.raises(FlowNotFoundError):
        store.load("f1")
    with pytest.raises(FlowNotFoundError):
        store.events("f1")
    assert store.flows() == []


def test_store_delete_keeps_other_flows(store: Store) -> None:
    create(store, "f1")
    create(store, "f2", n=2)
    kept = commit(store, "f2", 1, n=3)
    kept_events = store.events("f2")

    store.delete("f1")

    assert store.flows() == [kept]
    assert store.load("f2") == kept
    assert store.events("f2") == kept_events


def test_store_delete_missing_raises_not_found(store: Store) -> None:
    create(store)

    with pytest.raises(FlowNotFoundError) as caught:
        store.delete("absent")

    assert caught.value.flow_id == "absent"
    assert len(store.flows()) == 1


def test_store_delete_twice_raises_not_found(store: Store) -> None:
    create(store)
    store.delete("f1")

    with pytest.raises(FlowNotFoundError):
        store.delete("f1")


def test_store_delete_at_expected_version(store: Store) -> None:
    create(store)
    commit(store, "f1", 1)

    store.delete("f1", expected_version=1)

    assert store.flows() == []


@pytest.mark.parametrize("version", [0, 2, -1])
def test_store_delete_wrong_version_removes_nothing(store: Store, version: int) -> None:
    create(store)
    record = commit(store, "f1", 1, n=1)

    with pytest.raises(ConflictError) as caught:
        store.delete("f1", expected_version=version)

    assert caught.value.expected_version == version
    assert store.load("f1") == record
    assert [e.sequence for e in store.events("f1")] == [0, 1]


def test_store_commit_after_delete_raises_not_found(store: Store) -> None:
    create(store)
    store.delete("f1")

    with pytest.raises(FlowNotFoundError):
        commit(store, "f1", 1)

    assert store.flows() == []


def test_store_create_after_delete_starts_new_trail(store: Store) -> None:
    create(store, n=1)
    commit(store, "f1", 1, n=2)
    store.delete("f1")

    record = create(store, n=3)

    assert store.load("f1") == record
    assert store.events("f1") == [make_event()]
    assert store.flows() == [record]


def test_store_delete_races_commit(store: Store) -> None:
    create(store)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def close_thread_connection() -> None:
        # SQLiteStore.close closes only the calling thread's connection.
        if isinstance(store, SQLiteStore):
            store.close()

    def delete() -> None:
        barrier.wait()
        try:
            store.delete("f1", expected_version=0)
        except ConflictError:
            outcomes["delete"] = "conflict"
        else:
            outcomes["delete"] = "deleted"
        finally:
            close_thread_connection()

    def save() -> None:
        barrier.wait()
        try:
            commit(store, "f1", 1, n=1)
        except FlowNotFoundError:
            outcomes["commit"] = "not found"
        else:
            outcomes["commit"] = "saved"
        finally:
            close_thread_connection()

    threads = [threading.Thread(target=delete), threading.Thread(target=save)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes in (
        {"delete": "deleted", "commit": "not found"},
        {"delete": "conflict", "commit": "saved"},
    )
    if outcomes["delete"] == "deleted":
        assert store.flows() == []
    else:
        assert store.load("f1").version == 1
        assert [e.sequence for e in store.events("f1")] == [0, 1]


# --- SQLite ----------------------------------------------------------------


def test_sqlite_reopen_sees_flows_and_events(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    first = SQLiteStore(path)
    create(first, **JSON_DATA)
    record = commit(first, "f1", 1, n=1)
    first.close()

    second = SQLiteStore(path)

    assert second.load("f1") == record
    assert second.flows() == [record]
    assert [e.sequence for e in second.events("f1")] == [0, 1]
    commit(second, "f1", 2)
    assert second.load("f1").version == 2
    second.close()


def test_sqlite_two_stores_share_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    writer = SQLiteStore(path)
    reader = SQLiteStore(path)
    create(writer)

    commit(writer, "f1", 1)

    assert reader.load("f1").version == 1
    with pytest.raises(ConflictError):
        commit(reader, "f1", 1)
    writer.close()
    reader.close()


def test_sqlite_creates_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "flows.db"
    store = SQLiteStore(path)

    create(store)

    assert path.is_file()
    store.close()


def test_sqlite_in_memory_database() -> None:
    store = SQLiteStore(":memory:")

    record = create(store)

    assert store.load("f1") == record
    store.close()


def test_sqlite_failed_event_insert_rolls_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "flows.db")
    original = create(store)
    clashing_event = make_event("f1", 0, "open")

    with pytest.raises(sqlite3.IntegrityError):
        store.commit(make_record("f1", 1, "open"), clashing_event)

    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]
    store.close()


def test_sqlite_non_json_data_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "flows.db")
    original = create(store)

    with pytest.raises(TypeError):
        commit(store, "f1", 1, when={1, 2})

    assert store.load("f1") == original
    assert len(store.events("f1")) == 1
    commit(store, "f1", 1)
    assert store.load("f1").version == 1
    store.close()


def race_commits(
    stores: list[ClosableStore], version: int = 1, *, close_in_thread: bool = True
) -> tuple[list[int], list[int]]:
    barrier = threading.Barrier(len(stores))
    wins: list[int] = []
    conflicts: list[int] = []
    unexpected: list[BaseException] = []

    def attempt(index: int) -> None:
        store = stores[index]
        try:
            barrier.wait()
            commit(store, "f1", version, winner=index)
        except ConflictError:
            conflicts.append(index)
        except BaseException as exc:  # reported by the assert below
            unexpected.append(exc)
        else:
            wins.append(index)
        finally:
            # SQLiteStore.close closes only the calling thread's connection.
            if close_in_thread:
                store.close()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    return wins, conflicts


def test_sqlite_threads_race_on_one_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "flows.db")
    create(store)

    wins, conflicts = race_commits([store] * 8)

    assert len(wins) == 1
    assert sorted(wins + conflicts) == list(range(8))
    assert store.load("f1").data == {"winner": wins[0]}
    assert [e.sequence for e in store.events("f1")] == [0, 1]


def test_sqlite_threads_race_on_separate_stores(tmp_path: Path) -> None:
    path = tmp_path / "flows.db"
    setup = SQLiteStore(path)
    create(setup)
    setup.close()
    stores = [SQLiteStore(path) for _ in range(8)]

    wins, conflicts = race_commits(stores)

    for store in stores:
        store.close()
    assert len(wins) == 1
    assert len(conflicts) == 7
    check = SQLiteStore(path)
    assert check.load("f1").data == {"winner": wins[0]}
    assert len(check.events("f1")) == 2
    check.close()


def test_sqlite_races_in_rounds_keep_one_winner(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "flows.db")
    create(store)

    for version in range(1, 6):
        wins, conflicts = race_commits([store] * 6, version)
        assert len(wins) == 1
        assert len(conflicts) == 5
        assert store.load("f1").version == version

    assert [e.sequence for e in store.events("f1")] == [0, 1, 2, 3, 4, 5]


# --- races between threads and processes on shared stores -------------------


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_threads_race_on_one_store(kind: str, tmp_path: Path) -> None:
    with backend_for(kind, tmp_path) as shared:
        store = shared.open()
        create(store)

        wins, conflicts = race_commits([store] * 8, close_in_thread=False)

        assert len(wins) == 1
        assert sorted(wins + conflicts) == list(range(8))
        assert store.load("f1").data == {"winner": wins[0]}
        assert [e.sequence for e in store.events("f1")] == [0, 1]
        store.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_threads_race_on_separate_stores(kind: str, tmp_path: Path) -> None:
    with backend_for(kind, tmp_path) as shared:
        setup = shared.open()
        create(setup)
        stores = [shared.open() for _ in range(8)]

        wins, conflicts = race_commits(stores, close_in_thread=False)

        assert len(wins) == 1
        assert len(conflicts) == 7
        assert setup.load("f1").data == {"winner": wins[0]}
        assert len(setup.events("f1")) == 2
        for store in [setup, *stores]:
            store.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_races_in_rounds_keep_one_winner(kind: str, tmp_path: Path) -> None:
    with backend_for(kind, tmp_path) as shared:
        stores = [shared.open() for _ in range(6)]
        create(stores[0])

        for version in range(1, 6):
            wins, conflicts = race_commits(stores, version, close_in_thread=False)
            assert len(wins) == 1
            assert len(conflicts) == 5

        assert stores[0].load("f1").version == 5
        assert [e.sequence for e in stores[0].events("f1")] == [0, 1, 2, 3, 4, 5]
        for store in stores:
            store.close()


def commit_in_process(location: str, index: int, barrier: Any, results: Any) -> None:
    """Commit version 1 of flow f1 from a child process and report the outcome."""
    store = cast(ClosableStore, open_store(location))
    try:
        barrier.wait(timeout=60)
        commit(store, "f1", 1, winner=index)
    except ConflictError:
        results.put((index, "conflict"))
    except BaseException as exc:  # reported to the parent's assert
        results.put((index, f"{type(exc).__name__}: {exc}"))
    else:
        results.put((index, "won"))
    finally:
        store.close()


def test_processes_race_for_one_version(shared_backend: Backend) -> None:
    setup = shared_backend.open()
    create(setup)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(
            target=commit_in_process,
            args=(shared_backend.location, index, barrier, results),
        )
        for index in range(4)
    ]
    for process in processes:
        process.start()

    outcomes = dict(results.get(timeout=120) for _ in processes)

    for process in processes:
        process.join(timeout=30)
    winners = [index for index, outcome in outcomes.items() if outcome == "won"]
    others = sorted(outcome for outcome in outcomes.values() if outcome != "won")
    assert len(winners) == 1
    assert others == ["conflict"] * 3
    assert setup.load("f1").data == {"winner": winners[0]}
    assert [e.sequence for e in setup.events("f1")] == [0, 1]
    assert [process.exitcode for process in processes] == [0] * 4
    setup.close()


# --- open_store --------------------------------------------------------------


def test_open_store_memory() -> None:
    assert isinstance(open_store("memory:"), MemoryStore)


def test_open_store_redis_reads_prefix(redis_backend: Backend) -> None:
    from flowengine.adapters.redis_store import RedisStore

    store = redis_backend.open()

    assert isinstance(store, RedisStore)
    assert store.prefix.startswith("flowengine-test-")
    store.close()


def test_open_store_redis_default_prefix() -> None:
    require_server("redis")
    from flowengine.adapters.redis_store import RedisStore

    store = open_store(REDIS_URL)

    assert isinstance(store, RedisStore)
    assert store.prefix == "flowengine:"
    store.close()


def test_open_store_postgres_reads_schema(postgres_backend: Backend) -> None:
    from flowengine.adapters.postgres import PostgresStore

    store = postgres_backend.open()

    assert isinstance(store, PostgresStore)
    assert store.schema is not None
    assert store.schema.startswith("flowengine_test_")
    store.close()


def test_open_store_postgres_scheme_alias(postgres_backend: Backend) -> None:
    location = postgres_backend.location.replace("postgresql://", "postgres://", 1)
    store = cast(ClosableStore, open_store(location))

    record = create(store)

    assert postgres_backend.open().load("f1") == record
    store.close()


@pytest.mark.parametrize(
    "location",
    [
        "redis://127.0.0.1:6379/0?prefix=a:&prefix=b:",
        "postgresql://127.0.0.1/test?schema=a&schema=b",
    ],
)
def test_open_store_repeated_parameter_raises(location: str) -> None:
    pytest.importorskip("redis")
    pytest.importorskip("psycopg")

    with pytest.raises(ConfigError) as caught:
        open_store(location)

    assert "set it once" in str(caught.value)


def test_open_store_unknown_scheme_hides_password() -> None:
    with pytest.raises(ConfigError) as caught:
        open_store("mysql://app:hunter2-secret@127.0.0.1/flows")

    assert "mysql" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "name", "expected"),
    [
        ("postgresql:///test?schema=s", "schema", ("postgresql:///test", "s")),
        (
            "postgresql://h/db?options=-c%20search_path%3Dx&schema=a%20b",
            "schema",
            ("postgresql://h/db?options=-c%20search_path%3Dx", "a b"),
        ),
        (
            "redis://h/0?prefix=app:&socket_timeout=3",
            "prefix",
            ("redis://h/0?socket_timeout=3", "app:"),
        ),
        ("redis://h/0", "prefix", ("redis://h/0", None)),
        ("redis://h/0?prefix=", "prefix", ("redis://h/0", "")),
    ],
)
def test_pop_query_parameter(
    url: str, name: str, expected: tuple[str, str | None]
) -> None:
    assert pop_query_parameter(url, name) == expected


# --- Redis ---------------------------------------------------------------------


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def test_redis_keys_live_under_prefix(redis_backend: Backend) -> None:
    store = cast(Any, redis_backend.open())
    prefix = store.prefix
    create(store, n=1)
    commit(store, "f1", 1, n=2)
    client = redis_client()

    keys = sorted(client.scan_iter(match=f"{prefix}*"))

    assert keys == [f"{prefix}events:f1", f"{prefix}flow:f1", f"{prefix}flows"]
    assert client.type(f"{prefix}flow:f1") == "hash"
    assert client.hget(f"{prefix}flow:f1", "version") == "1"
    assert client.llen(f"{prefix}events:f1") == 2
    assert client.zrange(f"{prefix}flows", 0, -1) == ["f1"]
    client.close()
    store.close()


def test_redis_delete_removes_every_key(redis_backend: Backend) -> None:
    store = cast(Any, redis_backend.open())
    prefix = store.prefix
    create(store, "f1")
    commit(store, "f1", 1)
    create(store, "f2")
    client = redis_client()

    store.delete("f1")

    keys = sorted(client.scan_iter(match=f"{prefix}*"))
    assert keys == [f"{prefix}events:f2", f"{prefix}flow:f2", f"{prefix}flows"]
    assert client.zrange(f"{prefix}flows", 0, -1) == ["f2"]
    client.close()
    store.close()


def test_redis_delete_foreign_key_type_removes_nothing(
    redis_backend: Backend,
) -> None:
    import redis

    store = cast(Any, redis_backend.open())
    original = create(store)
    client = redis_client()
    client.delete(f"{store.prefix}flows")
    client.set(f"{store.prefix}flows", "not a sorted set")

    with pytest.raises(redis.exceptions.ResponseError):
        store.delete("f1")

    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]
    client.close()
    store.close()


def test_redis_prefixes_keep_stores_apart(redis_backend: Backend) -> None:
    first = redis_backend.open()
    other_prefix = f"flowengine-test-{secrets.token_hex(8)}:"
    second = cast(
        ClosableStore, open_store(with_query(REDIS_URL, "prefix", other_prefix))
    )
    try:
        create(first, n=1)
        record = create(second, n=2)

        assert second.load("f1") == record
        assert second.flows() == [record]
        assert first.load("f1").data == {"n": 1}
    finally:
        second.close()
        delete_redis_keys(other_prefix)
    first.close()


def test_redis_flows_ordered_by_update(redis_backend: Backend) -> None:
    store = redis_backend.open()
    create(store, "a")
    create(store, "b")
    commit(store, "a", 1)

    assert [record.id for record in store.flows()] == ["b", "a"]
    store.close()


def test_redis_commit_after_script_cache_flush(redis_backend: Backend) -> None:
    store = redis_backend.open()
    create(store)
    client = redis_client()

    client.script_flush()
    record = commit(store, "f1", 1, n=1)

    assert store.load("f1") == record
    client.close()
    store.close()


def test_redis_foreign_key_type_writes_nothing(redis_backend: Backend) -> None:
    import redis

    store = cast(Any, redis_backend.open())
    original = create(store)
    client = redis_client()
    client.delete(f"{store.prefix}flows")
    client.set(f"{store.prefix}flows", "not a sorted set")

    with pytest.raises(redis.exceptions.ResponseError) as caught:
        commit(store, "f1", 1)

    assert "use a prefix no other program uses" in str(caught.value)
    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]
    client.close()
    store.close()


def test_redis_non_json_data_writes_nothing(redis_backend: Backend) -> None:
    store = redis_backend.open()
    original = create(store)

    with pytest.raises(TypeError):
        commit(store, "f1", 1, when={1, 2})

    assert store.load("f1") == original
    assert len(store.events("f1")) == 1
    store.close()


def test_redis_empty_prefix_rejected() -> None:
    pytest.importorskip("redis")
    from flowengine.adapters.redis_store import RedisStore

    with pytest.raises(ConfigError):
        RedisStore(REDIS_URL, prefix="")


def test_redis_unreachable_raises_connection_error(refused_port: int) -> None:
    pytest.importorskip("redis")
    url = f"redis://app:hunter2-secret@127.0.0.1:{refused_port}/0"

    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url)

    message = str(caught.value)
    assert f"127.0.0.1:{refused_port}" in message
    assert "Connection refused" in message
    assert "hunter2-secret" not in message
    assert "app:" not in message


def test_redis_repr_hides_password(redis_backend: Backend) -> None:
    from flowengine.adapters.redis_store import RedisStore

    store = RedisStore(REDIS_URL.replace("redis://", "redis://:hunter2-secret@", 1))

    assert "hunter2-secret" not in repr(store)
    assert "RedisStore(" in repr(store)
    store.close()


# --- PostgreSQL ----------------------------------------------------------------


def postgres_tables(schema: str) -> list[str]:
    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = %s ORDER BY table_name",
            (schema,),
        ).fetchall()
    return [row[0] for row in rows]


def test_postgres_creates_tables_in_schema(postgres_backend: Backend) -> None:
    store = cast(Any, postgres_backend.open())

    tables = postgres_tables(store.schema)

    assert tables == ["flowengine_audit_events", "flowengine_flows"]
    store.close()


def test_postgres_concurrent_starts_create_tables(postgres_backend: Backend) -> None:
    barrier = threading.Barrier(6)
    opened: list[ClosableStore] = []
    failures: list[BaseException] = []

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            opened.append(postgres_backend.open())
        except BaseException as exc:  # reported by the assert below
            failures.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert len(opened) == 6
    record = create(opened[0])
    assert opened[5].load("f1") == record
    for store in opened:
        store.close()


def test_postgres_opens_without_create_privilege(postgres_backend: Backend) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from flowengine.adapters.postgres import PostgresStore

    url, schema = pop_query_parameter(postgres_backend.location, "schema")
    assert schema is not None
    owner = PostgresStore(url, schema=schema)
    record = create(owner)
    role = f"flowengine_test_{secrets.token_hex(4)}"
    grants = [
        "CREATE ROLE {role} LOGIN",
        "GRANT USAGE ON SCHEMA {schema} TO {role}",
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}",
    ]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        for grant in grants:
            admin.execute(
                sql.SQL(grant).format(
                    role=sql.Identifier(role), schema=sql.Identifier(schema)
                )
            )
    try:
        try:
            limited = PostgresStore(make_conninfo(url, user=role), schema=schema)
        except StoreUnavailableError as exc:
            pytest.skip(f"the test server does not let a new role log in: {exc}")

        commit(limited, "f1", 1, by="limited role")

        assert limited.load("f1").data == {"by": "limited role"}
        assert owner.load("f1").version == record.version + 1
        limited.close()
    finally:
        owner.close()
        drop_postgres_schema(schema)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_postgres_schema_name_is_quoted(tmp_path: Path) -> None:
    require_server("postgres")
    from flowengine.adapters.postgres import PostgresStore

    schema = f'flowengine test "{secrets.token_hex(4)}"; DROP TABLE x; --'
    try:
        store = PostgresStore(POSTGRES_URL, schema=schema)
        record = create(store)

        assert store.load("f1") == record
        assert postgres_tables(schema) == [
            "flowengine_audit_events",
            "flowengine_flows",
        ]
        store.close()
    finally:
        drop_postgres_schema(schema)


def test_postgres_long_schema_name_rejected() -> None:
    pytest.importorskip("psycopg")
    from flowengine.adapters.postgres import PostgresStore

    with pytest.raises(ConfigError) as caught:
        PostgresStore(POSTGRES_URL, schema="s" * 64)

    assert "63 bytes" in str(caught.value)


def test_postgres_reopen_sees_flows_and_events(postgres_backend: Backend) -> None:
    first = postgres_backend.open()
    create(first, **JSON_DATA)
    record = commit(first, "f1", 1, n=1)
    first.close()

    second = postgres_backend.open()

    assert second.load("f1") == record
    assert second.flows() == [record]
    assert [e.sequence for e in second.events("f1")] == [0, 1]
    second.close()


def test_postgres_flows_ordered_by_update(postgres_backend: Backend) -> None:
    store = postgres_backend.open()
    create(store, "a")
    create(store, "b")
    commit(store, "a", 1)

    assert [record.id for record in store.flows()] == ["b", "a"]
    store.close()


def test_postgres_delete_removes_rows(postgres_backend: Backend) -> None:
    import psycopg
    from psycopg import sql

    store = cast(Any, postgres_backend.open())
    create(store, "f1")
    commit(store, "f1", 1)
    create(store, "f2")

    store.delete("f1")

    with psycopg.connect(POSTGRES_URL) as conn:
        counts = [
            conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE {} = %s").format(
                    sql.Identifier(store.schema, table), sql.Identifier(column)
                ),
                (flow_id,),
            ).fetchone()
            for table, column, flow_id in [
                ("flowengine_flows", "id", "f1"),
                ("flowengine_audit_events", "flow_id", "f1"),
                ("flowengine_audit_events", "flow_id", "f2"),
            ]
        ]
    assert counts == [(0,), (0,), (1,)]
    store.close()


def test_postgres_failed_event_insert_rolls_back(postgres_backend: Backend) -> None:
    import psycopg

    store = postgres_backend.open()
    original = create(store)
    clashing_event = make_event("f1", 0, "open")

    with pytest.raises(psycopg.errors.UniqueViolation):
        store.commit(make_record("f1", 1, "open"), clashing_event)

    assert store.load("f1") == original
    assert store.events("f1") == [make_event()]
    commit(store, "f1", 1)
    assert store.load("f1").version == 1
    store.close()


def test_postgres_non_json_data_writes_nothing(postgres_backend: Backend) -> None:
    store = postgres_backend.open()
    original = create(store)

    with pytest.raises(TypeError):
        commit(store, "f1", 1, when={1, 2})

    assert store.load("f1") == original
    assert len(store.events("f1")) == 1
    store.close()


def test_postgres_nul_character_writes_nothing(postgres_backend: Backend) -> None:
    import psycopg

    store = postgres_backend.open()
    original = create(store)

    with pytest.raises(psycopg.DataError):
        commit(store, "f1", 1, text="before\x00after")

    assert store.load("f1") == original
    assert len(store.events("f1")) == 1
    store.close()


def test_postgres_unreachable_raises_connection_error(refused_port: int) -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://app:hunter2-secret@127.0.0.1:{refused_port}/flows"

    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url)

    message = str(caught.value)
    assert f"127.0.0.1:{refused_port}" in message
    assert "database flows, user app" in message
    assert "Connection refused" in message
    assert "hunter2-secret" not in message


def test_postgres_unknown_database_raises_connection_error() -> None:
    require_server("postgres")
    database = f"flowengine_missing_{secrets.token_hex(4)}"
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + database

    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url)

    assert f'database "{database}" does not exist' in str(caught.value)


def test_postgres_repr_hides_password(postgres_backend: Backend) -> None:
    from flowengine.adapters.postgres import PostgresStore

    url, schema = pop_query_parameter(postgres_backend.location, "schema")
    url = url.replace("postgres@", "postgres:hunter2-secret@", 1)
    store = PostgresStore(url, schema=schema)

    assert "hunter2-secret" not in repr(store)
    assert "PostgresStore(" in repr(store)
    store.close()
