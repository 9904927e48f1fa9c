"""Property tests of the callback and token response parsers.

Generated inputs, valid or not, must either parse to the values they were
built from or raise one of flowengine's own errors. No other exception may
escape.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from flowengine.errors import (
    FlowEngineError,
    OAuthError,
    ProtocolError,
    ResourceError,
)
from flowengine.oauth.http import HttpResponse
from flowengine.oauth.protocol import (
    MAX_TOKEN_LIFETIME,
    TokenRejected,
    TokenSet,
    parse_bearer_challenge,
    parse_callback,
    parse_expires_in,
    parse_token_response,
    read_resource_response,
)
from flowengine.testing import (
    CallbackCase,
    TokenResponseCase,
    bearer_tokens,
    callbacks,
    scopes,
    token_responses,
)

REDIRECT_URI = "http://localhost:9000/callback"
REQUESTED_AT = 1_700_000_000.0

texts = st.text(st.characters(exclude_categories=["Cs"]))
states = st.one_of(bearer_tokens(), texts.filter(bool))
times = st.floats(min_value=0, max_value=4e9)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["access_token", "token_type", "expires_in", "refresh_token", "error"]
            )
            | texts,
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


def json_token(fields: dict[str, object]) -> HttpResponse:
    body = json.dumps(fields).encode("utf-8")
    return HttpResponse(200, {"Content-Type": "application/json"}, body)


# --- callbacks -------------------------------------------------------------


def check_callback_case(case: CallbackCase, text: str) -> None:
    if case.kind == "invalid":
        with pytest.raises(ProtocolError):
            parse_callback(text)
        return
    callback = parse_callback(text)
    assert callback.state == case.state
    if case.kind == "code":
        assert callback.error is None
        assert callback.code == case.code
    else:
        assert callback.error == case.error


@given(data=st.data(), expected=states)
def test_callback_cases_parse_as_generated(data: st.DataObject, expected: str) -> None:
    case = data.draw(callbacks(expected_state=expected), label="case")

    check_callback_case(case, case.url(REDIRECT_URI))


@given(case=callbacks())
def test_callback_query_alone_parses_like_url(case: CallbackCase) -> None:
    check_callback_case(case, case.query)


@given(code=st.one_of(bearer_tokens(), texts.filter(bool)), state=states)
def test_callback_url_round_trips(code: str, state: str) -> None:
    query = urllib.parse.urlencode({"code": code, "state": state})

    callback = parse_callback(f"{REDIRECT_URI}?{query}")

    assert callback.code == code
    assert callback.state == state
    assert callback.error is None


@given(query=st.one_of(texts, st.binary().map(lambda raw: raw.decode("latin-1"))))
@example(query="code=a&code=b&state=s")
@example(query="state=s&error=%FF")
@example(query="&" * 60 + "code=c")
def test_garbage_callback_query_raises_only_protocol_error(query: str) -> None:
    try:
        callback = parse_callback(query)
    except ProtocolError:
        return
    assert callback.code is not None or callback.error is not None


@given(host=st.text(min_size=1).map(lambda text: f"[{text}"))
@example(host="[")
@example(host="[zz]")
def test_garbage_callback_host_raises_only_protocol_error(host: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_callback(f"http://{host}/callback?code=c&state=s")


def test_callback_error_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        parse_callback("error=access_denied%0A&state=s")


# --- token responses -------------------------------------------------------


def check_token_case(case: TokenResponseCase, requested_at: float) -> None:
    if case.outcome == "invalid":
        with pytest.raises(ProtocolError):
            parse_token_response(case.response, requested_at)
        return
    if case.outcome == "oauth_error":
        with pytest.raises(OAuthError) as caught:
            parse_token_response(case.response, requested_at)
        assert caught.value.error == case.error
        assert caught.value.status == case.response.status
        return
    token = parse_token_response(case.response, requested_at)
    assert token.access_token == case.access_token
    assert token.token_type == "Bearer"
    assert token.refresh_token == case.refresh_token
    if case.lifetime is None:
        assert token.expires_at is None
    else:
        assert token.expires_at == requested_at + case.lifetime


@given(case=token_responses(), requested_at=times)
def test_token_responses_parse_as_generated(
    case: TokenResponseCase, requested_at: float
) -> None:
    check_token_case(case, requested_at)


@given(
    access_token=bearer_tokens(),
    refresh_token=st.none() | bearer_tokens(),
    lifetime=st.none() | st.integers(min_value=0, max_value=MAX_TOKEN_LIFETIME),
    scope=st.none() | scopes(),
)
def test_token_json_round_trips(
    access_token: str,
    refresh_token: str | None,
    lifetime: int | None,
    scope: str | None,
) -> None:
    fields: dict[str, object] = {"access_token": access_token, "token_type": "Bearer"}
    optional = {"refresh_token": refresh_token, "expires_in": lifetime, "scope": scope}
    fields.update({k: v for k, v in optional.items() if v is not None})

    token = parse_token_response(json_token(fields), REQUESTED_AT)

    expected_expiry = None if lifetime is None else REQUESTED_AT + lifetime
    assert token == TokenSet(
        access_token, "Bearer", expected_expiry, refresh_token, scope
    )


@given(access_token=bearer_tokens(), previous_refresh=bearer_tokens(), scope=texts)
def test_refresh_response_without_refresh_token_keeps_old(
    access_token: str, previous_refresh: str, scope: str
) -> None:
    previous = TokenSet("old-access", "Bearer", None, previous_refresh, scope)
    response = json_token({"access_token": access_token, "token_type": "bearer"})

    token = parse_token_response(response, REQUESTED_AT, previous)

    assert token.access_token == access_token
    assert token.refresh_token == previous_refresh
    assert token.scope == scope


media_types = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/html", ""]
)
statuses = st.sampled_from([200, 201, 204, 301, 400, 401, 403, 500, 503])


@given(status=statuses, media_type=media_types, body=st.binary(max_size=300))
@example(status=200, media_type="application/json", body=b"\xff\xfe\xfd")
@example(status=200, media_type="application/x-www-form-urlencoded", body=b"a=1&a=2")
@example(status=500, media_type="application/json", body=b"[" * 50_000)
def test_garbage_token_bytes_raise_only_flowengine_errors(
    status: int, media_type: str, body: bytes
) -> None:
    response = HttpResponse(status, {"Content-Type": media_type}, body)
    with contextlib.suppress(FlowEngineError):
        parse_token_response(response, REQUESTED_AT)


@given(status=statuses, value=json_values)
def test_garbage_token_json_raises_only_flowengine_errors(
    status: int, value: object
) -> None:
    body = json.dumps(value).encode("utf-8")
    response = HttpResponse(status, {"Content-Type": "application/json"}, body)
    try:
        token = parse_token_response(response, REQUESTED_AT)
    except FlowEngineError:
        return
    assert isinstance(value, dict)
    assert token.access_token == value["access_token"]


@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["access_token", "token_type", "expires_in", "error"]),
            texts,
        ),
        max_size=8,
    )
)
def test_form_token_repeated_fields_raise_typed_errors(
    pairs: list[tuple[str, str]],
) -> None:
    body = urllib.parse.urlencode(pairs).encode("ascii")
    response = HttpResponse(
        200, {"Content-Type": "application/x-www-form-urlencoded"}, body
    )
    with contextlib.suppress(FlowEngineError):
        parse_token_response(response, REQUESTED_AT)


@given(value=json_values)
@example(value=10**400)
@example(value=float("nan"))
@example(value=1e308)
def test_expires_in_is_unknown_or_finite_lifetime(value: object) -> None:
    lifetime = parse_expires_in(value)

    if lifetime is not None:
        assert lifetime >= 0
        assert lifetime <= MAX_TOKEN_LIFETIME


def test_deeply_nested_error_page_raises_protocol_error() -> None:
    # Shallow enough for the JSON decoder, too deep to redact recursively.
    depth = 700
    body = b'{"a":' * depth + b"1" + b"}" * depth
    response = HttpResponse(500, {"Content-Type": "application/json"}, body)

    with pytest.raises(ProtocolError):
        parse_token_response(response, REQUESTED_AT)


def test_token_error_with_trailing_newline_is_rejected() -> None:
    response = json_token({"error": "invalid_grant\n"})

    with pytest.raises(ProtocolError):
        parse_token_response(response, REQUESTED_AT)


# --- the resource's response ----------------------------------------------


@given(header=texts)
@example(header='Bearer realm="a\\"b", error=invalid_token, error=other')
def test_bearer_challenge_parses_any_header(header: str) -> None:
    params = parse_bearer_challenge(header)

    assert all(isinstance(value, str) for value in params.values())


@given(
    status=st.integers(min_value=100, max_value=599),
    challenge=st.none() | texts,
    body=st.binary(max_size=100),
)
def test_resource_answer_is_result_or_typed_refusal(
    status: int, challenge: str | None, body: bytes
) -> None:
    headers = {} if challenge is None else {"WWW-Authenticate": challenge}
    response = HttpResponse(status, headers, body)
    try:
        result = read_resource_response(response)
    except TokenRejected:
        assert status == 401
        return
    except ResourceError as error:
        assert error.status == status
        return
    assert 200 <= status < 300
    assert result.body == body


@pytest.mark.parametrize(
    "raw_token",
    [b'"tok\\u20acen"', b'"x\\r\\nX-Injected: 1"', b'"tok\xff"'],
    ids=["non-latin-1", "line break", "not UTF-8"],
)
def test_token_outside_vschar_is_rejected(raw_token: bytes) -> None:
    body = b'{"access_token": ' + raw_token + b', "token_type": "Bearer"}'
    response = HttpResponse(200, {"Content-Type": "application/json"}, body)

    with pytest.raises(ProtocolError):
        parse_token_response(response, REQUESTED_AT)
