"""Demo OAuth 2.0 authorization server for the authorization code grant.

It serves the endpoints and approval form of the classic teaching server:
`/authorize`, `/approve` and `/token`. It also does what that server left
out. It matches `redirect_uri` exactly, requires PKCE with S256 (RFC 7636),
echoes `state` on error redirects and sends `iss` in authorization responses
(RFC 9207). It rotates refresh tokens with reuse detection and serves
revocation (RFC 7009) and metadata (RFC 8414). It has exactly one registered
client, described by `DemoSettings`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify, make_response, redirect, render_template, request
from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Response

from flowengine.demo.store import DemoDatabase, Grant, PendingRequest

logger = logging.getLogger(__name__)

REALM = "flowengine-demo"
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# RFC 7636 §4.1: 43 to 128 unreserved characters.
_CODE_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# An S256 challenge is base64url of 32 bytes without padding.
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_\-]{43}")
# RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

# A grant type's handler takes the authenticated client id and the form.
_GrantHandler = Callable[[str, MultiDict[str, str]], Response]

_AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
)

_TOKEN_PARAMS = (
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "scope",
    "client_id",
    "client_secret",
    "token",
    "token_type_hint",
)


@dataclass(frozen=True)
class DemoSettings:
    """Configuration of the demo servers and of their one registered client.

    The flags at the end make the server behave like sloppier real servers,
    so the client can be tested against them.

    Attributes:
        issuer: the issuer identifier. Endpoint URLs in the metadata start
            with it.
        access_token_lifetime: seconds an access token is valid.
        refresh_token_lifetime: seconds a refresh token is valid, or None
            for no expiry.
        code_lifetime: seconds an authorization code is valid.
        send_expires_in: whether token responses contain `expires_in`.
        issue_refresh_tokens: whether the server issues refresh tokens and
            supports the refresh_token grant.
        state_on_error: whether error redirects echo `state`.
        send_iss: whether authorization responses contain `iss` (RFC 9207).
        require_pkce: whether authorization requests without a
            `code_challenge` are rejected.
    """

    issuer: str = "http://localhost:9001"
    client_id: str = "oauth-client-1"
    client_secret: str = dataclasses.field(default="oauth-client-secret-1", repr=False)
    redirect_uris: tuple[str, ...] = ("http://localhost:9000/callback",)
    scopes: tuple[str, ...] = ("foo", "bar")
    access_token_lifetime: int = 3600
    refresh_token_lifetime: int | None = None
    code_lifetime: int = 60
    send_expires_in: bool = True
    issue_refresh_tokens: bool = True
    state_on_error: bool = True
    send_iss: bool = True
    require_pkce: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))
        object.__setattr__(self, "scopes", tuple(self.scopes))
        _validate_settings(self)

    def endpoint(self, path: str) -> str:
        """Return the absolute URL of `path` under the issuer."""
        return self.issuer.rstrip("/") + path


def _validate_settings(settings: DemoSettings) -> None:
    _check_url("issuer", settings.issuer)
    if not settings.client_id:
        raise ValueError("DemoSettings.client_id is empty; set a client id")
    if not settings.client_secret:
        raise ValueError("DemoSettings.client_secret is empty; set a secret")
    if not settings.redirect_uris:
        raise ValueError("DemoSettings.redirect_uris is empty; register one URI")
    for uri in settings.redirect_uris:
        _check_url("redirect_uris", uri)
    for scope in settings.scopes:
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ValueError(
                f"DemoSettings.scopes contains the invalid scope token {scope!r}; "
                "use printable ASCII without spaces, quotes or backslashes"
            )
    _check_lifetime("access_token_lifetime", settings.access_token_lifetime)
    _check_lifetime("code_lifetime", settings.code_lifetime)
    if settings.refresh_token_lifetime is not None:
        _check_lifetime("refresh_token_lifetime", settings.refresh_token_lifetime)


def _check_url(field: str, url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(
            f"DemoSettings.{field} has {url!r}; use an absolute http(s) URL "
            "without a fragment"
        )


def _check_lifetime(field: str, seconds: int) -> None:
    if seconds <= 0:
        raise ValueError(
            f"DemoSettings.{field} is {seconds}; use a positive number of seconds"
        )


# --- errors the views raise -------------------------------------------------


class _ErrorPage(Exception):
    """An error shown to the user as an HTML page, never sent to the client.

    Used while the client or its redirect URI is not yet trusted, because
    redirecting then would make the server an open redirector.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class _Target:
    """The redirect URI of an authorization response and the state to echo."""

    redirect_uri: str
    state: str | None = dataclasses.field(repr=False)


