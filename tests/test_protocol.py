"""Tests of the sans-IO protocol code: URLs, callbacks, requests, responses."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

import flowengine
from flowengine.errors import OAuthError, ProtocolError, ResourceError
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.oauth.pkce import (
    code_challenge,
    new_code_verifier,
    new_state,
    states_equal,
)
from flowengine.oauth.protocol import (
    EXCERPT_LENGTH,
    TokenRejected,
    TokenSet,
    authorization_url,
    basic_authorization,
    mask_secrets_in_text,
    parse_bearer_challenge,
    parse_callback,
    parse_expires_in,
    parse_token_response,
    read_resource_response,
    refresh_request,
    resource_request,
    token_request,
)

# RFC 7636 Appendix B: 32 random octets, their base64url form as the
# verifier, and the S256 challenge of that verifier.
RFC7636_VERIFIER_OCTETS = bytes(
    [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186]
    + [22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
)
RFC7636_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC7636_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

REQUESTED_AT = 1_700_000_000.0

# A redirect URI whose query and percent-escapes must survive unchanged.
ODD_REDIRECT_URI = "http://localhost:9000/cb/p%C3%A4th?tenant=a%20b&x=1"


def make_config(**changes: Any) -> ClientConfig:
    return ClientConfig(store="memory:", **changes)


def json_response(
    body: object, status: int = 200, content_type: str = "application/json"
) -> HttpResponse:
    return HttpResponse(
        status, {"Content-Type": content_type}, json.dumps(body).encode()
    )


def raw_response(
    text: str, status: int = 200, content_type: str = "application/json"
) -> HttpResponse:
    return HttpResponse(status, {"Content-Type": content_type}, text.encode())


def query_of(url: str) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)


# --- PKCE and state ----------------------------------------------------------


def test_rfc7636_vector_verifier_encodes_its_octets() -> None:
    encoded = base64.urlsafe_b64encode(RFC7636_VERIFIER_OCTETS).rstrip(b"=")

    assert encoded.decode("ascii") == RFC7636_VERIFIER


def test_code_challenge_matches_rfc7636_vector() -> None:
    assert code_challenge(RFC7636_VERIFIER) == RFC7636_CHALLENGE


def test_code_challenge_differs_for_other_verifier() -> None:
    assert code_challenge(RFC7636_VERIFIER[:-1] + "Y") != RFC7636_CHALLENGE


def test_new_code_verifier_is_valid_and_fresh() -> None:
    verifiers = {new_code_verifier() for _ in range(20)}

    assert len(verifiers) == 20
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert set(verifier) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        )


def test_new_state_has_at_least_128_bits() -> None:
    state = new_state()
    padded = state + "=" * (-len(state) % 4)

    assert len(base64.urlsafe_b64decode(padded)) >= 16
    assert new_state() != state


def test_states_equal_compares_exactly() -> None:
    assert states_equal("abc", "abc")
    assert not states_equal("abc", "abd")
    assert not states_equal("abc", "abc ")


# --- authorization URL -------------------------------------------------------


def test_authorization_url_has_every_parameter() -> None:
    config = make_config()

    url = authorization_url(config, "the-state", RFC7636_CHALLENGE, "foo bar")
    query = query_of(url)

    assert url.startswith("http://localhost:9001/authorize?")
    assert query["response_type"] == ["code"]
    assert query["client_id"] == ["oauth-client-1"]
    assert query["redirect_uri"] == ["http://localhost:9000/callback"]
    assert query["scope"] == ["foo bar"]
    assert query["state"] == ["the-state"]
    assert query["code_challenge"] == [RFC7636_CHALLENGE]
    assert query["code_challenge_method"] == ["S256"]


def test_authorization_url_keeps_redirect_uri_byte_for_byte() -> None:
    config = make_config(redirect_uri=ODD_REDIRECT_URI)

    url = authorization_url(config, "s", RFC7636_CHALLENGE)

    assert query_of(url)["redirect_uri"] == [ODD_REDIRECT_URI]


def test_authorization_url_keeps_endpoint_query() -> None:
    config = make_config(
        authorization_endpoint="https://as.example/authorize?tenant=a%20b&x=1"
    )

    url = authorization_url(config, "s", RFC7636_CHALLENGE)
    query = query_of(url)

    assert url.startswith("https://as.example/authorize?tenant=a%20b&x=1&")
    assert query["tenant"] == ["a b"]
    assert query["x"] == ["1"]
    assert query["response_type"] == ["code"]


def test_authorization_url_uses_configured_scope_by_default() -> None:
    config = make_config(scope="read write")

    query = query_of(authorization_url(config, "s", RFC7636_CHALLENGE))

    assert query["scope"] == ["read write"]


def test_authorization_url_omits_empty_scope() -> None:
    config = make_config(scope="")

    query = query_of(authorization_url(config, "s", RFC7636_CHALLENGE))

    assert "scope" not in query


# --- callback ----------------------------------------------------------------


def test_parse_callback_reads_code_and_state() -> None:
    callback = parse_callback(
        "http://localhost:9000/callback?code=c%2B1&state=st&iss=https%3A%2F%2Fas"
    )

    assert callback.code == "c+1"
    assert callback.state == "st"
    assert callback.iss == "https://as"
    assert callback.error is None


def test_parse_callback_accepts_bare_query() -> None:
    callback = parse_callback("code=abc&state=xyz")

    assert callback.code == "abc"
    assert callback.state == "xyz"


def test_parse_callback_reads_error_with_state() -> None:
    """RFC 6749 §4.1.2.1: an error response echoes state."""
    callback = parse_callback(
        "http://localhost:9000/callback?error=access_denied"
        "&error_description=user+said+no&error_uri=https%3A%2F%2Fas%2Fe&state=st"
    )
    error = callback.as_error()

    assert callback.state == "st"
    assert callback.code is None
    assert isinstance(error, OAuthError)
    assert error.error == "access_denied"
    assert error.error_description == "user said no"
    assert error.error_uri == "https://as/e"


def test_parse_callback_reads_error_without_state() -> None:
    """RFC 6749 §4.1.2.1 requires state, but some servers omit it on errors."""
    callback = parse_callback("http://localhost:9000/callback?error=access_denied")

    assert callback.error == "access_denied"
    assert callback.state is None


def test_parse_callback_keeps_unknown_error_code() -> None:
    """RFC 6749 §4.1.2.1: servers send codes beyond the listed ones."""
    callback = parse_callback("error=server_is_on_fire&state=st")

    assert callback.as_error().error == "server_is_on_fire"
    assert callback.as_error().code == "server_is_on_fire"


def test_parse_callback_without_code_or_error_is_rejected() -> None:
    """RFC 6749 §4.1.2: a response carries either code or error."""
    with pytest.raises(ProtocolError, match="neither 'code' nor 'error'"):
        parse_callback("http://localhost:9000/callback?state=st")


def test_parse_callback_with_empty_query_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        parse_callback("http://localhost:9000/callback")


@pytest.mark.parametrize("name", ["code", "state", "error", "iss"])
def test_parse_callback_with_repeated_parameter_is_rejected(name: str) -> None:
    query = f"code=a&state=b&error=c&iss=d&{name}=again"

    with pytest.raises(ProtocolError, match=f"repeats the parameter '{name}'"):
        parse_callback(query)


def test_parse_callback_with_invalid_error_characters_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        parse_callback('error=bad"quote&state=s')


def test_callback_repr_hides_code_and_state() -> None:
    callback = parse_callback("code=code-7788-secret&state=state-9911-secret")

    assert "code-7788-secret" not in repr(callback)
    assert "state-9911-secret" not in repr(callback)


# --- client authentication and token requests --------------------------------


def test_basic_authorization_form_encodes_before_base64() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then base64."""
    header = basic_authorization("client id:1", "p+/ :=s")

    scheme, _, value = header.partition(" ")
    decoded = base64.b64decode(value).decode()

    assert scheme == "Basic"
    assert decoded == "client+id%3A1:p%2B%2F+%3A%3Ds"


