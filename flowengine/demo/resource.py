"""Demo protected resource that accepts bearer access tokens (RFC 6750).

`POST /resource` returns a small JSON document to requests with a valid
access token from the demo authorization server. Every rejection carries a
`WWW-Authenticate: Bearer` challenge, with an error code unless the request
sent no credentials at all (RFC 6750 §3.1).
"""

from __future__ import annotations

import logging
import re

from flask import Flask, Request, jsonify, make_response, render_template, request
from werkzeug.wrappers import Response

from flowengine.demo.authserver import (
    NO_STORE_HEADERS,
    REALM,
    DemoSettings,
    add_html_security_headers,
)
from flowengine.demo.store import AccessToken, DemoDatabase

logger = logging.getLogger(__name__)

# RFC 6750 §2.1 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class _BearerError(Exception):
    """A rejected resource request; `error` is None when no token was sent."""

    def __init__(self, status: int, error: str | None, description: str) -> None:
        super().__init__(f"{error or 'no token'}: {description}")
        self.status = status
        self.error = error
        self.description = description


def _bearer_token(req: Request) -> str:
    """Return the access token of the Authorization header, or raise _BearerError.

    Tokens in the query string or form body (RFC 6750 §2.2, §2.3) are
    rejected, because they leak into logs and browser history.
    """
    if "access_token" in req.args or "access_token" in req.form:
        raise _BearerError(
            400,
            "invalid_request",
            "access tokens in the query string or body are not accepted; "
            "send an Authorization: Bearer header",
        )
    header = req.headers.get("Authorization")
    if header is None:
        raise _BearerError(401, None, "no Authorization header")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _BearerError(401, None, "the Authorization header is not Bearer")
    token = value.strip()
    if not _B64TOKEN.fullmatch(token):
        raise _BearerError(
            400, "invalid_request", "the Authorization header has a malformed token"
        )
    return token


def _challenge_response(exc: _BearerError) -> Response:
    challenge = f'Bearer realm="{REALM}"'
    if exc.error is None:
        response = make_response("", exc.status)
    else:
        challenge += f', error="{exc.error}", error_description="{exc.description}"'
        body = {"error": exc.error, "error_description": exc.description}
        response = jsonify(body)
        response.status_code = exc.status
    response.headers["WWW-Authenticate"] = challenge
    response.headers.update(NO_STORE_HEADERS)
    return response


class _ResourceServer:
    """The view functions of the resource server, bound to the database."""

    def __init__(self, settings: DemoSettings, db: DemoDatabase) -> None:
        self.settings = settings
        self.db = db

    def resource(self) -> Response:
        try:
            record = self._valid_access_token(_bearer_token(request))
        except _BearerError as exc:
            self.db.count_resource_request(exc.error or "no_token")
            logger.info("resource request rejected with %s: %s", exc.status, exc)
            return _challenge_response(exc)
        self.db.count_resource_request("ok")
        logger.info("resource served to grant %s", record.grant.grant_id)
        body = {
            "name": "Protected Resource",
            "description": "This data is served only with a valid access token.",
            "scope": " ".join(record.scope),
        }
        response = jsonify(body)
        response.headers.update(NO_STORE_HEADERS)
        return response

    def _valid_access_token(self, token: str) -> AccessToken:
        record = self.db.get_access_token(token)
        if record is None:
            raise _BearerError(
                401, "invalid_token", "the access token is unknown or revoked"
            )
        if self.db.now() >= record.expires_at:
            raise _BearerError(401, "invalid_token", "the access token expired")
        return record

    def index(self) -> Response:
        html = render_template(
            "resource_index.html",
            server_name="protected resource",
            settings=self.settings,
        )
        return make_response(html, 200)


def create_resource_server(settings: DemoSettings, db: DemoDatabase) -> Flask:
    """Build the demo protected resource as a Flask application.

    Args:
        settings: the demo settings; the resource shows the issuer it trusts.
        db: the store shared with the demo authorization server, in which
            access tokens are looked up.

    Returns:
        the WSGI application.
    """
    app = Flask(__name__)
    server = _ResourceServer(settings, db)
    app.add_url_rule("/", "index", server.index)
    app.add_url_rule("/resource", "resource", server.resource, methods=["POST"])
    app.after_request(add_html_security_headers)
    return app
