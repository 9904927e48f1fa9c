"""Tests of the engine: firing triggers on stored flows, auditing, replay."""

from __future__ import annotations

import dataclasses
import datetime
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.definition import FlowDefinition, Registry, parse_definition
from flowengine.engine import Engine, Run, Store, replay
from flowengine.errors import (
    ConflictError,
    DefinitionError,
    FlowNotFoundError,
    InvalidTriggerError,
    StateMismatchError,
    TransitionError,
)
from flowengine.records import AuditEvent

START = 1_700_000_000.25
START_ISO = "2023-11-14T22:13:20.250000Z"

DOOR = """\
name: door
initial: closed
states:
  closed: {}
  open: {}
  locked: {}
transitions:
  - trigger: open
    source: closed
    dest: open
    conditions: [not_jammed]
    actions: [count_opening]
  - trigger: close
    source: open
    dest: closed
    actions: [note_close]
  - trigger: lock
    source: closed
    dest: locked
    conditions: [has_key]
  - trigger: lock
    source: closed
    dest: locked
    conditions: [has_pin]
  - trigger: unlock
    source: locked
    dest: closed
"""

SECRETS = {
    "access_token": "at-value-7f3a9c",
    "code": "code-value-19be44",
    "state": "state-value-c0ffee",
}


class DoorJammedError(TransitionError):
    code = "door_jammed"


class FixedClock:
    def __init__(self, now: float = START) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def not_jammed(run: Run) -> bool:
    meanwhile = run.inputs.get("meanwhile")
    if meanwhile is not None:
        meanwhile()
    run.data["touched_by_guard"] = True
    if run.inputs.get("jammed"):
        raise DoorJammedError(f"door of flow {run.flow_id} is jammed")
    if run.inputs.get("mismatch"):
        raise StateMismatchError("state parameter does not match")
    return not run.inputs.get("reject", False)


def count_opening(run: Run) -> None:
    count = run.data.get("openings", 0) + 1
    run.data["openings"] = count
    run.data["history"] = [*run.data.get("history", []), "opened"]
    run.details["openings"] = count
    run.details.update(run.inputs.get("details", {}))
    run.result = count
    if run.inputs.get("fail_after_change"):
        raise TransitionError("opening failed", code="opening_failed")
    if run.inputs.get("crash"):
        raise RuntimeError("bug in an action")


def note_close(run: Run) -> None:
    run.outcome = run.inputs.get("outcome", "ok")
    run.details.update(run.inputs.get("details", {}))


def make_registry() -> Registry:
    registry = Registry()
    registry.guard("not_jammed")(not_jammed)
    registry.guard("has_key")(lambda run: run.inputs.get("key") == "brass")
    registry.guard("has_pin")(lambda run: run.inputs.get("pin") == "0000")
    registry.action("count_opening")(count_opening)
    registry.action("note_close")(note_close)
    return registry


@pytest.fixture
def definition() -> FlowDefinition:
    return parse_definition(DOOR, source="door.yaml", registry=make_registry())


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite_store = SQLiteStore(tmp_path / "flows.db")
    yield sqlite_store
    sqlite_store.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def engine(definition: FlowDefinition, store: Store, clock: FixedClock) -> Engine:
    return Engine(definition, make_registry(), store, clock)


def event_texts(events: list[AuditEvent]) -> str:
    return json.dumps([event.to_dict() for event in events])


# --- create and fire -------------------------------------------------------


def test_create_stores_initial_record(engine: Engine) -> None:
    record = engine.create("f1", {"note": "x"})

    assert record.state == "closed"
    assert record.version == 0
    assert record.definition == "door"
    assert record.created_at == START
    assert engine.load("f1") == record


def test_create_writes_creation_event(engine: Engine) -> None:
    engine.create("f1")

    [event] = engine.events("f1")

    assert event.sequence == 0
    assert event.trigger == "create"
    assert event.source is None
    assert event.destination == "closed"
    assert event.outcome == "ok"
    assert event.time == START_ISO


def test_create_without_id_picks_random_id(engine: Engine) -> None:
    first = engine.create()
    second = engine.create()

    assert first.id != second.id
    assert len(first.id) == 32


def test_create_twice_raises_conflict(engine: Engine) -> None:
    engine.create("f1", {"n": 1})

    with pytest.raises(ConflictError):
        engine.create("f1", {"n": 2})

    assert engine.load("f1").data == {"n": 1}
    assert len(engine.events("f1")) == 1


