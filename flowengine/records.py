"""Flow records and audit events: the two things a store persists.

A flow is one immutable record. A transition produces a new record and one
audit event, and a store writes both in one atomic operation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from flowengine.redaction import redact_mapping


@dataclasses.dataclass(frozen=True, slots=True)
class FlowRecord:
    """One flow of a definition, as saved and loaded by a store.

    `version` starts at 0 and grows by one with each saved transition;
    stores use it for compare-and-set. Times are POSIX seconds from the
    engine's clock. `data` contains JSON values only.
    """

    id: str
    definition: str
    state: str
    version: int
    created_at: float
    updated_at: float
    data: Mapping[str, Any]

    def __repr__(self) -> str:
        return (
            f"FlowRecord(id={self.id!r}, definition={self.definition!r}, "
            f"state={self.state!r}, version={self.version}, "
            f"data={redact_mapping(self.data)!r})"
        )

    def next_version(
        self, state: str, data: Mapping[str, Any], updated_at: float
    ) -> FlowRecord:
        """Return the record that one saved transition makes of this one."""
        # The constructor is called directly because this runs on every
        # transition, and dataclasses.replace inspects every field each time.
        return FlowRecord(
            id=self.id,
            definition=self.definition,
            state=state,
            version=self.version + 1,
            created_at=self.created_at,
            updated_at=updated_at,
            data=data,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready values, secrets included."""
        return {
            "id": self.id,
            "definition": self.definition,
            "state": self.state,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FlowRecord:
        """Build a record from the output of `to_dict`."""
        return cls(
            id=str(raw["id"]),
            definition=str(raw["definition"]),
            state=str(raw["state"]),
            version=int(raw["version"]),
            created_at=float(raw["created_at"]),
            updated_at=float(raw["updated_at"]),
            data=dict(raw["data"]),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class AuditEvent:
    """One fired trigger of one flow, successful or not.

    `sequence` counts the flow's events from 0 (the creation event).
    `time` is an ISO 8601 UTC timestamp. `outcome` is "ok" or the error code
    of the failure. `source` is None only for the creation event. `details`
    contains redacted, JSON-ready facts about the transition.
    """

    flow_id: str
    sequence: int
    time: str
    trigger: str
    source: str | None
    destination: str
    outcome: str
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as JSON-ready values."""
        return {
            "flow_id": self.flow_id,
            "sequence": self.sequence,
            "time": self.time,
            "trigger": self.trigger,
            "source": self.source,
            "destination": self.destination,
            "outcome": self.outcome,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> AuditEvent:
        """Build an event from the output of `to_dict`."""
        return cls(
            flow_id=str(raw["flow_id"]),
            sequence=int(raw["sequence"]),
            time=str(raw["time"]),
            trigger=str(raw["trigger"]),
            source=None if raw["source"] is None else str(raw["source"]),
            destination=str(raw["destination"]),
            outcome=str(raw["outcome"]),
            details=dict(raw.get("details") or {}),
        )