def test_basic_authorization_round_trips_through_unquote_plus() -> None:
    secret = "a+b/c:d=e f%g"

    decoded = base64.b64decode(basic_authorization("id", secret)[6:]).decode()
    user, _, password = decoded.partition(":")

    assert urllib.parse.unquote_plus(user) == "id"
    assert urllib.parse.unquote_plus(password) == secret


def test_token_request_sends_code_verifier_and_redirect_uri() -> None:
    config = make_config(client_secret="se:cr+et", redirect_uri=ODD_REDIRECT_URI)

    request = token_request(config, "the-code", RFC7636_VERIFIER)

    assert request.method == "POST"
    assert request.url == "http://localhost:9001/token"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["Authorization"] == basic_authorization(
        "oauth-client-1", "se:cr+et"
    )
    assert dict(request.form or {}) == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": ODD_REDIRECT_URI,
        "code_verifier": RFC7636_VERIFIER,
    }


def test_token_request_body_decodes_to_form() -> None:
    config = make_config(redirect_uri=ODD_REDIRECT_URI)

    request = token_request(config, "c+/=", RFC7636_VERIFIER)
    body = urllib.parse.parse_qs((request.body or b"").decode("ascii"))

    assert body["code"] == ["c+/="]
    assert body["redirect_uri"] == [ODD_REDIRECT_URI]


