"""The authorization code grant on the wire, without I/O.

Functions here build `HttpRequest` values and authorization URLs, and parse
callbacks and `HttpResponse` values into typed results or typed errors.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from flowengine.errors import OAuthError, ProtocolError, ResourceError
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.redaction import (
    MASK,
    SECRET_NAMES,
    abbreviate,
    redact_mapping,
    redact_query,
    redact_url,
)

EXCERPT_LENGTH = 200

# RFC 6749 §A.7 and §A.8: error and error_description use printable ASCII
# except '"' and '\'.
_ERROR_CHARS = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]*\Z")

# A secret written into free text by a server that echoes the request: a
# form pair ("code=..."), a header line ("authorization: Bearer ...") or a
# mapping entry ("'refresh_token': '...'"). Longer names come first so that
# "access_token" is not read as "token".
_SECRET_IN_TEXT = re.compile(
    r"(?i)(?<![\w-])("
    + "|".join(sorted(SECRET_NAMES, key=len, reverse=True))
    + r")(['\"]?\s*(?:=|:|%3D)\s*['\"]?)(?:(?:basic|bearer)\s+)?[^\s&'\"<>,;]+"
)

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")

# RFC 6749 §A.17: a refresh token is one or more VSCHAR, printable ASCII.
_REFRESH_TOKEN_CHARS = re.compile(r"[\x20-\x7e]+")

# RFC 6749 §3.3: scope tokens of %x21 / %x23-5B / %x5D-7E, separated by spaces.
_SCOPE_CHARS = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

# Ten years of 365 days, in seconds. A longer expires_in counts as unknown.
MAX_TOKEN_LIFETIME = 315_360_000

# A callback with more parameters is rejected. Like parse_qsl, the check
# counts one parameter more than there are '&' separators.
MAX_CALLBACK_PARAMETERS = 50

_CALLBACK_FIELDS = ("code", "state", "error", "error_description", "error_uri", "iss")


@dataclasses.dataclass(frozen=True)
class Callback:
    """The parameters of an authorization response (RFC 6749 §4.1.2)."""

    code: str | None = dataclasses.field(default=None, repr=False)
    state: str | None = dataclasses.field(default=None, repr=False)
    error: str | None = None
    error_description: str | None = None
    error_uri: str | None = None
    iss: str | None = None

    def as_error(self) -> OAuthError:
        """Return the OAuth error this callback carries."""
        return OAuthError(self.error or "", self.error_description, self.error_uri)


@dataclasses.dataclass(frozen=True)
class TokenSet:
    """A validated token response (RFC 6749 §5.1).

    `expires_at` is POSIX seconds, or None when the lifetime is unknown.
    """

    access_token: str
    token_type: str
    expires_at: float | None
    refresh_token: str | None
    scope: str | None

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token={abbreviate(self.access_token)!r}, "
            f"token_type={self.token_type!r}, expires_at={self.expires_at!r}, "
            f"refresh_token={MASK if self.refresh_token else None!r}, "
            f"scope={self.scope!r})"
        )


def authorization_url(
    config: ClientConfig, state: str, code_challenge: str, scope: str | None = None
) -> str:
    """Build the authorization request URL (RFC 6749 §4.1.1, RFC 7636 §4.3).

    Query parameters already in the configured endpoint are kept.
    """
    params = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": config.redirect_uri,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    chosen_scope = config.scope if scope is None else scope
    if chosen_scope:
        params["scope"] = chosen_scope
    parts = urllib.parse.urlsplit(config.endpoint("authorization_endpoint"))
    query = urllib.parse.urlencode(params, quote_via=urllib.parse.quote)
    if parts.query:
        query = f"{parts.query}&{query}"
    return urllib.parse.urlunsplit(parts._replace(query=query))


def parse_callback(url_or_query: str) -> Callback:
    """Parse the query of the redirect back from the authorization endpoint.

    Accepts a whole callback URL or only its query string.

    Raises:
        ProtocolError: a parameter is repeated (RFC 6749 §3.1), the
            response has neither `code` nor `error`, or a value is invalid.
    """
    query = url_or_query
    if "?" in url_or_query or "://" in url_or_query:
        try:
            query = urllib.parse.urlsplit(url_or_query).query
        except ValueError as exc:
            raise ProtocolError(f"callback URL is malformed ({exc})") from exc
    if query.count("&") + 1 > MAX_CALLBACK_PARAMETERS:
        raise ProtocolError(
            f"callback has more than {MAX_CALLBACK_PARAMETERS} parameters; open "
            "the callback URL that the authorization server redirected to"
        )
    try:
        pairs = urllib.parse.parse_qsl(
            query,
            keep_blank_values=True,
            errors="strict",
            max_num_fields=MAX_CALLBACK_PARAMETERS,
        )
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            "callback query contains a percent-escape that is not UTF-8"
        ) from exc
    except ValueError as exc:
        raise ProtocolError(
            f"callback query is not valid form encoding ({type(exc).__name__})"
        ) from exc

    values: dict[str, str] = {}
    for name, value in pairs:
        if name in _CALLBACK_FIELDS and name in values:
            raise ProtocolError(
                f"callback repeats the parameter {name!r}; an authorization "
                "response must send each parameter once"
            )
        values[name] = value
    callback = Callback(
        **{k: values[k] or None for k in _CALLBACK_FIELDS if k in values}
    )
    _check_callback(callback)
    return callback


def _check_callback(callback: Callback) -> None:
    if callback.error is None and callback.code is None:
        raise ProtocolError(
            "callback has neither 'code' nor 'error'; open the callback URL "
            "that the authorization server redirected to"
        )
    if callback.error is not None and not _ERROR_CHARS.match(callback.error):
        raise ProtocolError("callback 'error' contains characters RFC 6749 forbids")


def token_request(config: ClientConfig, code: str, code_verifier: str) -> HttpRequest:
    """Build the access token request for a code (RFC 6749 §4.1.3)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": config.redirect_uri,
        "code_verifier": code_verifier,
    }
    return _token_endpoint_request(config, form)


