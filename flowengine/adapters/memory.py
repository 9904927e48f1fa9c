"""In-memory store: flows and audit trails in this process only."""

from __future__ import annotations

import threading

from flowengine.engine import copy_data
from flowengine.errors import ConflictError, FlowNotFoundError
from flowengine.records import AuditEvent, FlowRecord


class MemoryStore:
    """Keep flows in dictionaries, for tests, the REPL and single processes.

    Records and events are immutable and their data and details are copied
    on the way in and out, so a caller cannot change a stored flow except
    through `commit`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, FlowRecord] = {}
        self._events: dict[str, list[AuditEvent]] = {}

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        with self._lock:
            if record.id in self._records:
                raise ConflictError(record.id, -1)
            self._records[record.id] = _copy(record)
            self._events[record.id] = [_copy_event(event)]

    def load(self, flow_id: str) -> FlowRecord:
        with self._lock:
            record = self._records.get(flow_id)
        if record is None:
            raise FlowNotFoundError(flow_id)
        return _copy(record)

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        with self._lock:
            current = self._records.get(record.id)
            if current is None:
                raise FlowNotFoundError(record.id)
            if current.version != record.version - 1:
                raise ConflictError(record.id, record.version - 1)
            self._records[record.id] = _copy(record)
            self._events[record.id].append(_copy_event(event))

    def events(self, flow_id: str) -> list[AuditEvent]:
        with self._lock:
            if flow_id not in self._events:
                raise FlowNotFoundError(flow_id)
            return [_copy_event(e) for e in self._events[flow_id]]

    def flows(self) -> list[FlowRecord]:
        with self._lock:
            return [_copy(r) for r in self._records.values()]

    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None:
        """Remove the flow and its audit trail.

        Raises:
            FlowNotFoundError: no such flow.
            ConflictError: `expected_version` is given and differs from the
                stored version; nothing is removed.
        """
        with self._lock:
            current = self._records.get(flow_id)
            if current is None:
                raise FlowNotFoundError(flow_id)
            if expected_version is not None and current.version != expected_version:
                raise ConflictError(flow_id, expected_version)
            del self._records[flow_id]
            del self._events[flow_id]

    def close(self) -> None:
        """Release nothing: present so every store closes the same way."""


# The constructors are called directly: dataclasses.replace inspects every
# field on each call and took about twice as long, on each load and commit.


def _copy(record: FlowRecord) -> FlowRecord:
    return FlowRecord(
        id=record.id,
        definition=record.definition,
        state=record.state,
        version=record.version,
        created_at=record.created_at,
        updated_at=record.updated_at,
        data=copy_data(record.data),
    )


def _copy_event(event: AuditEvent) -> AuditEvent:
    return AuditEvent(
        flow_id=event.flow_id,
        sequence=event.sequence,
        time=event.time,
        trigger=event.trigger,
        source=event.source,
        destination=event.destination,
        outcome=event.outcome,
        details=copy_data(event.details),
    )