def test_token_request_with_client_secret_post() -> None:
    config = make_config(token_auth_method="client_secret_post")

    request = token_request(config, "the-code", RFC7636_VERIFIER)
    form = dict(request.form or {})

    assert "Authorization" not in request.headers
    assert form["client_id"] == "oauth-client-1"
    assert form["client_secret"] == "oauth-client-secret-1"
    assert form["code"] == "the-code"


def test_refresh_request_form_and_headers() -> None:
    request = refresh_request(make_config(), "the-refresh-token")

    assert request.method == "POST"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Authorization"].startswith("Basic ")
    assert dict(request.form or {}) == {
        "grant_type": "refresh_token",
        "refresh_token": "the-refresh-token",
    }


def test_refresh_request_with_scope() -> None:
    request = refresh_request(make_config(), "rt", scope="foo")

    assert (request.form or {})["scope"] == "foo"


def test_resource_request_sends_bearer_header_only() -> None:
    request = resource_request(make_config(), "the-access-token")

    assert request.method == "POST"
    assert request.url == "http://localhost:9002/resource"
    assert request.headers["Authorization"] == "Bearer the-access-token"
    assert request.form is None


def test_http_request_repr_masks_secrets() -> None:
    config = make_config(
        token_auth_method="client_secret_post", client_secret="cs-5544-secret"
    )
    request = token_request(config, "code-3322-secret", "verifier-1100-secret")
    basic = token_request(make_config(client_secret="cs-5544-secret"), "c", "v")

    shown = repr(request) + repr(basic)

    for secret in ("cs-5544-secret", "code-3322-secret", "verifier-1100-secret"):
        assert secret not in shown
    assert basic.headers["Authorization"] not in shown


# --- token responses ---------------------------------------------------------


def test_parse_token_response_reads_json() -> None:
    response = json_response(
        {
            "access_token": "at",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "rt",
            "scope": "foo bar",
        }
    )

    token = parse_token_response(response, REQUESTED_AT)

    assert token.access_token == "at"
    assert token.token_type == "Bearer"
    assert token.expires_at == REQUESTED_AT + 3600
    assert token.refresh_token == "rt"
    assert token.scope == "foo bar"


def test_parse_token_response_reads_form_body() -> None:
    """RFC 6749 §5.1 specifies JSON, but some servers reply in form encoding."""
    response = raw_response(
        "access_token=at%2B1&token_type=bearer&expires_in=60",
        content_type="application/x-www-form-urlencoded; charset=utf-8",
    )

    token = parse_token_response(response, REQUESTED_AT)

    assert token.access_token == "at+1"
    assert token.token_type == "Bearer"
    assert token.expires_at == REQUESTED_AT + 60