class _RedirectError(Exception):
    """An authorization error sent back to the client's redirect URI."""

    def __init__(self, target: _Target, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.target = target
        self.error = error
        self.description = description


class _TokenError(Exception):
    """An error response of the token or revocation endpoint (RFC 6749 §5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


def _invalid_client(description: str) -> _TokenError:
    return _TokenError("invalid_client", description, status=401)


# --- small helpers ------------------------------------------------------------


def s256_challenge(verifier: str) -> str:
    """Return the PKCE S256 code challenge of `verifier` (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _add_query(url: str, params: Mapping[str, str]) -> str:
    """Append `params` to the query of `url`, keeping the existing query as is."""
    parts = urllib.parse.urlsplit(url)
    extra = urllib.parse.urlencode(params)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _repeated_param(values: MultiDict[str, str], names: tuple[str, ...]) -> str | None:
    """Return the first of `names` that occurs more than once, or None.

    RFC 6749 §3.1 and §3.2 forbid repeating a request parameter.
    """
    for name in names:
        if len(values.getlist(name)) > 1:
            return name
    return None


def _parse_scope(value: str | None) -> tuple[str, ...]:
    """Split a space-separated scope into unique tokens, keeping their order."""
    if value is None:
        return ()
    return tuple(dict.fromkeys(value.split()))


def _json_response(body: Mapping[str, Any], status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(NO_STORE_HEADERS)
    return response


def _token_error_response(exc: _TokenError) -> Response:
    body = {"error": exc.error, "error_description": exc.description}
    response = _json_response(body, exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return response


def add_html_security_headers(response: Response) -> Response:
    """Forbid framing, outside resources and caching on HTML pages.

    Framing is denied so that no other site can trick the user into
    clicking Approve (clickjacking). The approval page contains the
    single-use reqid, so no page is cached.
    """
    if response.mimetype == "text/html":
        response.headers.update(NO_STORE_HEADERS)
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    """Return (client_id, client_secret) from a Basic Authorization header.

    RFC 6749 §2.3.1 has the client form-urlencode both values before it
    joins them with ':' and encodes them in base64, so they are decoded here
    with `unquote_plus`. Returns None when the header uses another scheme.
    """
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _invalid_client("the Basic Authorization header is malformed") from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("the Basic Authorization header has no ':'")
    return urllib.parse.unquote_plus(client_id), urllib.parse.unquote_plus(secret)


# --- the server ---------------------------------------------------------------


class _AuthorizationServer:
    """The view functions of the authorization server, bound to its state."""

    def __init__(self, settings: DemoSettings, db: DemoDatabase) -> None:
        self.settings = settings
        self.db = db

    # GET /authorize ---------------------------------------------------------

    def authorize(self) -> Response:
        args = request.args
        self._check_client_id(args)
        target = _Target(self._redirect_uri(args), args.get("state"))
        pending = self._pending_request(args, target)
        reqid = self.db.add_pending_request(pending)
        logger.info(
            "authorization request of client %s for scope %r awaits approval",
            pending.client_id,
            " ".join(pending.scope),
        )
        return self._page("approve.html", reqid=reqid, pending=pending)

    def _check_client_id(self, args: MultiDict[str, str]) -> None:
        client_ids = args.getlist("client_id")
        if not client_ids:
            raise _ErrorPage("The request has no client_id.")
        if len(client_ids) > 1:
            raise _ErrorPage("The request repeats the client_id parameter.")
        if client_ids[0] != self.settings.client_id:
            raise _ErrorPage(
                f"Unknown client: client_id {client_ids[0]!r} is not registered."
            )

    def _redirect_uri(self, args: MultiDict[str, str]) -> str:
        """Return the redirect URI to use, or raise _ErrorPage.

        The URI must equal a registered one character for character. It may
        be left out only when exactly one URI is registered.
        """
        uris = args.getlist("redirect_uri")
        registered = self.settings.redirect_uris
        if len(uris) > 1:
            raise _ErrorPage("The request repeats the redirect_uri parameter.")
        if not uris:
            if len(registered) == 1:
                return registered[0]
            raise _ErrorPage(
                "The request has no redirect_uri, and the client registered "
                "several; send one of them."
            )
        if uris[0] not in registered:
            raise _ErrorPage(
                f"The redirect_uri {uris[0]!r} is not registered for this client."
            )
        return uris[0]

    def _pending_request(
        self, args: MultiDict[str, str], target: _Target
    ) -> PendingRequest:
        repeated = _repeated_param(args, _AUTHORIZE_PARAMS)
        if repeated is not None:
            raise _RedirectError(
                target, "invalid_request", f"the {repeated} parameter is repeated"
            )
        self._check_response_type(args.get("response_type"), target)
        challenge, method = self._code_challenge(args, target)
        return PendingRequest(
            client_id=self.settings.client_id,
            redirect_uri=target.redirect_uri,
            redirect_uri_in_request="redirect_uri" in args,
            scope=self._requested_scope(args.get("scope"), target),
            state=target.state,
            code_challenge=challenge,
            code_challenge_method=method,
        )

    def _check_response_type(self, response_type: str | None, target: _Target) -> None:
        if response_type is None:
            raise _RedirectError(
                target, "invalid_request", "response_type is missing; send code"
            )
        if response_type != "code":
            raise _RedirectError(
                target,
                "unsupported_response_type",
                "this server supports only response_type=code",
            )

    def _requested_scope(self, value: str | None, target: _Target) -> tuple[str, ...]:
        requested = _parse_scope(value)
        if not requested:
            return self.settings.scopes
        unknown = [scope for scope in requested if scope not in self.settings.scopes]
        if unknown:
            raise _RedirectError(
                target,
                "invalid_scope",
                "the request contains scopes this server does not know; "
                f"known scopes: {' '.join(self.settings.scopes)}",
            )
        return requested

    def _code_challenge(
        self, args: MultiDict[str, str], target: _Target
    ) -> tuple[str | None, str | None]:
        challenge = args.get("code_challenge")
        method = args.get("code_challenge_method")
        if challenge is None:
            if self.settings.require_pkce:
                raise _RedirectError(
                    target,
                    "invalid_request",
                    "code_challenge is missing; this server requires PKCE "
                    "with code_challenge_method=S256",
                )
            if method is not None:
                raise _RedirectError(
                    target,
                    "invalid_request",
                    "code_challenge_method without a code_challenge",
                )
            return None, None
        if method != "S256":
            # An absent method means "plain" (RFC 7636 §4.3), which a
            # challenge sent in the clear makes useless.
            raise _RedirectError(
                target,
                "invalid_request",
                "code_challenge_method must be S256; plain is not supported",
            )
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise _RedirectError(
                target,
                "invalid_request",
                "code_challenge must be the unpadded base64url SHA-256 of the "
                "code_verifier, 43 characters",
            )
        return challenge, method

    # POST /approve ----------------------------------------------------------

    def approve(self) -> Response:
        form = request.form
        pending = self.db.pop_pending_request(form.get("reqid", ""))
        if pending is None:
            raise _ErrorPage(
                "This approval request was not found or was already used. "
                "Start the authorization again from the client."
            )
        target = _Target(pending.redirect_uri, pending.state)
        if "approve" not in form or "deny" in form:
            raise _RedirectError(
                target, "access_denied", "the resource owner denied the request"
            )
        scope = self._approved_scope(form, pending, target)
        code = self.db.issue_code(pending, scope, self.settings.code_lifetime)
        logger.info(
            "client %s approved for scope %r; authorization code issued",
            pending.client_id,
            " ".join(scope),
        )
        return self._redirect_to_client(target, {"code": code}, is_error=False)

    def _approved_scope(
        self, form: MultiDict[str, str], pending: PendingRequest, target: _Target
    ) -> tuple[str, ...]:
        checked = [key[len("scope_") :] for key in form if key.startswith("scope_")]
        if any(scope not in pending.scope for scope in checked):
            raise _RedirectError(
                target, "invalid_scope", "the approval contains an unrequested scope"
            )
        if not checked:
            raise _RedirectError(target, "access_denied", "no scope approved")
        return tuple(scope for scope in pending.scope if scope in checked)

    def _redirect_to_client(
        self, target: _Target, params: dict[str, str], *, is_error: bool
    ) -> Response:
        if target.state is not None and (self.settings.state_on_error or not is_error):
            params["state"] = target.state
        if self.settings.send_iss:
            params["iss"] = self.settings.issuer
        response = redirect(_add_query(target.redirect_uri, params), code=302)
        response.headers.update(NO_STORE_HEADERS)
        return response

    # POST /token ------------------------------------------------------------

    def token(self) -> Response:
        grant_type = request.form.get("grant_type")
        label = grant_type if grant_type in self._grant_handlers() else "other"
        try:
            client_id = self._authenticate_client()
            response = self._dispatch_grant(client_id, self._checked_form())
        except _TokenError as exc:
            self.db.count_token_request(label, exc.error)
            logger.info("token request (grant_type %s) failed: %s", label, exc)
            return _token_error_response(exc)
        self.db.count_token_request(label, "ok")
        logger.info("token request (grant_type %s) of %s succeeded", label, client_id)
        return response

    def _grant_handlers(self) -> dict[str, _GrantHandler]:
        handlers: dict[str, _GrantHandler] = {
            "authorization_code": self._authorization_code_grant
        }
        if self.settings.issue_refresh_tokens:
            handlers["refresh_token"] = self._refresh_token_grant
        return handlers

    def _dispatch_grant(self, client_id: str, form: MultiDict[str, str]) -> Response:
        grant_type = form.get("grant_type")
        if not grant_type:
            raise _TokenError("invalid_request", "grant_type is missing")
        handler = self._grant_handlers().get(grant_type)
        if handler is None:
            supported = " ".join(self._grant_handlers())
            raise _TokenError(
                "unsupported_grant_type", f"supported grant types: {supported}"
            )
        return handler(client_id, form)

    def _checked_form(self) -> MultiDict[str, str]:
        if request.mimetype != "application/x-www-form-urlencoded":
            raise _TokenError(
                "invalid_request",
                "send the parameters as application/x-www-form-urlencoded",
            )
        repeated = _repeated_param(request.form, _TOKEN_PARAMS)
        if repeated is not None:
            raise _TokenError(
                "invalid_request", f"the {repeated} parameter is repeated"
            )
        return request.form

    def _authenticate_client(self) -> str:
        """Return the authenticated client id, or raise _TokenError.

        Accepts client_secret_basic or client_secret_post, not both at once.
        """
        basic = _basic_credentials(request.headers.get("Authorization"))
        body_id = request.form.get("client_id")
        body_secret = request.form.get("client_secret")
        if basic is not None:
            if body_secret is not None or body_id not in (None, basic[0]):
                raise _TokenError(
                    "invalid_request",
                    "the client authenticates with both the Authorization header "
                    "and the request body; use one of them",
                )
            client_id, secret = basic
        elif body_id is not None and body_secret is not None:
            client_id, secret = body_id, body_secret
        else:
            raise _invalid_client(
                "client authentication is missing; send HTTP Basic credentials "
                "or client_id and client_secret in the body"
            )
        if not self._credentials_match(client_id, secret):
            raise _invalid_client("unknown client_id or wrong client_secret")
        return client_id

    def _credentials_match(self, client_id: str, secret: str) -> bool:
        id_matches = hmac.compare_digest(
            client_id.encode("utf-8"), self.settings.client_id.encode("utf-8")
        )
        secret_matches = hmac.compare_digest(
            secret.encode("utf-8"), self.settings.client_secret.encode("utf-8")
        )
        return id_matches and secret_matches

    def _authorization_code_grant(
        self, client_id: str, form: MultiDict[str, str]
    ) -> Response:
        code = _required(form, "code")
        record = self.db.get_code(code)
        if record is None:
            raise _TokenError("invalid_grant", "unknown authorization code")
        if record.used:
            self._revoke_reused(record.grant, "authorization code")
        if self.db.now() >= record.expires_at:
            raise _TokenError("invalid_grant", "the authorization code expired")
        if record.grant.client_id != client_id:
            raise _TokenError("invalid_grant", "the code was issued to another client")
        self._check_redirect_uri(
            form.get("redirect_uri"),
            record.redirect_uri,
            record.redirect_uri_in_request,
        )
        _check_code_verifier(form.get("code_verifier"), record.code_challenge)
        if not self.db.mark_code_used(code):
            self._revoke_reused(record.grant, "authorization code")
        return self._token_response(record.grant, record.grant.scope)

    def _check_redirect_uri(
        self, sent: str | None, expected: str, was_in_request: bool
    ) -> None:
        """Require the redirect_uri of the authorization request (RFC 6749 §4.1.3).

        The parameter may be left out only when the authorization request
        left it out too.
        """
        if sent is None and not was_in_request:
            return
        if sent is None:
            raise _TokenError(
                "invalid_request",
                "redirect_uri is missing; send the one of the authorization request",
            )
        if sent != expected:
            raise _TokenError(
                "invalid_grant",
                "redirect_uri differs from the one of the authorization request",
            )

    def _refresh_token_grant(
        self, client_id: str, form: MultiDict[str, str]
    ) -> Response:
        token = _required(form, "refresh_token")
        record = self.db.get_refresh_token(token)
        if record is None:
            raise _TokenError("invalid_grant", "unknown or revoked refresh token")
        if record.used:
            self._revoke_reused(record.grant, "refresh token")
        if record.grant.client_id != client_id:
            raise _TokenError(
                "invalid_grant", "the refresh token was issued to another client"
            )
        if record.expires_at is not None and self.db.now() >= record.expires_at:
            raise _TokenError("invalid_grant", "the refresh token expired")
        scope = _refresh_scope(form.get("scope"), record.grant)
        if not self.db.mark_refresh_token_used(token):
            self._revoke_reused(record.grant, "refresh token")
        return self._token_response(record.grant, scope)

    def _revoke_reused(self, grant: Grant, kind: str) -> None:
        """Revoke a grant whose code or refresh token was presented twice.

        A second use means that someone else may hold the value, so every
        token of the grant is revoked (RFC 6749 §4.1.2, RFC 9700 §4.14.2).
        """
        self.db.revoke_grant(grant.grant_id)
        logger.warning("%s reused; grant %s revoked", kind, grant.grant_id)
        raise _TokenError(
            "invalid_grant",
            f"the {kind} was already used; every token issued from it is revoked",
        )

    def _token_response(self, grant: Grant, scope: tuple[str, ...]) -> Response:
        settings = self.settings
        issued = self.db.issue_tokens(
            grant,
            scope,
            settings.access_token_lifetime,
            settings.refresh_token_lifetime,
            settings.issue_refresh_tokens,
        )
        if issued is None:
            raise _TokenError("invalid_grant", "the grant was revoked")
        body: dict[str, Any] = {
            "access_token": issued.access_token,
            "token_type": "Bearer",
        }
        if settings.send_expires_in:
            body["expires_in"] = settings.access_token_lifetime
        if issued.refresh_token is not None:
            body["refresh_token"] = issued.refresh_token
        body["scope"] = " ".join(scope)
        return _json_response(body)

    # POST /revoke -----------------------------------------------------------

    def revoke(self) -> Response:
        """Revoke a token (RFC 7009). Unknown tokens also get 200.

        The demo registers one client, so every token belongs to the
        authenticated caller and no ownership check is needed.
        """
        try:
            client_id = self._authenticate_client()
            token = _required(self._checked_form(), "token")
        except _TokenError as exc:
            logger.info("revocation request failed: %s", exc)
            return _token_error_response(exc)
        kind = self.db.revoke_token(token)
        logger.info(
            "revocation request of %s: %s", client_id, kind or "unknown token ignored"
        )
        response = make_response("", 200)
        response.headers.update(NO_STORE_HEADERS)
        return response

    # GET /.well-known/oauth-authorization-server, GET / ----------------------

    def metadata(self) -> Response:
        settings = self.settings
        auth_methods = ["client_secret_basic", "client_secret_post"]
        body = {
            "issuer": settings.issuer,
            "authorization_endpoint": settings.endpoint("/authorize"),
            "token_endpoint": settings.endpoint("/token"),
            "revocation_endpoint": settings.endpoint("/revoke"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(self._grant_handlers()),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "scopes_supported": list(settings.scopes),
            "authorization_response_iss_parameter_supported": settings.send_iss,
        }
        logger.info("metadata document served")
        return jsonify(body)

    def index(self) -> Response:
        return self._page("index.html", settings=self.settings)

    # error handlers ---------------------------------------------------------

    def handle_error_page(self, exc: _ErrorPage) -> Response:
        logger.info("%s %s rejected with an error page", request.method, request.path)
        return self._page("error.html", status=400, message=exc.message)

    def handle_redirect_error(self, exc: _RedirectError) -> Response:
        logger.info("%s %s redirected with %s", request.method, request.path, exc.error)
        params = {"error": exc.error, "error_description": exc.description}
        return self._redirect_to_client(exc.target, params, is_error=True)

    def _page(self, template: str, status: int = 200, **context: Any) -> Response:
        html = render_template(template, server_name="authorization server", **context)
        return make_response(html, status)


def _required(form: MultiDict[str, str], name: str) -> str:
    value = form.get(name)
    if not value:
        raise _TokenError("invalid_request", f"{name} is missing")
    return value


def _check_code_verifier(verifier: str | None, challenge: str | None) -> None:
    """Check the PKCE verifier against the stored S256 challenge (RFC 7636 §4.6)."""
    if challenge is None:
        if verifier is not None:
            # A verifier without a challenge hints at a PKCE downgrade
            # attack (RFC 9700 §2.1.1).
            raise _TokenError(
                "invalid_grant",
                "code_verifier sent, but the authorization request had no "
                "code_challenge",
            )
        return
    if verifier is None:
        raise _TokenError("invalid_request", "code_verifier is missing")
    if not _CODE_VERIFIER.fullmatch(verifier):
        raise _TokenError(
            "invalid_request",
            "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~",
        )
    if not hmac.compare_digest(s256_challenge(verifier), challenge):
        raise _TokenError(
            "invalid_grant", "code_verifier does not match the code_challenge"
        )


def _refresh_scope(value: str | None, grant: Grant) -> tuple[str, ...]:
    """Return the scope of a refreshed access token (RFC 6749 §6)."""
    requested = _parse_scope(value)
    if not requested:
        return grant.scope
    if any(scope not in grant.scope for scope in requested):
        raise _TokenError(
            "invalid_scope", "the requested scope exceeds the scope of the grant"
        )
    return requested


def create_authorization_server(settings: DemoSettings, db: DemoDatabase) -> Flask:
    """Build the demo authorization server as a Flask application.

    Args:
        settings: the issuer, the one registered client and behaviour flags.
        db: the store it shares with the demo resource server.

    Returns:
        the WSGI application; run it with `BackgroundServer` or any WSGI server.
    """
    app = Flask(__name__)
    server = _AuthorizationServer(settings, db)
    app.add_url_rule("/", "index", server.index)
    app.add_url_rule("/authorize", "authorize", server.authorize)
    app.add_url_rule("/approve", "approve", server.approve, methods=["POST"])
    app.add_url_rule("/token", "token", server.token, methods=["POST"])
    app.add_url_rule("/revoke", "revoke", server.revoke, methods=["POST"])
    app.add_url_rule(
        "/.well-known/oauth-authorization-server", "metadata", server.metadata
    )
    app.register_error_handler(_ErrorPage, server.handle_error_page)
    app.register_error_handler(_RedirectError, server.handle_redirect_error)
    app.after_request(add_html_security_headers)
    return app
