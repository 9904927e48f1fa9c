"""The client web application: the code grant from a browser, one flow per session.

The page shows the session's flow (state, abbreviated token, expiry, last
error, state diagram and audit trail) and offers the classic actions: get a
token, call the protected resource, refresh and log out. Each browser session
owns one flow, whose id travels in the signed session cookie; tokens stay in
the client's store and never reach the browser.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Flask, flash, redirect, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import abort
from werkzeug.wrappers import Response

from flowengine import diagram
from flowengine.client import FlowStatus, OAuthClient
from flowengine.errors import ConfigError, FlowNotFoundError
from flowengine.web import browser_session
from flowengine.web.errors import register_error_handlers
from flowengine.web.view import (
    ResourceView,
    build_page,
    describe_diagram,
    describe_resource,
    log_diagram_error,
)

logger = logging.getLogger(__name__)

# Forms of this application have a few short fields, so larger bodies are rejected.
MAX_FORM_BYTES = 64 * 1024

# No script runs on the page, and it loads only its own stylesheet.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

_NO_FLOW = (
    "This browser session has no flow yet, so there is nothing to act on. "
    "Use Get OAuth Token to start a grant."
)
_NO_PENDING_REQUEST = (
    "This browser session has no authorization request in progress, so the "
    "callback cannot be matched to one. Use Get OAuth Token to start a grant."
)


# Grants one session may have waiting for a callback at once, one per tab;
# starting more drops the oldest from the session.
MAX_PENDING_FLOWS = 5

# States in which the session's current flow starts the next grant itself.
_RESTARTABLE_STATES = frozenset({"unauthorized", "expired"})


def create_app(client: OAuthClient, *, secret_key: bytes | None = None) -> Flask:
    """Build the client web application around `client`.

    Args:
        client: runs the grants. Its store keeps every session's flow.
        secret_key: signs the session cookie. When None, a random key is
            made, so sessions end when the application restarts.

    Raises:
        ConfigError: `secret_key` is empty.
    """
    if secret_key is not None and not secret_key:
        raise ConfigError(
            "secret_key is empty; pass at least 32 random bytes, or None for a "
            "random key"
        )
    app = Flask(__name__)
    app.secret_key = secret_key if secret_key is not None else secrets.token_bytes(32)
    app.config.update(
        SESSION_COOKIE_NAME=browser_session.SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        MAX_CONTENT_LENGTH=MAX_FORM_BYTES,
    )
    app.jinja_env.trim_blocks = True
    app.jinja_env.lstrip_blocks = True
    app.session_interface = browser_session.SessionInterface()
    app.before_request(browser_session.check_csrf)
    app.after_request(add_security_headers)
    app.context_processor(_template_values)
    register_error_handlers(app)
    ClientPages(client).register(app)
    return app


def add_security_headers(response: Response) -> Response:
    """Forbid scripts, framing and referrers, and caching of pages.

    A page shows the flow's state and an abbreviated token, and a callback
    URL carries the authorization code, so neither is cached or sent on as
    a referrer.
    """
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    if response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response


def _template_values() -> dict[str, Any]:
    return {
        "csrf_token": browser_session.csrf_token,
        "csrf_field": browser_session.CSRF_FIELD,
    }


class ClientPages:
    """The routes of the application, bound to one OAuthClient."""

    def __init__(self, client: OAuthClient) -> None:
        self._client = client

    def register(self, app: Flask) -> None:
        """Add the routes to `app`."""
        app.add_url_rule("/", "index", self.index, methods=["GET"])
        app.add_url_rule(
            "/diagram.svg", "diagram_svg", self.diagram_svg, methods=["GET"]
        )
        app.add_url_rule("/authorize", "authorize", self.authorize, methods=["GET"])
        app.add_url_rule("/callback", "callback", self.callback, methods=["GET"])
        app.add_url_rule(
            "/fetch_resource",
            "fetch_resource",
            self.fetch_resource,
            methods=["POST"],
        )
        app.add_url_rule("/refresh", "refresh", self.refresh, methods=["POST"])
        app.add_url_rule("/logout", "logout", self.logout, methods=["POST"])

    # --- routes ------------------------------------------------------------

    def index(self) -> str:
        """Show the session's flow and the actions."""
        return self._render_index()

    def diagram_svg(self) -> Response:
        """Return the state diagram as SVG, with the session's flow state marked.

        Without a flow, the initial state is marked. Without Graphviz, the
        response is a 503 page that names the missing part.
        """
        status = self._session_status()
        definition = self._client.definition
        state = status.state if status is not None else definition.initial
        try:
            document = diagram.svg(definition, state)
        except diagram.DiagramError as exc:
            log_diagram_error(exc, "not sent as SVG")
            abort(503, description=str(exc))
        response = Response(document, mimetype="image/svg+xml")
        # The picture shows the flow's current state, which changes.
        response.headers["Cache-Control"] = "no-store"
        return response

    def authorize(self) -> ResponseReturnValue:
        """Start a grant and redirect the browser to the authorization URL."""
        flow_id = self._startable_flow()
        url = self._client.start(flow_id)
        browser_session.add_pending_flow(flow_id, MAX_PENDING_FLOWS)
        logger.info("flow %s: sending the browser to authorize", flow_id)
        return redirect(url, code=302)

    def callback(self) -> ResponseReturnValue:
        """Apply the authorization response, then exchange the code.

        The callback goes to the session's pending flow whose state value it
        carries, so grants started in two tabs each finish. Without a match
        it goes to the session's current flow, which rejects it and audits
        the attempt.
        """
        url = _request_url()
        pending = browser_session.pending_flow_ids()
        flow_id = self._client.find_flow_for_callback(pending, url)
        if flow_id is None:
            flow_id = _require_flow(_NO_PENDING_REQUEST)
        browser_session.set_flow_id(flow_id)
        browser_session.remove_pending_flow(flow_id)
        self._client.handle_callback(flow_id, url)
        logger.info("flow %s: access token received", flow_id)
        flash("Access token received.", "success")
        return redirect("/", code=302)

    def fetch_resource(self) -> str:
        """Call the protected resource and show what it returned."""
        flow_id = _require_flow(_NO_FLOW)
        result = self._client.fetch_resource(flow_id)
        logger.info("flow %s: resource returned HTTP %s", flow_id, result.status)
        return self._render_index(describe_resource(result))

    def refresh(self) -> ResponseReturnValue:
        """Refresh the access token now."""
        flow_id = _require_flow(_NO_FLOW)
        self._client.refresh(flow_id)
        logger.info("flow %s: access token refreshed", flow_id)
        flash("Access token refreshed.", "success")
        return redirect("/", code=302)

    def logout(self) -> ResponseReturnValue:
        """Drop the flow's tokens. The flow and its audit trail stay."""
        flow_id = _require_flow(_NO_FLOW)
        self._client.logout(flow_id)
        logger.info("flow %s: logged out", flow_id)
        flash("Logged out: the flow's tokens were dropped.", "success")
        return redirect("/", code=302)

    # --- helpers -----------------------------------------------------------

    def _render_index(self, resource: ResourceView | None = None) -> str:
        status = self._session_status()
        events = self._client.events(status.flow_id) if status is not None else []
        definition = self._client.definition
        state = status.state if status is not None else definition.initial
        page = build_page(
            status,
            events,
            self._client.clock.now(),
            resource,
            describe_diagram(definition, state),
        )
        return render_template("index.html", page=page)

    def _session_status(self) -> FlowStatus | None:
        flow_id = browser_session.flow_id()
        if flow_id is None:
            return None
        try:
            return self._client.status(flow_id)
        except FlowNotFoundError:
            logger.warning("flow %s of a session is not in the store", flow_id)
            browser_session.forget_flow()
            return None

    def _startable_flow(self) -> str:
        """Return the session's flow if it can start a grant, else a new flow.

        A flow that has a token cannot start a grant, and one that awaits
        a callback may belong to another tab of the same browser, so both
        get a new flow. The old flow keeps its tokens and audit trail.
        """
        flow_id = browser_session.flow_id()
        if flow_id is not None and self._can_start(flow_id):
            return flow_id
        new_id = self._client.create_flow()
        browser_session.set_flow_id(new_id)
        if flow_id is not None:
            logger.info("flow %s: replaced by new flow %s", flow_id, new_id)
        return new_id

    def _can_start(self, flow_id: str) -> bool:
        try:
            status = self._client.status(flow_id)
        except FlowNotFoundError:
            return False
        return status.state in _RESTARTABLE_STATES


def _require_flow(explanation: str) -> str:
    flow_id = browser_session.flow_id()
    if flow_id is None:
        abort(400, description=explanation)
    return flow_id


def _request_url() -> str:
    # The raw query string, not request.url: Werkzeug turns request.url into
    # an IRI by decoding escapes, which could change the parameter values.
    query = request.query_string.decode("utf-8", errors="replace")
    return f"{request.base_url}?{query}" if query else request.base_url