def test_parse_token_response_accepts_json_as_text_plain() -> None:
    """RFC 6749 §5.1 specifies application/json, but some servers send text/plain."""
    response = json_response(
        {"access_token": "at", "token_type": "Bearer"}, content_type="text/plain"
    )

    assert parse_token_response(response, REQUESTED_AT).access_token == "at"


def test_token_error_with_status_200() -> None:
    """RFC 6749 §5.2 specifies HTTP 400, but some servers send errors with 200."""
    response = json_response(
        {"error": "invalid_grant", "error_description": "code used"}, status=200
    )

    with pytest.raises(OAuthError) as caught:
        parse_token_response(response, REQUESTED_AT)

    assert caught.value.error == "invalid_grant"
    assert caught.value.error_description == "code used"
    assert caught.value.status == 200


def test_parse_token_response_error_with_status_400() -> None:
    response = json_response({"error": "invalid_client"}, status=400)

    with pytest.raises(OAuthError) as caught:
        parse_token_response(response, REQUESTED_AT)

    assert caught.value.error == "invalid_client"
    assert caught.value.status == 400


def test_parse_token_response_form_error_is_oauth_error() -> None:
    response = raw_response(
        "error=invalid_grant",
        status=400,
        content_type="application/x-www-form-urlencoded",
    )

    with pytest.raises(OAuthError, match="invalid_grant"):
        parse_token_response(response, REQUESTED_AT)


def test_token_error_code_not_text() -> None:
    response = json_response({"error": 42}, status=400)

    with pytest.raises(ProtocolError):
        parse_token_response(response, REQUESTED_AT)


def test_parse_token_response_reads_expires_in_string() -> None:
    """RFC 6749 §5.1 specifies a number, but some servers send a string."""
    response = json_response(
        {"access_token": "at", "token_type": "Bearer", "expires_in": "3600"}
    )

    token = parse_token_response(response, REQUESTED_AT)

    assert token.expires_at == REQUESTED_AT + 3600


@pytest.mark.parametrize(
    "raw",
    [
        '""',
        "-1",
        '"-5"',
        "null",
        "true",
        "false",
        '"abc"',
        "NaN",
        '"NaN"',
        "Infinity",
        '"inf"',
        "1e999",
        "1" + "0" * 400,
        "[3600]",
        '{"seconds": 3600}',
    ],
)
def test_parse_token_response_invalid_expires_in_means_unknown(raw: str) -> None:
    """RFC 6749 §5.1 makes expires_in optional, so an unusable value means unknown."""
    text = f'{{"access_token": "at", "token_type": "Bearer", "expires_in": {raw}}}'

    token = parse_token_response(raw_response(text), REQUESTED_AT)

    assert token.expires_at is None


def test_parse_token_response_missing_expires_in_means_unknown() -> None:
    response = json_response({"access_token": "at", "token_type": "Bearer"})

    assert parse_token_response(response, REQUESTED_AT).expires_at is None


def test_parse_expires_in_accepts_zero_and_fractions() -> None:
    assert parse_expires_in(0) == 0.0
    assert parse_expires_in("1.5") == 1.5
    assert parse_expires_in(" 60 ") == 60.0
    assert parse_expires_in(math.inf) is None


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", "Bearer", "bEaReR"])
def test_parse_token_response_normalises_token_type(token_type: str) -> None:
    """RFC 6749 §5.1: token_type is case insensitive."""
    response = json_response({"access_token": "at", "token_type": token_type})

    assert parse_token_response(response, REQUESTED_AT).token_type == "Bearer"


@pytest.mark.parametrize("token_type", ["mac", "DPoP", "", None, 7])
def test_parse_token_response_rejects_other_token_types(token_type: object) -> None:
    """RFC 6749 §7.1: a client must not use a token type it does not understand."""
    response = json_response({"access_token": "at", "token_type": token_type})

    with pytest.raises(ProtocolError, match="token_type"):
        parse_token_response(response, REQUESTED_AT)


def test_parse_token_response_without_token_type_is_rejected() -> None:
    response = json_response({"access_token": "at"})

    with pytest.raises(ProtocolError, match="token_type"):
        parse_token_response(response, REQUESTED_AT)


