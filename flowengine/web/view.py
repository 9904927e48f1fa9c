"""Values shown on the client page, built from a flow's status and audit trail.

Everything here comes from `FlowStatus` and `AuditEvent`, which contain no
secret, because the access token is already abbreviated and audit details
are already redacted. The templates escape every value except the state
diagram's SVG, which Graphviz draws from the flow definition alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from flowengine import diagram
from flowengine.client import FlowStatus
from flowengine.definition import FlowDefinition
from flowengine.errors import ProtocolError
from flowengine.oauth.protocol import ResourceResult
from flowengine.records import AuditEvent

logger = logging.getLogger(__name__)

# Messages of diagram failures already logged as warnings. Every page view
# draws the diagram, so a missing Graphviz is reported once, not per view.
_reported_diagram_errors: set[str] = set()


@dataclasses.dataclass(frozen=True)
class FlowView:
    """The flow panel of the page: state, token facts and the last error."""

    flow_id: str
    state: str
    valid_triggers: str
    access_token: str
    scope: str
    refresh_token: str
    expiry: str
    last_error: str


@dataclasses.dataclass(frozen=True)
class ActionView:
    """One button of the page and whether it can work in the current state.

    `unavailable` is empty when the action can run now. Otherwise it is the
    reason why it cannot, and the button is shown disabled.
    """

    label: str
    method: str
    path: str
    unavailable: str = ""


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One row of the audit trail table."""

    sequence: int
    time: str
    trigger: str
    transition: str
    outcome: str
    ok: bool
    details: str


@dataclasses.dataclass(frozen=True)
class ResourceView:
    """The protected resource's response, pretty printed when it is JSON."""

    status: int
    media_type: str
    text: str
    is_json: bool


@dataclasses.dataclass(frozen=True)
class DiagramView:
    """The state diagram with `state` marked, as SVG or as Mermaid text.

    `svg` is the inline `<svg>` element, or None when Graphviz could not draw
    it. Then `mermaid` contains the diagram's Mermaid text and `unavailable`
    the reason.
    """

    state: str
    svg: Markup | None
    mermaid: str = ""
    unavailable: str = ""


@dataclasses.dataclass(frozen=True)
class PageView:
    """Everything the main page shows."""

    flow: FlowView | None
    actions: tuple[ActionView, ...]
    audit: tuple[AuditRow, ...]
    resource: ResourceView | None = None
    diagram: DiagramView | None = None


def build_page(
    status: FlowStatus | None,
    events: Sequence[AuditEvent],
    now: float,
    resource: ResourceView | None = None,
    diagram: DiagramView | None = None,
) -> PageView:
    """Build the page's values from a flow's status (None when there is none)."""
    return PageView(
        flow=None if status is None else describe_flow(status, now),
        actions=describe_actions(status),
        audit=tuple(describe_event(event) for event in events),
        resource=resource,
        diagram=diagram,
    )


def describe_flow(status: FlowStatus, now: float) -> FlowView:
    """Turn a flow's status into the texts of the flow panel."""
    has_token = status.access_token is not None
    return FlowView(
        flow_id=status.flow_id,
        state=status.state,
        valid_triggers=", ".join(status.valid_triggers) or "none",
        access_token=status.access_token or "none",
        scope=(status.scope or "not stated by the server") if has_token else "none",
        refresh_token="held" if status.has_refresh_token else "not held",
        expiry=describe_expiry(status.expires_at, now) if has_token else "no token",
        last_error=status.last_error or "none",
    )


def describe_expiry(expires_at: float | None, now: float) -> str:
    """Describe when a token expires, in UTC and in seconds from `now`.

    A token without `expires_in` has an unknown lifetime, which is not the
    same as a token that never expires.
    """
    if expires_at is None:
        return "unknown lifetime"
    moment = datetime.datetime.fromtimestamp(expires_at, tz=datetime.UTC)
    stamp = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    seconds_left = math.floor(expires_at - now)
    if seconds_left >= 0:
        return f"{stamp} ({seconds_left} s left)"
    return f"{stamp} (expired {-seconds_left} s ago)"


def describe_actions(status: FlowStatus | None) -> tuple[ActionView, ...]:
    """List the page's actions, each with the reason it cannot run, if any.

    Getting a token always works: when the flow cannot start a grant in its
    state, the application gives the session a new flow.
    """
    has_token = status is not None and status.access_token is not None
    has_refresh = status is not None and status.has_refresh_token
    can_logout = status is not None and "logout" in status.valid_triggers
    return (
        ActionView("Get OAuth Token", "get", "/authorize"),
        ActionView(
            "Get Protected Resource",
            "post",
            "/fetch_resource",
            "" if has_token else "no access token is held",
        ),
        ActionView(
            "Refresh token",
            "post",
            "/refresh",
            "" if has_refresh else "no refresh token is held",
        ),
        ActionView(
            "Log out",
            "post",
            "/logout",
            "" if can_logout else "nothing to log out of",
        ),
    )


def describe_event(event: AuditEvent) -> AuditRow:
    """Turn one audit event into a table row."""
    source = event.source if event.source is not None else "(new)"
    return AuditRow(
        sequence=event.sequence,
        time=event.time,
        trigger=event.trigger,
        transition=f"{source} → {event.destination}",
        outcome=event.outcome,
        ok=event.ok,
        details=describe_details(event.details),
    )


def describe_details(details: Mapping[str, Any]) -> str:
    """Join an event's redacted details as `key=value` pairs."""
    return ", ".join(f"{key}={value}" for key, value in sorted(details.items()))


def describe_resource(result: ResourceResult) -> ResourceView:
    """Pretty print the resource's JSON body, or show its text if not JSON."""
    try:
        data = result.json()
    except ProtocolError:
        return ResourceView(result.status, result.media_type, result.text(), False)
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    return ResourceView(result.status, result.media_type, text, True)


def describe_diagram(definition: FlowDefinition, state: str) -> DiagramView:
    """Draw `definition` with `state` marked, as Mermaid text if SVG fails.

    The page stays usable without Graphviz, so a failed drawing is logged
    and shown as the reason next to the Mermaid text.
    """
    try:
        document = _cached_svg(definition, state)
    except diagram.DiagramError as exc:
        log_diagram_error(exc, "shown as Mermaid text")
        return DiagramView(
            state=state,
            svg=None,
            mermaid=diagram.mermaid(definition, state),
            unavailable=str(exc),
        )
    # Graphviz writes an XML declaration and a DOCTYPE before the <svg>
    # element, and neither may appear inside an HTML page. Markup() skips
    # escaping: Graphviz escapes every label, and the labels are names from
    # the flow definition, never values from a request or a server.
    element = document[document.index("<svg") :]
    return DiagramView(state=state, svg=Markup(element))  # noqa: S704


@functools.lru_cache(maxsize=64)
def _cached_svg(definition: FlowDefinition, state: str) -> str:
    # Running Graphviz takes 12-25 ms, most of a page view, and the picture
    # depends only on the definition and the state. Failures are not cached.
    return diagram.svg(definition, state)


def log_diagram_error(exc: diagram.DiagramError, consequence: str) -> None:
    """Log a failed drawing as a warning the first time, then at debug level."""
    message = str(exc)
    level = logging.DEBUG if message in _reported_diagram_errors else logging.WARNING
    _reported_diagram_errors.add(message)
    logger.log(level, "state diagram %s: %s", consequence, message)
