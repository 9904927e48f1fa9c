"""Table rows of flow records and audit events, shared by the SQL stores.

SQLite and PostgreSQL keep the same columns in the same order. Data and
details travel as JSON text; a driver that decodes JSON columns itself
(psycopg for JSONB) hands back mappings, which are used as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from flowengine.records import AuditEvent, FlowRecord

FLOW_COLUMNS = (
    "id",
    "definition",
    "state",
    "version",
    "created_at",
    "updated_at",
    "data",
)
EVENT_COLUMNS = (
    "flow_id",
    "sequence",
    "time",
    "trigger",
    "source",
    "destination",
    "outcome",
    "details",
)


def flow_row(record: FlowRecord) -> tuple[object, ...]:
    """Return the values of FLOW_COLUMNS for `record`."""
    return (
        record.id,
        record.definition,
        record.state,
        record.version,
        record.created_at,
        record.updated_at,
        json.dumps(dict(record.data)),
    )


def record_from_row(row: Sequence[Any]) -> FlowRecord:
    """Build a record from the values of FLOW_COLUMNS.

    Raises:
        ValueError: a value cannot be converted, or the data is not JSON.
    """
    flow_id, definition, state, version, created, updated, data = row
    return FlowRecord(
        id=str(flow_id),
        definition=str(definition),
        state=str(state),
        version=int(version),
        created_at=float(created),
        updated_at=float(updated),
        data=_json_object(data),
    )


def event_row(event: AuditEvent) -> tuple[object, ...]:
    """Return the values of EVENT_COLUMNS for `event`."""
    return (
        event.flow_id,
        event.sequence,
        event.time,
        event.trigger,
        event.source,
        event.destination,
        event.outcome,
        json.dumps(dict(event.details)),
    )


def event_from_row(row: Sequence[Any]) -> AuditEvent:
    """Build an event from the values of EVENT_COLUMNS.

    Raises:
        ValueError: a value cannot be converted, or the details are not JSON.
    """
    flow_id, sequence, time, trigger, source, destination, outcome, details = row
    return AuditEvent(
        flow_id=str(flow_id),
        sequence=int(sequence),
        time=str(time),
        trigger=str(trigger),
        source=None if source is None else str(source),
        destination=str(destination),
        outcome=str(outcome),
        details=_json_object(details),
    )


def _json_object(value: Any) -> dict[str, Any]:
    decoded = value if isinstance(value, Mapping) else json.loads(str(value))
    if not isinstance(decoded, Mapping):
        raise ValueError(f"expected a JSON object, found {type(decoded).__name__}")
    return dict(decoded)