def test_parse_token_response_html_500_is_protocol_error() -> None:
    """RFC 6749 §5.2: an error page without an OAuth error gives status and excerpt."""
    page = (
        "<!doctype html><html><head><title>500 Internal Server Error</title>"
        "</head><body>\n\n<h1>Internal Server Error</h1>\n"
        + "<p>The server encountered an internal error.</p>\n" * 200
        + "</body></html>"
    )
    response = raw_response(page, status=500, content_type="text/html")

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(response, REQUESTED_AT)

    error = caught.value
    assert not isinstance(error, json.JSONDecodeError)
    assert error.status == 500
    assert "HTTP 500" in str(error)
    assert "text/html" in str(error)
    assert error.excerpt.startswith("<!doctype html>")
    assert len(error.excerpt) <= EXCERPT_LENGTH
    assert "\n" not in error.excerpt
    assert len(str(error)) < EXCERPT_LENGTH + 200


def test_parse_token_response_empty_body_is_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="did not send JSON"):
        parse_token_response(raw_response(""), REQUESTED_AT)


def test_parse_token_response_invalid_form_is_protocol_error() -> None:
    response = raw_response(
        "this is not a form", content_type="application/x-www-form-urlencoded"
    )

    with pytest.raises(ProtocolError, match="invalid form body"):
        parse_token_response(response, REQUESTED_AT)


@pytest.mark.parametrize("access_token", [None, "", 42, ["at"]])
def test_parse_token_response_needs_access_token(access_token: object) -> None:
    body: dict[str, object] = {"token_type": "Bearer"}
    if access_token is not None:
        body["access_token"] = access_token

    with pytest.raises(ProtocolError, match="access_token"):
        parse_token_response(json_response(body), REQUESTED_AT)


@pytest.mark.parametrize("text", ["[1, 2]", '"at"', "null", "42", "true"])
def test_parse_token_response_non_object_json_is_rejected(text: str) -> None:
    with pytest.raises(ProtocolError, match="not an object"):
        parse_token_response(raw_response(text), REQUESTED_AT)


def test_token_error_status_without_code() -> None:
    response = json_response({"message": "maintenance"}, status=503)

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(response, REQUESTED_AT)

    assert caught.value.status == 503
    assert "maintenance" in caught.value.excerpt


def test_parse_token_response_excerpt_masks_tokens() -> None:
    response = json_response(
        {"access_token": "at-6655-secret", "refresh_token": "rt-4433-secret"},
        status=502,
    )

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(response, REQUESTED_AT)

    assert "at-6655-secret" not in str(caught.value)
    assert "rt-4433-secret" not in str(caught.value)


def test_parse_token_response_masks_echoed_form_in_html() -> None:
    page = (
        "<html><body><p>Bad request: grant_type=authorization_code&amp;"
        "code=code-2211-secret&amp;code_verifier=verifier-3322-secret</p>"
        "</body></html>"
    )

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(raw_response(page, 400, "text/html"), REQUESTED_AT)

    assert "code-2211-secret" not in str(caught.value)
    assert "verifier-3322-secret" not in str(caught.value)
    assert "code=[secure]" in caught.value.excerpt


def test_parse_token_response_masks_echo_inside_json_value() -> None:
    body = {"message": "failed", "request": "refresh_token=rt-5544-secret&x=1"}

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(json_response(body, status=500), REQUESTED_AT)

    assert "rt-5544-secret" not in str(caught.value)
    assert "x=1" in caught.value.excerpt