def test_fire_success_writes_new_record(engine: Engine, clock: FixedClock) -> None:
    engine.create("f1")
    clock.value = START + 5

    result = engine.fire("f1", "open")

    assert result.record.state == "open"
    assert result.record.version == 1
    assert result.record.updated_at == START + 5
    assert result.record.created_at == START
    assert result.record.data == {
        "touched_by_guard": True,
        "openings": 1,
        "history": ["opened"],
    }
    assert result.result == 1
    assert engine.load("f1") == result.record


def test_fire_success_writes_audit_event(engine: Engine, clock: FixedClock) -> None:
    engine.create("f1")
    clock.value = START + 5

    result = engine.fire("f1", "open")

    event = engine.events("f1")[-1]
    assert event == result.event
    assert event.flow_id == "f1"
    assert event.sequence == result.record.version
    assert event.trigger == "open"
    assert event.source == "closed"
    assert event.destination == "open"
    assert event.outcome == "ok"
    assert event.ok
    assert event.details == {"openings": 1}


def test_audit_time_is_utc_iso_with_z(engine: Engine, clock: FixedClock) -> None:
    engine.create("f1")
    clock.value = START + 3600.5

    event = engine.fire("f1", "open").event

    assert event.time == "2023-11-14T23:13:20.750000Z"
    parsed = datetime.datetime.fromisoformat(event.time.replace("Z", "+00:00"))
    assert parsed.timestamp() == START + 3600.5


def test_fire_sequence_follows_version(engine: Engine) -> None:
    engine.create("f1")

    for trigger in ["open", "close", "open", "close", "lock"]:
        engine.fire("f1", trigger, key="brass")

    events = engine.events("f1")
    assert [e.sequence for e in events] == [0, 1, 2, 3, 4, 5]
    assert engine.load("f1").version == 5
    assert engine.load("f1").state == "locked"


def test_second_row_fires_after_first_fails(engine: Engine) -> None:
    engine.create("f1")

    result = engine.fire("f1", "lock", key="wrong", pin="0000")

    assert result.record.state == "locked"


def test_action_outcome_is_recorded_on_move(engine: Engine) -> None:
    engine.create("f1")
    engine.fire("f1", "open")

    result = engine.fire("f1", "close", outcome="draft_noted")

    assert result.record.state == "closed"
    assert result.event.outcome == "draft_noted"
    assert engine.replay("f1") == "closed"


def test_fire_on_missing_flow_raises_not_found(engine: Engine) -> None:
    with pytest.raises(FlowNotFoundError) as caught:
        engine.fire("absent", "open")

    assert caught.value.flow_id == "absent"


def test_valid_triggers_by_state(engine: Engine) -> None:
    assert engine.valid_triggers("closed") == ("open", "lock")
    assert engine.valid_triggers("open") == ("close",)
    assert engine.valid_triggers("locked") == ("unlock",)


# --- one machine, many flows -----------------------------------------------


def test_one_machine_serves_many_flows(engine: Engine) -> None:
    machine = engine._machine
    for index in range(30):
        engine.create(f"f{index}")

    for index in range(0, 30, 3):
        engine.fire(f"f{index}", "open")
    for index in range(1, 30, 3):
        engine.fire(f"f{index}", "lock", pin="0000")

    assert engine._machine is machine
    assert engine._machine.models == []
    states = {f"f{index}": engine.load(f"f{index}").state for index in range(30)}
    assert [states[f"f{i}"] for i in range(3)] == ["open", "locked", "closed"]
    assert sorted(set(states.values())) == ["closed", "locked", "open"]
    assert list(states.values()).count("open") == 10


def test_machine_holds_no_model_after_fire(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(TransitionError):
        engine.fire("f1", "lock", key="tin")
    with pytest.raises(DoorJammedError):
        engine.fire("f1", "open", jammed=True)
    with pytest.raises(RuntimeError):
        engine.fire("f1", "open", crash=True)
    engine.fire("f1", "open")
    with pytest.raises(InvalidTriggerError):
        engine.fire("f1", "lock")

    assert engine._machine.models == []


def test_threads_share_one_engine(definition: FlowDefinition, tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "threads.db")
    engine = Engine(definition, make_registry(), store, FixedClock())
    flow_ids = [f"f{index}" for index in range(8)]
    for flow_id in flow_ids:
        engine.create(flow_id)
    errors: list[BaseException] = []

    def work(flow_id: str) -> None:
        try:
            for _ in range(10):
                engine.fire(flow_id, "open")
                engine.fire(flow_id, "close")
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f,)) for f in flow_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for flow_id in flow_ids:
        assert engine.load(flow_id).version == 20
        assert engine.load(flow_id).data["openings"] == 10
    assert engine._machine.models == []