def refresh_request(
    config: ClientConfig, refresh_token: str, scope: str | None = None
) -> HttpRequest:
    """Build a refresh request (RFC 6749 §6)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope:
        form["scope"] = scope
    return _token_endpoint_request(config, form)


def revocation_request(
    config: ClientConfig, token: str, hint: str = "refresh_token"
) -> HttpRequest:
    """Build a token revocation request (RFC 7009 §2.1).

    Raises:
        ConfigError: no revocation endpoint is configured or discovered.
    """
    form = {"token": token, "token_type_hint": hint}
    url = config.endpoint("revocation_endpoint")
    return _token_endpoint_request(config, form, url=url)


def _token_endpoint_request(
    config: ClientConfig, form: dict[str, str], url: str | None = None
) -> HttpRequest:
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if config.token_auth_method == "client_secret_basic":
        headers["Authorization"] = basic_authorization(
            config.client_id, config.client_secret
        )
    else:
        form = {**form, "client_id": config.client_id}
        form["client_secret"] = config.client_secret
    return HttpRequest("POST", url or config.endpoint("token_endpoint"), headers, form)


def basic_authorization(client_id: str, client_secret: str) -> str:
    """Return the HTTP Basic header value for client credentials.

    Id and secret are form-urlencoded before base64, as RFC 6749 §2.3.1
    requires, so `:` and `+` in a secret survive.
    """
    user = urllib.parse.quote_plus(client_id)
    password = urllib.parse.quote_plus(client_secret)
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_token_response(
    response: HttpResponse, requested_at: float, previous: TokenSet | None = None
) -> TokenSet:
    """Validate a token endpoint response (RFC 6749 §5.1, §5.2).

    Args:
        response: the token endpoint's response.
        requested_at: the time just before the request was sent; the expiry
            is measured from it, so it errs on the early side.
        previous: for a refresh, the tokens held before; a response without
            `refresh_token` keeps the previous one (RFC 6749 §6).

    Raises:
        OAuthError: the body is an OAuth error, whatever the status.
        ProtocolError: the endpoint redirected, the body is not a JSON or
            form object, or a field is missing, mistyped or invalid.
    """
    if 300 <= response.status < 400:
        raise _redirected(response)
    body = _decode_token_body(response)
    if "error" in body:
        raise _oauth_error(body, response.status)
    if not 200 <= response.status < 300:
        raise ProtocolError(
            "token endpoint returned an error status without an OAuth error",
            status=response.status,
            excerpt=_excerpt(response),
        )
    return _token_set(body, requested_at, previous, response.status)


def _redirected(response: HttpResponse) -> ProtocolError:
    # The client does not follow redirects: a POST that is redirected may be
    # resent elsewhere with the client's credentials, or turned into a GET.
    location = response.header("location")
    if location is None:
        target = "no Location header"
    else:
        try:
            target = repr(redact_url(location)[:EXCERPT_LENGTH])
        except ValueError:
            target = "an invalid Location header"
    error = ProtocolError(
        f"token endpoint redirected (HTTP {response.status}) to {target}; "
        "configure the final token endpoint URL"
    )
    error.status = response.status
    return error


def _decode_token_body(response: HttpResponse) -> dict[str, Any]:
    text = _text(response)
    if response.media_type == "application/x-www-form-urlencoded":
        try:
            return dict(urllib.parse.parse_qsl(text, strict_parsing=True))
        except ValueError as exc:
            raise ProtocolError(
                "token endpoint sent an invalid form body",
                status=response.status,
                excerpt=_excerpt(response),
            ) from exc

    # Some servers label JSON as text/plain or text/javascript: try JSON for
    # any media type, and report the media type when it fails.
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(
            f"token endpoint did not send JSON (Content-Type "
            f"{response.media_type or 'missing'})",
            status=response.status,
            excerpt=_excerpt(response),
        ) from exc
    if not isinstance(body, dict):
        raise ProtocolError(
            "token endpoint sent JSON that is not an object",
            status=response.status,
            excerpt=_excerpt(response),
        )
    return body


def _oauth_error(body: Mapping[str, Any], status: int) -> OAuthError:
    error = body.get("error")
    if not isinstance(error, str) or not error or not _ERROR_CHARS.match(error):
        raise ProtocolError(
            "token endpoint sent an invalid 'error' value", status=status
        )
    description = body.get("error_description")
    uri = body.get("error_uri")
    return OAuthError(
        error,
        mask_secrets_in_text(description) if isinstance(description, str) else None,
        uri if isinstance(uri, str) else None,
        status=status,
    )


def _token_set(
    body: Mapping[str, Any],
    requested_at: float,
    previous: TokenSet | None,
    status: int,
) -> TokenSet:
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not _TOKEN_CHARS.fullmatch(access_token):
        # RFC 6749 §A.12 allows printable ASCII; a space or control character
        # could not be sent in an Authorization header.
        raise ProtocolError(
            "token response lacks a valid 'access_token' (it must be printable "
            "ASCII without spaces)",
            status=status,
        )
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = token_type if isinstance(token_type, str) else type(token_type).__name__
        raise ProtocolError(
            f"token response has token_type {shown[:40]!r}; this client "
            "uses only 'Bearer' tokens (RFC 6750)",
            status=status,
        )

    refresh_token = body.get("refresh_token")
    if not isinstance(refresh_token, str) or not refresh_token:
        refresh_token = previous.refresh_token if previous else None
    elif not _REFRESH_TOKEN_CHARS.fullmatch(refresh_token):
        raise ProtocolError(
            "token response has an invalid 'refresh_token' (it must be "
            "printable ASCII, RFC 6749 §A.17)",
            status=status,
        )
    scope = body.get("scope")
    if not isinstance(scope, str):
        scope = previous.scope if previous else None
    elif not _SCOPE_CHARS.fullmatch(scope):
        raise ProtocolError(
            f"token response has an invalid 'scope' {scope[:EXCERPT_LENGTH]!r} "
            "(RFC 6749 §3.3 allows printable ASCII except '\"' and '\\', with "
            "scope tokens separated by spaces)",
            status=status,
        )
    lifetime = parse_expires_in(body.get("expires_in"))
    expires_at = None if lifetime is None else requested_at + lifetime
    return TokenSet(access_token, "Bearer", expires_at, refresh_token, scope)


def parse_expires_in(value: object) -> float | None:
    """Return a token lifetime in seconds, or None when it is unknown.

    Accepts a non-negative number or a numeric string ("3600"). Anything
    else (null, "", -1, true, NaN) means an unknown lifetime rather than an
    error, because RFC 6749 §5.1 makes the field optional.

    A lifetime above MAX_TOKEN_LIFETIME (ten years) is unknown too. It is no
    usable expiry for an access token, and an expiry time far enough ahead
    (1e308 s, or past the year 9999) cannot be converted to a date: datetime
    raises OverflowError, which would break every page and command that
    shows the flow.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    try:
        lifetime = float(value)
    except OverflowError:
        # A JSON integer of hundreds of digits has no float value.
        return None
    if not math.isfinite(lifetime) or not 0 <= lifetime <= MAX_TOKEN_LIFETIME:
        return None
    return lifetime