def test_oauth_error_description_masks_echoed_secret() -> None:
    body = {
        "error": "invalid_request",
        "error_description": "bad form: client_secret=cs-6677-secret&code=c-8899x",
    }

    with pytest.raises(OAuthError) as caught:
        parse_token_response(json_response(body, status=400), REQUESTED_AT)

    description = caught.value.error_description or ""
    assert "cs-6677-secret" not in description
    assert "c-8899x" not in description
    assert description.startswith("bad form: client_secret=[secure]")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=1&code=xyz&b=2", "a=1&code=[secure]&b=2"),
        ("authorization: Bearer abc.def", "authorization: [secure]"),
        ("Authorization: Basic Zm9vOmJhcg==", "Authorization: [secure]"),
        ("{'refresh_token': 'r1'}", "{'refresh_token': '[secure]'}"),
        ('"access_token":"a1"', '"access_token":"[secure]"'),
        ("code%3Dxyz", "code%3D[secure]"),
        ("grant_type=refresh_token&x=1", "grant_type=refresh_token&x=1"),
        ("barcode=123", "barcode=123"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_mask_secrets_in_text(text: str, expected: str) -> None:
    assert mask_secrets_in_text(text) == expected


def test_refresh_response_without_refresh_token_keeps_previous() -> None:
    """RFC 6749 §6: the server may omit a new refresh token."""
    previous = TokenSet("old-at", "Bearer", 1.0, "old-rt", "foo bar")
    response = json_response(
        {"access_token": "new-at", "token_type": "Bearer", "expires_in": 60}
    )

    token = parse_token_response(response, REQUESTED_AT, previous)

    assert token.access_token == "new-at"
    assert token.refresh_token == "old-rt"
    assert token.scope == "foo bar"
    assert token.expires_at == REQUESTED_AT + 60


def test_refresh_response_with_new_refresh_token_replaces_it() -> None:
    previous = TokenSet("old-at", "Bearer", 1.0, "old-rt", "foo bar")
    response = json_response(
        {
            "access_token": "new-at",
            "token_type": "Bearer",
            "refresh_token": "new-rt",
            "scope": "foo",
        }
    )

    token = parse_token_response(response, REQUESTED_AT, previous)

    assert token.refresh_token == "new-rt"
    assert token.scope == "foo"


def test_token_expiry_is_measured_from_request_time() -> None:
    response = json_response(
        {"access_token": "at", "token_type": "Bearer", "expires_in": 100}
    )

    early = parse_token_response(response, 1000.0)
    late = parse_token_response(response, 5000.0)

    assert early.expires_at == 1100.0
    assert late.expires_at == 5100.0


def test_token_set_repr_hides_tokens() -> None:
    token = TokenSet(
        "access-token-value-8877", "Bearer", None, "refresh-token-value-6655", None
    )

    assert "access-token-value-8877" not in repr(token)
    assert "refresh-token-value-6655" not in repr(token)


# --- bearer challenges and resource responses --------------------------------


def test_parse_bearer_challenge_reads_quoted_values() -> None:
    header = (
        'Bearer realm="example", error="invalid_token", '
        'error_description="The access token expired"'
    )

    assert parse_bearer_challenge(header) == {
        "realm": "example",
        "error": "invalid_token",
        "error_description": "The access token expired",
    }


def test_parse_bearer_challenge_reads_scope_and_tokens() -> None:
    header = 'bearer error=insufficient_scope, scope="read write", Realm=x'

    params = parse_bearer_challenge(header)

    assert params["error"] == "insufficient_scope"
    assert params["scope"] == "read write"
    assert params["realm"] == "x"


def test_parse_bearer_challenge_unescapes_quotes() -> None:
    params = parse_bearer_challenge(r'Bearer error_description="say \"hi\", ok"')

    assert params["error_description"] == 'say "hi", ok'


def test_parse_bearer_challenge_skips_other_schemes() -> None:
    header = 'Basic realm="basic-realm", Bearer realm="bearer-realm"'

    assert parse_bearer_challenge(header) == {"realm": "bearer-realm"}


@pytest.mark.parametrize("header", [None, "", 'Basic realm="x"'])
def test_parse_bearer_challenge_without_bearer_is_empty(header: str | None) -> None:
    assert parse_bearer_challenge(header) == {}


def test_read_resource_response_returns_body() -> None:
    result = read_resource_response(json_response({"name": "data"}))

    assert result.status == 200
    assert result.json() == {"name": "data"}


def test_read_resource_response_401_is_token_rejected() -> None:
    """RFC 6750 §3.1: invalid_token with 401."""
    response = HttpResponse(
        401,
        {"WWW-Authenticate": 'Bearer realm="r", error="invalid_token"'},
        b"",
    )

    with pytest.raises(TokenRejected) as caught:
        read_resource_response(response)

    assert caught.value.challenge["error"] == "invalid_token"


def test_read_resource_response_401_without_challenge() -> None:
    """RFC 6750 §3: a 401 may come without error details."""
    with pytest.raises(TokenRejected) as caught:
        read_resource_response(HttpResponse(401, {}, b""))

    assert caught.value.challenge == {}


def test_read_resource_response_403_carries_scope() -> None:
    """RFC 6750 §3.1: insufficient_scope with 403 names the scope needed."""
    response = HttpResponse(
        403,
        {"www-authenticate": 'Bearer error="insufficient_scope", scope="admin"'},
        b"",
    )

    with pytest.raises(ResourceError) as caught:
        read_resource_response(response)

    assert caught.value.status == 403
    assert caught.value.error == "insufficient_scope"
    assert caught.value.scope == "admin"
    assert "admin" in str(caught.value)


def test_read_resource_response_403_without_challenge() -> None:
    with pytest.raises(ResourceError) as caught:
        read_resource_response(HttpResponse(403, {}, b""))

    assert caught.value.error == "forbidden"
    assert caught.value.scope is None


def test_read_resource_response_500_is_resource_error() -> None:
    page = "<html><body>" + "Internal error. " * 100 + "</body></html>"
    response = raw_response(page, status=500, content_type="text/html")

    with pytest.raises(ResourceError) as caught:
        read_resource_response(response)

    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value)
    assert len(str(caught.value)) < EXCERPT_LENGTH + 100


