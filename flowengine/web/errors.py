"""Error pages: every failure becomes a readable page, never a stack trace.

flowengine's errors map to HTTP statuses by whose fault they are. A bad
callback is a bad browser request (400). An action that the flow's state
does not allow is a conflict (409). A failing authorization server or
resource is a bad gateway (502). Other exceptions are logged with their
traceback and shown as a plain 500 page.
"""

from __future__ import annotations

import dataclasses
import logging

from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException

from flowengine.errors import (
    ConflictError,
    FlowEngineError,
    FlowNotFoundError,
    InvalidTriggerError,
    IssuerMismatchError,
    LocalError,
    OAuthError,
    ProtocolError,
    RemoteError,
    ResourceError,
    StateMismatchError,
    StoreUnavailableError,
    TokenExpiredError,
    TransitionError,
    TransportError,
)
from flowengine.web import browser_session

logger = logging.getLogger(__name__)

_START_AGAIN = "Use Get OAuth Token to start a new grant."


@dataclasses.dataclass(frozen=True)
class ErrorPage:
    """The contents of an error page.

    `error`, `error_description` and `error_uri` are the fields of an OAuth
    error response (RFC 6749 §4.1.2.1, §5.2), exactly as the server sent
    them. The template escapes them like every other value.
    """

    status: int
    title: str
    message: str
    hint: str = ""
    code: str = ""
    error: str | None = None
    error_description: str | None = None
    error_uri: str | None = None


# Checked in order, so a subclass comes before its base class.
_STATUS_AND_TITLE: tuple[tuple[type[FlowEngineError], int, str], ...] = (
    (
        StateMismatchError,
        400,
        "The callback does not match this session's authorization request",
    ),
    (
        IssuerMismatchError,
        400,
        "The callback came from an unexpected authorization server",
    ),
    (FlowNotFoundError, 400, "This session's flow no longer exists"),
    (InvalidTriggerError, 409, "This action is not possible in the flow's state"),
    (ConflictError, 409, "The flow changed while this request ran"),
    (TokenExpiredError, 409, "No usable access token"),
    (TransitionError, 409, "The flow rejected this step"),
    (TransportError, 502, "A server could not be reached"),
    (RemoteError, 502, "A server failed"),
    (LocalError, 500, "The client is misconfigured"),
    (FlowEngineError, 500, "The client failed"),
)


def describe_error(exc: FlowEngineError) -> ErrorPage:
    """Choose the status, title and texts of the page for `exc`."""
    if isinstance(exc, OAuthError) and isinstance(exc.__cause__, LocalError):
        return _unmatched_error_page(exc, exc.__cause__)
    if isinstance(exc, OAuthError):
        return _oauth_error_page(exc)
    if isinstance(exc, ProtocolError):
        return _protocol_error_page(exc)
    if isinstance(exc, ResourceError):
        return _resource_error_page(exc)
    if isinstance(exc, StoreUnavailableError):
        # The details (file path, database message) go to the log only.
        return ErrorPage(
            503,
            "The client's store is unavailable",
            "The client cannot read or save flows right now.",
            "Try again later; the operator finds the cause in the client's log.",
            exc.code,
        )
    for kind, status, title in _STATUS_AND_TITLE:
        if isinstance(exc, kind):
            return ErrorPage(status, title, str(exc), _hint(exc), exc.code)
    raise AssertionError("FlowEngineError is the last row of the table")


def _hint(exc: FlowEngineError) -> str:
    if isinstance(exc, TransportError):
        return "Check that the server is running, then try the action again."
    if isinstance(exc, InvalidTriggerError | ConflictError):
        return "Reload the client page to see the flow's state and its actions."
    if isinstance(exc, TransitionError | FlowNotFoundError | TokenExpiredError):
        return _START_AGAIN
    return ""


def _oauth_error_page(exc: OAuthError) -> ErrorPage:
    # access_denied is the user's own decision at the authorization server.
    if exc.error == "access_denied":
        status, title = 403, "Access was denied"
    else:
        status, title = 502, "The authorization server returned an error"
    return ErrorPage(
        status,
        title,
        "The authorization server returned an OAuth error.",
        _START_AGAIN,
        exc.code,
        error=exc.error,
        error_description=exc.error_description,
        error_uri=exc.error_uri,
    )


def _unmatched_error_page(exc: OAuthError, cause: LocalError) -> ErrorPage:
    # OAuthClient.handle_callback raises the callback's OAuth error from the
    # state check (or trigger check) that rejected it. Such an error response
    # may be forged, so its description is not shown as the server's words.
    page = describe_error(cause)
    message = (
        f"The callback carried the OAuth error {exc.error!r}, but it does not "
        f"belong to this session's authorization request, so the flow ignored "
        f"it. {cause}"
    )
    return dataclasses.replace(page, message=message)


def _protocol_error_page(exc: ProtocolError) -> ErrorPage:
    # A malformed callback (the browser's request) is the only ProtocolError
    # without an HTTP status, because parse_callback sets none.
    if exc.status is None:
        return ErrorPage(400, "The callback is malformed", str(exc), "", exc.code)
    return ErrorPage(
        502, "A server sent an invalid response", str(exc), _START_AGAIN, exc.code
    )


def _resource_error_page(exc: ResourceError) -> ErrorPage:
    status = 403 if exc.status == 403 else 502
    hint = ""
    if exc.scope:
        hint = f"The resource requires scope {exc.scope!r}; get a token with it."
    return ErrorPage(
        status,
        "The protected resource refused the request",
        str(exc),
        hint,
        exc.code,
        error=exc.error,
    )


def register_error_handlers(app: Flask) -> None:
    """Install the error pages on `app`.

    Flask picks the handler of the closest class, so flowengine's errors,
    HTTP errors (such as 404 or the CSRF 400) and anything else each get
    their own handler.
    """
    app.register_error_handler(LocalError, handle_flow_error)
    app.register_error_handler(RemoteError, handle_flow_error)
    app.register_error_handler(FlowEngineError, handle_flow_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)


def handle_flow_error(exc: FlowEngineError) -> tuple[str, int]:
    """Log a flowengine error without secrets and render its page."""
    page = describe_error(exc)
    level = logging.ERROR if page.status >= 500 else logging.WARNING
    # The message of a flowengine error contains no secret. %r keeps line
    # breaks of server-provided text out of the log line.
    logger.log(
        level,
        "%s %s for flow %s failed (HTTP %s): %s: %r",
        request.method,
        request.path,
        browser_session.flow_id(),
        page.status,
        type(exc).__name__,
        str(exc),
    )
    return render_error(page)


def handle_http_error(exc: HTTPException) -> tuple[str, int] | HTTPException:
    """Render an HTTP error (404, 405, the CSRF 400, …) as a page."""
    if exc.code is None:
        return exc
    page = ErrorPage(exc.code, exc.name, exc.description or "")
    return render_error(page)


def handle_unexpected_error(exc: Exception) -> tuple[str, int]:
    """Log an unexpected exception with its traceback and render a plain 500."""
    logger.error(
        "unexpected error in %s %s", request.method, request.path, exc_info=exc
    )
    page = ErrorPage(
        500,
        "Internal server error",
        "The client application failed unexpectedly, and the error was logged.",
        "Try again, or use Get OAuth Token to start a new grant.",
    )
    return render_error(page)


def render_error(page: ErrorPage) -> tuple[str, int]:
    """Render `page` with its HTTP status."""
    return render_template("error.html", page=page), page.status