def resource_request(config: ClientConfig, access_token: str) -> HttpRequest:
    """Build a request to the protected resource with a bearer header.

    RFC 6750 §2.1: the token goes only in the Authorization header.
    """
    headers = {"Authorization": f"Bearer {access_token}", "Accept": "application/json"}
    return HttpRequest(config.resource_method.upper(), config.resource_url, headers)


def parse_bearer_challenge(header: str | None) -> dict[str, str]:
    """Return the auth-params of a Bearer `WWW-Authenticate` challenge.

    RFC 6750 §3. Returns an empty dict when the header is missing or contains
    no Bearer challenge.
    """
    if not header:
        return {}
    match = re.search(r"(?i)\bbearer\b", header)
    if match is None:
        return {}
    params: dict[str, str] = {}
    pattern = r'\s*,?\s*([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)'
    for name, raw in re.findall(pattern, header[match.end() :]):
        value = raw[1:-1].replace('\\"', '"') if raw.startswith('"') else raw
        params.setdefault(name.lower(), value)
    return params


@dataclasses.dataclass(frozen=True)
class ResourceResult:
    """A successful response from the protected resource."""

    status: int
    media_type: str
    body: bytes

    def json(self) -> Any:
        """Decode the body as JSON.

        Raises:
            ProtocolError: the body is not JSON.
        """
        try:
            return json.loads(self.body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                "resource did not send JSON", status=self.status
            ) from exc

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class TokenRejected(Exception):
    """The resource returned 401: the token is expired, revoked or unknown.

    Internal signal for the client, which then refreshes at most once.
    """

    def __init__(self, challenge: Mapping[str, str]) -> None:
        self.challenge = dict(challenge)
        super().__init__(self.challenge.get("error", "no error in challenge"))