def test_resource_result_json_rejects_html() -> None:
    result = read_resource_response(raw_response("<p>hi</p>", content_type="text/html"))

    with pytest.raises(ProtocolError):
        result.json()


def test_http_response_header_lookup_ignores_case() -> None:
    response = HttpResponse(200, {"Content-Type": "Text/Plain; charset=utf-8"}, b"")

    assert response.header("content-type") == "Text/Plain; charset=utf-8"
    assert response.media_type == "text/plain"


def test_http_request_body_is_form_encoded() -> None:
    request = HttpRequest("POST", "http://x/", {}, {"a": "b c", "d": "e&f"})

    assert request.body == b"a=b+c&d=e%26f"


# --- sans-IO import ----------------------------------------------------------

_BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import sys

    BLOCKED = {"requests", "sqlite3", "flask", "waitress"}

    class BlockIO(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.path.insert(0, sys.argv[1])
    sys.meta_path.insert(0, BlockIO())

    # The blocker must work, or the imports below prove nothing.
    try:
        import requests  # noqa: F401
    except ImportError:
        pass
    else:
        sys.exit("the import blocker let requests through")

    for name in sys.argv[2:]:
        importlib.import_module(name)
    loaded = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)
    if loaded:
        sys.exit(f"blocked modules were loaded: {loaded}")
    print("imported", len(sys.argv) - 2)
    """
)

CORE_MODULES = [
    "flowengine",
    "flowengine.engine",
    "flowengine.definition",
    "flowengine.grant",
    "flowengine.records",
    "flowengine.redaction",
    "flowengine.errors",
    "flowengine.oauth.config",
    "flowengine.oauth.http",
    "flowengine.oauth.pkce",
    "flowengine.oauth.protocol",
]


def run_with_io_blocked(*modules: str) -> subprocess.CompletedProcess[str]:
    package_root = str(Path(flowengine.__file__).resolve().parents[1])
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", _BLOCKED_IMPORT, package_root, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_core_imports_without_io_libraries() -> None:
    result = run_with_io_blocked(*CORE_MODULES)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"imported {len(CORE_MODULES)}"


def test_io_blocker_rejects_http_adapter() -> None:
    result = run_with_io_blocked("flowengine.adapters.http")

    assert result.returncode != 0
    assert "requests is blocked" in result.stderr
