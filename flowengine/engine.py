"""The engine: drives flow records through one shared `transitions` machine.

A record is loaded from the store, run through the machine on a scratch
model, and saved back with its audit event in one compare-and-set write. The
machine never keeps a flow registered, so its cost does not grow with the
number of flows.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

from transitions import EventData, Machine

from flowengine.definition import FlowDefinition, Registry
from flowengine.errors import (
    ConflictError,
    DefinitionError,
    FlowEngineError,
    InvalidTriggerError,
    TransitionError,
)
from flowengine.records import AuditEvent, FlowRecord
from flowengine.redaction import MASK, redact_mapping

logger = logging.getLogger(__name__)

CREATE_TRIGGER = "create"


class Clock(Protocol):
    """A source of the current time in POSIX seconds."""

    def now(self) -> float: ...


class Store(Protocol):
    """Persists flow records and their audit events.

    `commit` is a compare-and-set: it saves `record` only if the stored
    version is `record.version - 1`, and appends `event` in the same atomic
    write. A store raises ConflictError when the check fails.

    `delete` removes a flow's record and its audit events in one atomic
    write. With `expected_version` it is a compare-and-set too, and deletes
    nothing when the stored version differs. It raises FlowNotFoundError
    when the flow does not exist.
    """

    def create(self, record: FlowRecord, event: AuditEvent) -> None: ...

    def load(self, flow_id: str) -> FlowRecord: ...

    def commit(self, record: FlowRecord, event: AuditEvent) -> None: ...

    def events(self, flow_id: str) -> list[AuditEvent]: ...

    def flows(self) -> list[FlowRecord]: ...

    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None: ...


@dataclasses.dataclass
class Run:
    """The context of one fired trigger, passed to every guard and action.

    Guards read `inputs`, `data`, `now` and `context` (the engine's context
    object, such as the client configuration). Actions change `data`, may put
    a value in `result` for the caller, set `outcome` to an error code when
    the transition records a failure, and add redacted facts to `details`.
    """

    flow_id: str
    state: str
    data: dict[str, Any]
    inputs: Mapping[str, Any]
    now: float
    context: Any = None
    outcome: str = "ok"
    result: Any = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        # The data contains the state value, the PKCE verifier and tokens, and
        # `result` may be an authorization URL that carries the state value.
        result = None if self.result is None else MASK
        return (
            f"Run(flow_id={self.flow_id!r}, state={self.state!r}, "
            f"data={redact_mapping(self.data)!r}, "
            f"inputs={redact_mapping(self.inputs)!r}, now={self.now!r}, "
            f"outcome={self.outcome!r}, result={result!r}, "
            f"details={redact_mapping(self.details)!r})"
        )


@dataclasses.dataclass(frozen=True)
class FireResult:
    """The record after a transition, its audit event and the action result."""

    record: FlowRecord
    event: AuditEvent
    # An authorization URL with its state value, or a refresh lease id.
    result: Any = dataclasses.field(default=None, repr=False)


class Engine:
    """Fires triggers of one flow definition on flows kept in a store.

    Args:
        definition: the validated flow definition.
        registry: binds the definition's guard and action names.
        store: where records and audit events are kept.
        clock: the time source for timestamps, guards and actions.
        context: any object that guards and actions read as `run.context`.
    """

    def __init__(
        self,
        definition: FlowDefinition,
        registry: Registry,
        store: Store,
        clock: Clock,
        context: Any = None,
    ) -> None:
        self.definition = definition
        self.context = context
        self.registry = registry
        self.store = store
        self.clock = clock
        _check_bound(definition, registry)
        self._machine = _build_machine(definition, registry)
        self._valid = {
            state: definition.triggers_from(state) for state in definition.state_names
        }
        self._listeners: list[Callable[[AuditEvent], None]] = []

    def subscribe(self, listener: Callable[[AuditEvent], None]) -> None:
        """Call `listener` with each audit event this engine saves."""
        self._listeners.append(listener)

    def _notify(self, event: AuditEvent) -> None:
        for listener in self._listeners:
            listener(event)

    def valid_triggers(self, state: str) -> tuple[str, ...]:
        """Return the triggers that may be fired in `state`."""
        return self._valid[state]

    def create(
        self, flow_id: str | None = None, data: Mapping[str, Any] | None = None
    ) -> FlowRecord:
        """Create and store a new flow in the initial state.

        Raises:
            ConflictError: a flow with `flow_id` already exists.
        """
        now = self.clock.now()
        record = FlowRecord(
            id=flow_id or secrets.token_hex(16),
            definition=self.definition.name,
            state=self.definition.initial,
            version=0,
            created_at=now,
            updated_at=now,
            data=dict(data or {}),
        )
        event = AuditEvent(
            flow_id=record.id,
            sequence=0,
            time=_utc(now),
            trigger=CREATE_TRIGGER,
            source=None,
            destination=record.state,
            outcome="ok",
        )
        self.store.create(record, event)
        logger.info("flow %s: created in %s", record.id, record.state)
        self._notify(event)
        return record

    def load(self, flow_id: str) -> FlowRecord:
        """Return the stored record of `flow_id`.

        Raises:
            FlowNotFoundError: no such flow.
        """
        return self.store.load(flow_id)

    def fire(
        self,
        flow_id: str,
        trigger: str,
        *,
        expected_version: int | None = None,
        **inputs: Any,
    ) -> FireResult:
        """Fire `trigger` on the stored flow and save the outcome.

        Keyword arguments are the trigger's inputs, read by its guards and
        actions. On success the new record and a successful audit event are
        saved together. When a guard or action raises a FlowEngineError the
        record keeps its state and data, a failed audit event is saved, and
        the error is raised again.

        Args:
            flow_id: the flow to move.
            trigger: the trigger to fire.
            expected_version: when given, fire only if the stored flow still
                has this version; otherwise raise ConflictError and write
                nothing. Callers that decided to fire from a record they read
                earlier use it, so a lost race leaves no audit event.
            **inputs: the trigger's inputs.

        Raises:
            InvalidTriggerError: the trigger is not valid in the flow's state;
                nothing is written.
            TransitionError: no transition's guards accepted the inputs.
            ConflictError: another writer saved the flow first.
            FlowEngineError: whatever a guard or action raised.
        """
        record = self.store.load(flow_id)
        if expected_version is not None and record.version != expected_version:
            raise ConflictError(flow_id, expected_version)
        if trigger not in self._valid[record.state]:
            raise InvalidTriggerError(
                flow_id, record.state, trigger, self._valid[record.state]
            )

        run = Run(
            flow_id=flow_id,
            state=record.state,
            data=copy_data(record.data),
            inputs=inputs,
            now=self.clock.now(),
            context=self.context,
        )
        try:
            fired = self._machine.events[trigger].trigger(run)
            if not fired:
                raise TransitionError(
                    f"no transition of {trigger!r} from {record.state!r} on flow "
                    f"{flow_id} accepted its inputs"
                )
        except FlowEngineError as exc:
            self._save_failure(record, trigger, run, exc)
            raise

        return self._save(record, trigger, run)

    def record_failure(
        self, flow_id: str, trigger: str, error: FlowEngineError
    ) -> None:
        """Audit a failed attempt at `trigger` that never reached a guard.

        Used when the trigger's input could not even be parsed, such as a
        malformed callback URL. Nothing is written when the trigger is not
        valid in the flow's state.
        """
        record = self.store.load(flow_id)
        if trigger not in self._valid[record.state]:
            return
        run = Run(
            flow_id=flow_id,
            state=record.state,
            data={},
            inputs={},
            now=self.clock.now(),
            context=self.context,
        )
        self._save_failure(record, trigger, run, error)

    def events(self, flow_id: str) -> list[AuditEvent]:
        """Return the audit trail of `flow_id`, oldest first."""
        return self.store.events(flow_id)

    def replay(self, flow_id: str) -> str:
        """Return the state that the audit trail of `flow_id` leads to."""
        return replay(self.definition, self.store.events(flow_id))

    def _save(self, record: FlowRecord, trigger: str, run: Run) -> FireResult:
        new = record.next_version(run.state, run.data, run.now)
        event = self._event(
            new, trigger, record.state, run.outcome, run.details, run.now
        )
        self.store.commit(new, event)
        logger.info(
            "flow %s: %s %s -> %s (%s)",
            record.id,
            trigger,
            record.state,
            new.state,
            run.outcome,
        )
        self._notify(event)
        return FireResult(new, event, run.result)

    def _save_failure(
        self, record: FlowRecord, trigger: str, run: Run, error: FlowEngineError
    ) -> None:
        new = record.next_version(record.state, record.data, run.now)
        details = {**run.details, "error": type(error).__name__}
        event = self._event(new, trigger, record.state, error.code, details, run.now)
        try:
            self.store.commit(new, event)
        except ConflictError:
            # The flow moved on meanwhile; the caller still gets the original
            # error, and the winner's event explains the new state.
            logger.warning(
                "flow %s: failed %s not audited because the flow changed",
                record.id,
                trigger,
            )
            return
        logger.info(
            "flow %s: %s rejected in %s (%s)",
            record.id,
            trigger,
            record.state,
            error.code,
        )
        self._notify(event)

    @staticmethod
    def _event(
        record: FlowRecord,
        trigger: str,
        source: str,
        outcome: str,
        details: Mapping[str, Any],
        now: float,
    ) -> AuditEvent:
        return AuditEvent(
            flow_id=record.id,
            sequence=record.version,
            time=_utc(now),
            trigger=trigger,
            source=source,
            destination=record.state,
            outcome=outcome,
            details=redact_mapping(details),
        )


def replay(definition: FlowDefinition, events: Sequence[AuditEvent]) -> str:
    """Return the state that `events` lead to, checking each against the table.

    Raises:
        TransitionError: an event does not follow from the one before it, is
            out of sequence, belongs to another flow or is not a transition
            of the definition.
    """
    if not events or events[0].trigger != CREATE_TRIGGER:
        raise TransitionError("audit trail does not start with a creation event")
    state = events[0].destination
    if state != definition.initial:
        raise TransitionError(
            f"audit trail starts in {state!r}, not in the initial state "
            f"{definition.initial!r}"
        )
    for position, event in enumerate(events):
        _check_position(event, position, events[0].flow_id)
    for event in events[1:]:
        if event.source != state:
            raise TransitionError(
                f"audit event {event.sequence} starts in {event.source!r}, "
                f"but the trail before it ends in {state!r}"
            )
        # A failed attempt stays in its source state. Its trigger is still one
        # of that state's, because the engine audits no invalid trigger.
        allowed = {t.dest for t in definition.transitions_for(event.trigger, state)}
        stayed = event.destination == state
        if not allowed or not (stayed or event.destination in allowed):
            raise TransitionError(
                f"audit event {event.sequence}: {event.trigger!r} cannot lead "
                f"from {state!r} to {event.destination!r}"
            )
        state = event.destination
    return state


def _check_position(event: AuditEvent, position: int, flow_id: str) -> None:
    if event.sequence != position:
        raise TransitionError(
            f"audit event at position {position} has sequence {event.sequence}; "
            "an event is missing or out of order"
        )
    if event.flow_id != flow_id:
        raise TransitionError(
            f"audit event {event.sequence} belongs to flow {event.flow_id}, "
            f"not {flow_id}"
        )


def _check_bound(definition: FlowDefinition, registry: Registry) -> None:
    for index, spec in enumerate(definition.transitions):
        for key, names, known in (
            ("conditions", spec.conditions, registry.guards),
            ("actions", spec.actions, registry.actions),
        ):
            missing = [name for name in names if name not in known]
            if missing:
                raise DefinitionError(
                    definition.source,
                    f"transitions[{index}].{key}",
                    f"{', '.join(missing)} not in the registry",
                    "register them or load the definition with this registry",
                )


def _build_machine(definition: FlowDefinition, registry: Registry) -> Machine:
    # Callbacks are passed as callables, never as names: transitions resolves
    # an unknown name as a dotted import path.
    rows = [
        {
            "trigger": spec.trigger,
            "source": list(spec.sources),
            "dest": spec.dest,
            "conditions": [_adapt(registry.guards[name]) for name in spec.conditions],
            "before": [_adapt(registry.actions[name]) for name in spec.actions],
        }
        for spec in definition.transitions
    ]
    return Machine(
        model=None,
        states=list(definition.state_names),
        initial=definition.initial,
        transitions=rows,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
    )


def _adapt(func: Callable[[Run], Any]) -> Callable[[EventData], Any]:
    def call(event: EventData) -> Any:
        return func(cast(Run, event.model))

    call.__name__ = getattr(func, "__name__", "callback")
    return call


# Immutable JSON leaf types: copy_data shares them instead of copying.
_JSON_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})


def copy_data(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return a deep copy of a flow's data or an event's details.

    Dicts and lists are copied level by level and immutable JSON leaves are
    shared, which takes a fraction of the time of `copy.deepcopy`. Any other
    value goes through `copy.deepcopy`.
    """
    return {key: _copy_value(value) for key, value in data.items()}


def _copy_value(value: Any) -> Any:
    kind = type(value)
    if kind in _JSON_LEAF_TYPES:
        return value
    if kind is dict:
        return {key: _copy_value(item) for key, item in value.items()}
    if kind is list:
        return [_copy_value(item) for item in value]
    return copy.deepcopy(value)


def _utc(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