def read_resource_response(response: HttpResponse) -> ResourceResult:
    """Classify the resource's response.

    Raises:
        TokenRejected: status 401 (RFC 6750 §3.1 invalid_token, or no error).
        ResourceError: status 403 (insufficient_scope, with the required
            scope) or any other non-2xx status.
    """
    challenge = parse_bearer_challenge(response.header("www-authenticate"))
    if response.status == 401:
        raise TokenRejected(challenge)
    if response.status == 403:
        error = challenge.get("error", "forbidden")
        scope = challenge.get("scope")
        needed = f"; it requires scope {scope!r}" if scope else ""
        raise ResourceError(
            f"resource rejected the token with {error}{needed}",
            status=403,
            error=error,
            scope=scope,
        )
    if not 200 <= response.status < 300:
        raise ResourceError(
            f"resource returned HTTP {response.status}: {_excerpt(response)!r}",
            status=response.status,
            error=challenge.get("error"),
        )
    return ResourceResult(response.status, response.media_type, response.body)


def _text(response: HttpResponse) -> str:
    return response.body.decode("utf-8", errors="replace")


def _excerpt(response: HttpResponse) -> str:
    # A failing server may echo the request or send tokens with an error
    # status, so secret fields are masked before the text is cut.
    text = _text(response)
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict):
        try:
            text = json.dumps(redact_mapping(parsed))
        except RecursionError:
            text = text[:EXCERPT_LENGTH]
    elif "=" in text and " " not in text.strip():
        text = redact_query(text.strip())
    return " ".join(mask_secrets_in_text(text).split())[:EXCERPT_LENGTH]


def mask_secrets_in_text(text: str) -> str:
    """Return `text` with the values of secret parameters written in it masked.

    Catches `name=value`, `name: value` and quoted mapping entries for the
    names in SECRET_NAMES, as an error page that echoes the request shows
    them. A secret written in the text without its name stays visible.
    """
    return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