# --- invalid triggers ------------------------------------------------------


def test_invalid_trigger_message_names_choices(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(InvalidTriggerError) as caught:
        engine.fire("f1", "unlock")

    error = caught.value
    assert error.flow_id == "f1"
    assert error.state == "closed"
    assert error.trigger == "unlock"
    assert error.valid_triggers == ("open", "lock")
    message = str(error)
    assert "'unlock'" in message
    assert "f1" in message
    assert "'closed'" in message
    assert "open, lock" in message


@pytest.mark.parametrize("trigger", ["unlock", "fly", "create", "to_open"])
def test_invalid_trigger_changes_nothing(engine: Engine, trigger: str) -> None:
    engine.create("f1", {"n": 1})
    before = engine.load("f1")
    events_before = engine.events("f1")

    with pytest.raises(InvalidTriggerError):
        engine.fire("f1", trigger)

    assert engine.load("f1") == before
    assert engine.events("f1") == events_before


# --- guards and actions that reject ----------------------------------------


def test_guard_error_keeps_state_and_data(engine: Engine) -> None:
    engine.create("f1", {"n": 1})

    with pytest.raises(StateMismatchError):
        engine.fire("f1", "open", mismatch=True)

    record = engine.load("f1")
    assert record.state == "closed"
    assert record.data == {"n": 1}
    assert record.version == 1


def test_guard_error_appends_failed_event(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(StateMismatchError):
        engine.fire("f1", "open", mismatch=True)

    event = engine.events("f1")[-1]
    assert event.sequence == 1
    assert event.trigger == "open"
    assert event.source == "closed"
    assert event.destination == "closed"
    assert event.outcome == "state_mismatch"
    assert not event.ok
    assert event.details == {"error": "StateMismatchError"}


def test_guard_error_subclass_code_is_outcome(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(DoorJammedError, match="door of flow f1 is jammed"):
        engine.fire("f1", "open", jammed=True)

    assert engine.events("f1")[-1].outcome == "door_jammed"
    assert engine.load("f1").state == "closed"


def test_guards_all_false_raise_transition_error(engine: Engine) -> None:
    engine.create("f1", {"n": 1})

    with pytest.raises(TransitionError) as caught:
        engine.fire("f1", "lock", key="tin", pin="1234")

    assert type(caught.value) is TransitionError
    message = str(caught.value)
    assert "'lock'" in message
    assert "'closed'" in message
    assert "f1" in message
    record = engine.load("f1")
    assert record.state == "closed"
    assert record.data == {"n": 1}
    event = engine.events("f1")[-1]
    assert event.outcome == "transition_rejected"
    assert event.destination == "closed"


def test_action_error_keeps_stored_data(engine: Engine) -> None:
    engine.create("f1", {"openings": 4, "history": ["old"]})

    with pytest.raises(TransitionError) as caught:
        engine.fire("f1", "open", fail_after_change=True)

    assert caught.value.code == "opening_failed"
    record = engine.load("f1")
    assert record.state == "closed"
    assert record.data == {"openings": 4, "history": ["old"]}
    event = engine.events("f1")[-1]
    assert event.outcome == "opening_failed"
    assert event.details == {"openings": 5, "error": "TransitionError"}


def test_unexpected_action_error_writes_nothing(engine: Engine) -> None:
    engine.create("f1", {"openings": 4})
    before = engine.load("f1")
    events_before = engine.events("f1")

    with pytest.raises(RuntimeError, match="bug in an action"):
        engine.fire("f1", "open", crash=True)

    assert engine.load("f1") == before
    assert engine.events("f1") == events_before


def test_flow_fires_normally_after_rejection(engine: Engine) -> None:
    engine.create("f1")
    with pytest.raises(TransitionError):
        engine.fire("f1", "open", reject=True)

    result = engine.fire("f1", "open")

    assert result.record.state == "open"
    assert result.record.version == 2
    assert engine.replay("f1") == "open"


def test_record_failure_appends_failed_event(engine: Engine) -> None:
    engine.create("f1", {"n": 1})

    engine.record_failure("f1", "open", StateMismatchError("malformed callback"))

    record = engine.load("f1")
    assert record.state == "closed"
    assert record.data == {"n": 1}
    event = engine.events("f1")[-1]
    assert event.sequence == 1
    assert event.outcome == "state_mismatch"
    assert event.destination == "closed"
    assert engine.replay("f1") == "closed"


def test_record_failure_of_invalid_trigger(engine: Engine) -> None:
    engine.create("f1")

    engine.record_failure("f1", "unlock", TransitionError("not parsed"))

    assert engine.load("f1").version == 0
    assert len(engine.events("f1")) == 1


def test_subscriber_receives_saved_events(engine: Engine) -> None:
    received: list[AuditEvent] = []
    engine.subscribe(received.append)

    engine.create("f1")
    engine.fire("f1", "open")
    engine.fire("f1", "close")
    with pytest.raises(DoorJammedError):
        engine.fire("f1", "open", jammed=True)
    with pytest.raises(InvalidTriggerError):
        engine.fire("f1", "unlock")

    assert received == engine.events("f1")
    assert [event.sequence for event in received] == [0, 1, 2, 3]


# --- compare-and-set -------------------------------------------------------


def two_engines(definition: FlowDefinition, store: Store) -> tuple[Engine, Engine]:
    first = Engine(definition, make_registry(), store, FixedClock())
    second = Engine(definition, make_registry(), store, FixedClock(START + 1))
    return first, second


def test_stale_fire_raises_conflict(definition: FlowDefinition, store: Store) -> None:
    first, second = two_engines(definition, store)
    first.create("f1")

    def other_writer() -> None:
        second.fire("f1", "lock", key="brass")

    with pytest.raises(ConflictError) as caught:
        first.fire("f1", "open", meanwhile=other_writer)

    assert caught.value.flow_id == "f1"
    assert caught.value.expected_version == 0
    record = store.load("f1")
    assert record.state == "locked"
    assert record.version == 1
    assert "openings" not in record.data
    events = store.events("f1")
    assert [(e.sequence, e.trigger) for e in events] == [(0, "create"), (1, "lock")]


def test_stale_failure_keeps_original_error(
    definition: FlowDefinition, store: Store
) -> None:
    first, second = two_engines(definition, store)
    first.create("f1")

    def other_writer() -> None:
        second.fire("f1", "lock", pin="0000")

    with pytest.raises(DoorJammedError):
        first.fire("f1", "open", meanwhile=other_writer, jammed=True)

    assert store.load("f1").state == "locked"
    assert [e.trigger for e in store.events("f1")] == ["create", "lock"]


# --- replay ----------------------------------------------------------------


def fire_history(engine: Engine) -> None:
    engine.create("f1")
    engine.fire("f1", "open")
    engine.fire("f1", "close")
    with pytest.raises(TransitionError):
        engine.fire("f1", "lock", key="tin")
    engine.fire("f1", "lock", key="brass")
    engine.fire("f1", "unlock")
    engine.fire("f1", "open")


def test_replay_reproduces_state(engine: Engine) -> None:
    fire_history(engine)

    assert engine.replay("f1") == "open"
    assert engine.replay("f1") == engine.load("f1").state


def test_replay_of_created_flow(engine: Engine) -> None:
    engine.create("f1")

    assert engine.replay("f1") == "closed"


def tamper(events: list[AuditEvent], index: int, **changes: Any) -> list[AuditEvent]:
    changed = list(events)
    changed[index] = dataclasses.replace(events[index], **changes)
    return changed


def tampered_trails(events: list[AuditEvent]) -> dict[str, list[AuditEvent]]:
    # events: create, open, close, lock (failed), lock, unlock, open
    return {
        "destination changed": tamper(events, 2, destination="locked"),
        "source changed": tamper(events, 2, source="locked"),
        "invalid trigger staying put": tamper(events, 3, trigger="unlock"),
        "unknown trigger staying put": tamper(events, 3, trigger="fly"),
        "event removed": events[:1] + events[2:],
        "failed event removed": events[:3] + events[4:],
        "events swapped": [events[0], events[2], events[1], *events[3:]],
        "other flow": tamper(events, 4, flow_id="f2"),
        "creation elsewhere": [dataclasses.replace(events[0], destination="open")],
        "no creation event": events[1:],
        "empty trail": [],
    }


TAMPER_CASES = [
    "destination changed",
    "source changed",
    "invalid trigger staying put",
    "unknown trigger staying put",
    "event removed",
    "failed event removed",
    "events swapped",
    "other flow",
    "creation elsewhere",
    "no creation event",
    "empty trail",
]


@pytest.mark.parametrize("case", TAMPER_CASES)
def test_replay_rejects_tampered_trail(
    engine: Engine, definition: FlowDefinition, case: str
) -> None:
    fire_history(engine)
    events = engine.events("f1")
    assert replay(definition, events) == "open"

    trail = tampered_trails(events)[case]

    with pytest.raises(TransitionError):
        replay(definition, trail)


# --- secrets ---------------------------------------------------------------


def test_secret_details_are_redacted(engine: Engine) -> None:
    engine.create("f1")
    engine.fire("f1", "open")
    details = {
        **SECRETS,
        "nested": {"refresh_token": "rt-value-5d5d5d"},
        "attempts": [{"id_token": "idt-value-0a0a0a"}],
        "status": "kept",
    }

    event = engine.fire("f1", "close", details=details).event

    stored = event_texts(engine.events("f1"))
    for secret in [*SECRETS.values(), "rt-value-5d5d5d", "idt-value-0a0a0a"]:
        assert secret not in stored
        assert secret not in repr(event)
    assert event.details["status"] == "kept"
    assert event.details["access_token"] == "[secure]"
    assert event.details["nested"] == {"refresh_token": "[secure]"}
    assert event.details["attempts"] == [{"id_token": "[secure]"}]


def test_failed_event_details_are_redacted(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(TransitionError):
        engine.fire("f1", "open", details=SECRETS, fail_after_change=True)

    stored = event_texts(engine.events("f1"))
    for secret in SECRETS.values():
        assert secret not in stored


def test_secret_details_absent_from_sqlite_file(
    definition: FlowDefinition, tmp_path: Path
) -> None:
    path = tmp_path / "audit.db"
    engine = Engine(definition, make_registry(), SQLiteStore(path), FixedClock())
    engine.create("f1")
    engine.fire("f1", "open", details=SECRETS)

    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT details FROM audit_events").fetchall()

    text = json.dumps(rows)
    assert len(rows) == 2
    for secret in SECRETS.values():
        assert secret not in text


def test_fire_errors_do_not_show_inputs(engine: Engine) -> None:
    engine.create("f1")

    with pytest.raises(TransitionError) as caught:
        engine.fire("f1", "lock", key=SECRETS["code"])

    assert SECRETS["code"] not in str(caught.value)


# --- callbacks are bound through the registry only -------------------------


def test_machine_callbacks_are_callables(engine: Engine) -> None:
    machine = engine._machine
    rows = [
        row
        for event in machine.events.values()
        for rows_from in event.transitions.values()
        for row in rows_from
    ]

    assert len(rows) == 5
    for row in rows:
        for condition in row.conditions:
            assert callable(condition.func)
            assert not isinstance(condition.func, str)
        for callback in [*row.prepare, *row.before, *row.after]:
            assert callable(callback)
            assert not isinstance(callback, str)
    for hooks in [
        machine.prepare_event,
        machine.before_state_change,
        machine.after_state_change,
        machine.finalize_event,
        machine.on_exception,
    ]:
        assert list(hooks) == []
    for state in machine.states.values():
        assert list(state.on_enter) == []
        assert list(state.on_exit) == []


def test_machine_has_no_auto_transitions(engine: Engine) -> None:
    assert set(engine._machine.events) == {"open", "close", "lock", "unlock"}


def test_engine_rejects_unbound_names(definition: FlowDefinition) -> None:
    registry = Registry()
    registry.guard("not_jammed")(not_jammed)

    with pytest.raises(DefinitionError) as caught:
        Engine(definition, registry, MemoryStore(), FixedClock())

    assert caught.value.source == "door.yaml"
    assert caught.value.path == "transitions[0].actions"
    assert "count_opening" in caught.value.problem


def test_engine_calls_registered_guard(store: Store, clock: FixedClock) -> None:
    calls: list[str] = []
    registry = Registry()

    @registry.guard("system")
    def system(run: Run) -> bool:
        calls.append(run.flow_id)
        return True

    text = DOOR.split("transitions:")[0] + (
        "transitions:\n"
        "  - {trigger: open, source: closed, dest: open, conditions: [system]}\n"
        "  - {trigger: lock, source: open, dest: locked}\n"
        "  - {trigger: unlock, source: locked, dest: closed}\n"
    )
    definition = parse_definition(text, registry=registry)
    engine = Engine(definition, registry, store, clock)
    engine.create("f1")

    engine.fire("f1", "open")

    assert calls == ["f1"]
