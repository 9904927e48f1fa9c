"""A handle on one stored flow, for use from the Python REPL and scripts.

`Flow` binds an `OAuthClient` to a flow id so that each step of the grant is
one short call, and its repr shows the flow's state and valid triggers::

    >>> flow = Flow.create(client, "demo")
    >>> flow
    Flow(id='demo', state='unauthorized', valid_triggers=('start',))

The handle keeps no state of its own: every property and method reads or
writes the flow through the client's store, so two handles on the same id, or
another process, always see the same flow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowengine.client import FlowStatus, OAuthClient
from flowengine.engine import FireResult
from flowengine.errors import LocalError
from flowengine.oauth.protocol import ResourceResult
from flowengine.records import AuditEvent, FlowRecord


@dataclasses.dataclass(frozen=True, repr=False)
class Flow:
    """One stored flow of `client`, addressed by `flow_id`.

    Handles compare equal when they name the same flow of the same client.
    Use `open_flow` to check that the flow exists, or `Flow.create` to
    create one.
    """

    client: OAuthClient
    flow_id: str

    @classmethod
    def create(cls, client: OAuthClient, flow_id: str | None = None) -> Flow:
        """Create a flow in the initial state and return its handle.

        Raises:
            ConflictError: a flow with `flow_id` already exists.
        """
        return cls(client, client.create_flow(flow_id))

    @property
    def state(self) -> str:
        """The flow's current state, read from the store."""
        return self.client.engine.load(self.flow_id).state

    @property
    def valid_triggers(self) -> tuple[str, ...]:
        """The triggers the definition allows in the flow's current state."""
        return self.client.engine.valid_triggers(self.state)

    def status(self) -> FlowStatus:
        """Return what may be shown of the flow: no secret, the token abbreviated."""
        return self.client.status(self.flow_id)

    def events(self) -> list[AuditEvent]:
        """Return the flow's audit trail, oldest first."""
        return self.client.events(self.flow_id)

    def fire(self, trigger: str, **inputs: Any) -> FireResult:
        """Fire `trigger` on the flow through the engine, with `inputs`.

        This is the raw step: no HTTP request is sent. Use `start`,
        `callback`, `fetch` and `refresh` to run the grant's steps with I/O.

        Raises:
            InvalidTriggerError: the trigger is not valid in the flow's state.
            TransitionError: a guard rejected the inputs.
            ConflictError: another writer changed the flow first.
        """
        return self.client.engine.fire(self.flow_id, trigger, **inputs)

    def start(self, scope: str | None = None) -> str:
        """Begin a grant and return the authorization URL to open.

        The URL carries the request's `state` value, so show it only to the
        user who opens it. Each call makes a new state value and PKCE
        verifier (RFC 6749 §4.1.1, RFC 7636 §4.3).

        Raises:
            InvalidTriggerError: the flow cannot start a grant in its state,
                such as token_held; log out first.
        """
        return self.client.start(self.flow_id, scope=scope)

    def callback(self, url: str) -> FlowRecord:
        """Apply the redirect URL the browser landed on, then exchange the code.

        Raises:
            StateMismatchError: the URL's state is missing, wrong or used.
            OAuthError: the server returned an error, such as access_denied.
            ProtocolError, TransportError: as `OAuthClient.handle_callback`.
        """
        return self.client.handle_callback(self.flow_id, url)

    def exchange(self) -> FlowRecord:
        """Exchange the received code for tokens (RFC 6749 §4.1.3).

        Needed only after a failed exchange or a `receive_code` fired by hand,
        because `callback` already exchanges the code.

        Raises:
            InvalidTriggerError: the flow is not in code_received.
            OAuthError, ProtocolError, TransportError: as
                `OAuthClient.exchange_code`.
        """
        return self.client.exchange_code(self.flow_id)

    def fetch(self) -> ResourceResult:
        """Call the protected resource, refreshing the token once if needed.

        Raises:
            TokenExpiredError: no usable token and no refresh possible.
            ResourceError, TransportError: as `OAuthClient.fetch_resource`.
        """
        return self.client.fetch_resource(self.flow_id)

    def refresh(self) -> FlowRecord:
        """Refresh the access token now (RFC 6749 §6).

        Raises:
            TokenExpiredError: the flow has no refresh token.
            OAuthError, ProtocolError, TransportError: as
                `OAuthClient.refresh`.
        """
        return self.client.refresh(self.flow_id)

    def logout(self) -> FlowRecord:
        """Drop the flow's tokens and pending values."""
        return self.client.logout(self.flow_id)

    def diagram(self) -> str:
        """Return a Mermaid state diagram with the flow's current state marked."""
        # Imported here because the diagram module loads the graph support of
        # `transitions`, which plain use of a flow never needs.
        from flowengine.diagram import mermaid

        return mermaid(self.client.definition, self.state)

    def __repr__(self) -> str:
        # A repr must not raise, because the REPL calls it to echo a value, so
        # a failed read (such as a deleted flow) is shown in place of the state.
        try:
            state = self.state
            valid = self.client.engine.valid_triggers(state)
        except Exception as exc:
            problem = type(exc).__name__
            return f"Flow(id={self.flow_id!r}, state=<unreadable: {problem}>)"
        return f"Flow(id={self.flow_id!r}, state={state!r}, valid_triggers={valid!r})"


def open_flow(client: OAuthClient, flow_id: str) -> Flow:
    """Return a handle on the stored flow `flow_id` of `client`.

    Raises:
        FlowNotFoundError: the store has no flow with that id.
        LocalError: the flow belongs to another flow definition than the
            client's, so the client cannot drive it.
    """
    record = client.engine.load(flow_id)
    expected = client.definition.name
    if record.definition != expected:
        raise LocalError(
            f"flow {flow_id} belongs to the {record.definition!r} definition, not "
            f"to {expected!r}; open it with a client of that definition"
        )
    return Flow(client, flow_id)
