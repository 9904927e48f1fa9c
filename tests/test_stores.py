"""Contract tests shared by every store, and SQLite-specific behaviour."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.engine import Store
from flowengine.errors import ConflictError, FlowNotFoundError
from flowengine.records import AuditEvent, FlowRecord

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


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite_store = SQLiteStore(tmp_path / "flows.db")
    yield sqlite_store
    sqlite_store.close()


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
    stores: list[SQLiteStore], version: int = 1
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
