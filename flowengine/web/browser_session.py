"""The browser session: which flow it owns, its CSRF token and its cookie.

Flask keeps the session in a cookie signed with the application's secret
key, so a browser can read its own flow id and CSRF token but cannot forge
another session's. The flow id selects the flow, and the tokens themselves
stay in the client's store.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from flask import Flask, abort, request, session
from flask.sessions import SecureCookieSessionInterface

logger = logging.getLogger(__name__)

SESSION_COOKIE_NAME = "flowengine_client_session"
CSRF_FIELD = "csrf_token"

_FLOW_KEY = "flow_id"
_PENDING_KEY = "pending_flow_ids"
_CSRF_KEY = "csrf_token"
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SessionInterface(SecureCookieSessionInterface):
    """Signed cookie sessions whose cookie is Secure whenever the request is.

    Flask marks the cookie Secure only when SESSION_COOKIE_SECURE is set. This
    interface also marks it Secure when the request came over https, so one
    application serves both plain loopback http and https.
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def flow_id() -> str | None:
    """Return the id of the session's flow, or None when it has none."""
    value = session.get(_FLOW_KEY)
    return value if isinstance(value, str) and value else None


def set_flow_id(value: str) -> None:
    """Make `value` the session's flow."""
    session[_FLOW_KEY] = value


def pending_flow_ids() -> list[str]:
    """Return the flows this session started that may still await a callback."""
    value = session.get(_PENDING_KEY)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def add_pending_flow(value: str, limit: int) -> None:
    """Remember `value` as awaiting a callback, keeping the newest `limit`."""
    pending = [item for item in pending_flow_ids() if item != value]
    pending.append(value)
    dropped = pending[:-limit]
    if dropped:
        logger.info("session drops pending flows %s over the cap", ", ".join(dropped))
    session[_PENDING_KEY] = pending[-limit:]


def remove_pending_flow(value: str) -> None:
    """Forget `value` as awaiting a callback."""
    session[_PENDING_KEY] = [item for item in pending_flow_ids() if item != value]


def forget_flow() -> None:
    """Drop the session's flow id, for a flow that is gone from the store."""
    session.pop(_FLOW_KEY, None)


def csrf_token() -> str:
    """Return the session's CSRF token, creating it on first use."""
    token = session.get(_CSRF_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[_CSRF_KEY] = token
    return token


def check_csrf() -> None:
    """Reject a state-changing request whose form lacks the session's CSRF token.

    Runs before every request. The comparison takes constant time.

    Raises:
        BadRequest: (HTTP 400) the token is missing or does not match.
    """
    if request.method not in _UNSAFE_METHODS:
        return
    expected = session.get(_CSRF_KEY)
    submitted = request.form.get(CSRF_FIELD, "")
    if (
        isinstance(expected, str)
        and expected
        and submitted
        and hmac.compare_digest(expected.encode(), submitted.encode())
    ):
        return
    logger.warning(
        "rejected %s %s: CSRF token missing or wrong", request.method, request.path
    )
    abort(
        400,
        description=(
            "The form's CSRF token is missing or does not match this browser "
            "session, so the action was not carried out. Reload the page and "
            "submit the form again."
        ),
    )
