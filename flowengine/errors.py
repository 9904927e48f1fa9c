"""Exception hierarchy of flowengine.

Two families keep fault apart: a `LocalError` means the caller misused the
library or its configuration, a `RemoteError` means the authorization server,
the resource or the network misbehaved. Every error has a short machine
readable `code`, which the audit trail records as the outcome of a failed
transition. No message ever contains a secret value.
"""

from __future__ import annotations

from collections.abc import Sequence


class FlowEngineError(Exception):
    """Base class of every error raised by flowengine."""

    code = "error"


# --- caller misuse ---------------------------------------------------------


class LocalError(FlowEngineError):
    """The caller or its configuration did something the library rejects."""

    code = "local_error"


class DefinitionError(LocalError):
    """A flow definition file is invalid.

    The message names the file, the key path inside it and the fix.
    """

    code = "invalid_definition"

    def __init__(self, source: str, path: str, problem: str, fix: str) -> None:
        self.source = source
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"{source}: at {path}: {problem}. Fix: {fix}")


class ConfigError(LocalError):
    """The client configuration is missing a value or contains an invalid one."""

    code = "invalid_config"


class FlowNotFoundError(LocalError):
    """No stored flow has the requested id."""

    code = "flow_not_found"

    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id
        super().__init__(
            f"flow {flow_id!r} not found in the store; create it first or check the id"
        )


class InvalidTriggerError(LocalError):
    """A trigger was fired in a state where the definition does not allow it."""

    code = "invalid_trigger"

    def __init__(
        self, flow_id: str, state: str, trigger: str, valid: Sequence[str]
    ) -> None:
        self.flow_id = flow_id
        self.state = state
        self.trigger = trigger
        self.valid_triggers = tuple(valid)
        allowed = ", ".join(self.valid_triggers) or "none"
        super().__init__(
            f"cannot fire {trigger!r} on flow {flow_id} in state {state!r}; "
            f"valid triggers there: {allowed}"
        )


class ConflictError(LocalError):
    """Another writer changed the flow between this caller's load and save.

    Re-read the flow and decide again; the losing write changed nothing.
    """

    code = "conflict"

    def __init__(self, flow_id: str, expected_version: int) -> None:
        self.flow_id = flow_id
        self.expected_version = expected_version
        super().__init__(
            f"flow {flow_id} changed since version {expected_version} was read; "
            "reload it and retry"
        )


class TransitionError(LocalError):
    """A guard or an action rejected a transition that is valid in the state.

    The flow keeps its state and data; the audit trail records the attempt.
    """

    code = "transition_rejected"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message)


class StateMismatchError(TransitionError):
    """The `state` parameter of a callback is missing, wrong, reused or expired.

    This is the CSRF defence of RFC 6749 §10.12: the callback is not applied.
    """

    code = "state_mismatch"


class IssuerMismatchError(TransitionError):
    """The callback's `iss` is not the issuer the request was sent to.

    RFC 9207 §2.4: the response may come from another authorization server
    (a mix-up attack), so it is not applied.
    """

    code = "issuer_mismatch"


class TokenExpiredError(LocalError):
    """The flow has no access token that is usable now."""

    code = "token_expired"


# --- remote misbehaviour ---------------------------------------------------


class RemoteError(FlowEngineError):
    """The authorization server, the resource or the network failed."""

    code = "remote_error"


class TransportError(RemoteError):
    """An HTTP exchange failed before a complete response arrived.

    Connection refused, a timeout and a reset connection all land here. The
    request may be retried; nothing stored was changed by it.
    """

    code = "transport_error"

    def __init__(self, message: str, *, url: str) -> None:
        self.url = url
        super().__init__(message)


class ProtocolError(RemoteError):
    """A response does not follow the protocol: wrong status, type or body.

    `status` is the HTTP status and `excerpt` a short, redacted start of the
    body, to help find the cause without dumping a whole page.
    """

    code = "protocol_error"

    def __init__(
        self, message: str, *, status: int | None = None, excerpt: str = ""
    ) -> None:
        self.status = status
        self.excerpt = excerpt
        detail = f" (HTTP {status})" if status is not None else ""
        tail = f": {excerpt!r}" if excerpt else ""
        super().__init__(f"{message}{detail}{tail}")


class StoreUnavailableError(RemoteError):
    """A store cannot be reached, is locked, or is damaged.

    The message names the SQLite file or the server's host and port, never
    a password. The flow may or may not have changed, so reload it once the
    store is back.
    """

    code = "store_unavailable"


class RefreshTimeoutError(RemoteError):
    """Another caller held the refresh lease for longer than this one waits.

    The flow is unchanged; retry later. When the other caller died, its
    lease runs out and the next attempt takes the refresh over.
    """

    code = "refresh_wait_timeout"


class OAuthError(RemoteError):
    """An OAuth error response (RFC 6749 §4.1.2.1 and §5.2).

    Carries `error`, `error_description` and `error_uri` from the server.
    The description is the server's text with any secret parameter it
    echoes masked; show it escaped.
    """

    def __init__(
        self,
        error: str,
        description: str | None = None,
        uri: str | None = None,
        *,
        status: int | None = None,
    ) -> None:
        self.error = error
        self.error_description = description
        self.error_uri = uri
        self.status = status
        message = f"authorization server returned error {error!r}"
        if description:
            message += f": {description}"
        super().__init__(message)

    @property
    def code(self) -> str:  # type: ignore[override]
        return self.error


class ResourceError(RemoteError):
    """The protected resource rejected the request or failed.

    `error` and `scope` come from the `WWW-Authenticate` challenge when the
    resource sent one (RFC 6750 §3); `scope` names the scope it requires.
    """

    code = "resource_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error: str | None = None,
        scope: str | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.scope = scope
        super().__init__(message)
