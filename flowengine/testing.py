"""Property-test flows with hypothesis: strategies, fakes and a stateful test.

The module needs hypothesis (`pip install 'flowengine[test]'`). It contains:

- `FakeClock`, a clock that moves only when a test moves it, and
  `clock_moves()`, the moves to try: small steps, large jumps and steps back.
- `ScriptedHttp`, an HTTP adapter for `OAuthClient(http=...)` that returns
  replies from a queue or a function and records every request it was sent.
- `callbacks()` and `token_responses()`, generated authorization responses
  and token endpoint responses, each paired with the outcome that a correct
  client must reach.
- `flow_state_machine()`, which builds a hypothesis `RuleBasedStateMachine`
  from a flow definition: one rule per trigger, fired whether or not the
  trigger is valid in the current state, and the engine's invariants checked
  after every step.

A few lines test a flow of your own::

    Machine = flow_state_machine(definition, registry)
    TestMyFlow = Machine.TestCase
"""

from __future__ import annotations

import dataclasses
import json
import string
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

try:
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "flowengine.testing needs hypothesis; install it with "
        "pip install 'flowengine[test]'"
    ) from exc

from flowengine.adapters.memory import MemoryStore
from flowengine.definition import FlowDefinition, Registry
from flowengine.engine import Clock, Engine, FireResult, replay
from flowengine.errors import FlowEngineError, InvalidTriggerError, TransportError
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.oauth.protocol import MAX_TOKEN_LIFETIME
from flowengine.records import AuditEvent, FlowRecord

__all__ = [
    "CallbackCase",
    "FakeClock",
    "FireOutcome",
    "FlowStateMachine",
    "ScriptedHttp",
    "SentRequest",
    "TokenResponseCase",
    "UnexpectedRequestError",
    "bearer_tokens",
    "callbacks",
    "clock_moves",
    "flow_state_machine",
    "json_response",
    "scopes",
    "scripted_timeout",
    "token_responses",
]

# 2023-11-14T22:13:20Z: a fixed start, so that generated runs repeat exactly.
DEFAULT_START = 1_700_000_000.0

_DAY = 86_400.0
_YEAR = 365 * _DAY

# --- time ------------------------------------------------------------------


class FakeClock:
    """A clock in POSIX seconds that moves only through `advance` and `set`.

    Pass it as `clock=` to `Engine` or `OAuthClient`, and its `sleep` as
    `sleep=`, so that waiting moves the clock instead of blocking the test.
    """

    def __init__(self, start: float = DEFAULT_START) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock by `seconds`; a negative value moves it back."""
        self._now += seconds

    def set(self, when: float) -> None:
        """Move the clock to the POSIX time `when`, forward or back."""
        self._now = float(when)

    def sleep(self, seconds: float) -> None:
        """Advance the clock by `seconds` at once, as a stand-in for sleeping."""
        self.advance(max(seconds, 0.0))


def clock_moves(*, backwards: bool = True) -> st.SearchStrategy[float]:
    """Generate clock moves in seconds: small steps, large jumps, steps back.

    Args:
        backwards: include negative moves, as when a wall clock is corrected.
    """
    forward = st.one_of(
        st.sampled_from([0.0, 0.001, 1.0, 29.999, 30.0, 30.001, 60.0, 3600.0]),
        st.floats(min_value=0.0, max_value=120.0),
        st.floats(min_value=0.0, max_value=2 * 3600.0),
        st.floats(min_value=_DAY, max_value=10 * _YEAR),
    )
    if not backwards:
        return forward
    back = st.one_of(
        st.floats(min_value=-120.0, max_value=0.0),
        st.floats(min_value=-10 * _YEAR, max_value=-_DAY),
    )
    return st.one_of(forward, back)


# --- HTTP ------------------------------------------------------------------


class UnexpectedRequestError(AssertionError):
    """`ScriptedHttp` was sent a request that it has no reply for.

    It derives from AssertionError on purpose: the client under test sent a
    request that the test did not expect, and no error handling of the
    client should swallow that.
    """


Reply = HttpResponse | TransportError
Responder = Callable[[HttpRequest], Reply]


@dataclasses.dataclass(frozen=True)
class SentRequest:
    """One request that `ScriptedHttp` received, with its reply.

    `sent_at` is the clock's time when the request was sent, or None when
    the adapter has no clock. `reply` is the response returned or the
    TransportError raised.
    """

    request: HttpRequest
    reply: Reply
    sent_at: float | None

    @property
    def url(self) -> str:
        return self.request.url

    def form_value(self, name: str) -> str | None:
        """Return the form field `name` of the request body, if present."""
        form = self.request.form or {}
        return form.get(name)

    @property
    def bearer_token(self) -> str | None:
        """The token of a `Bearer` Authorization header, if one was sent."""
        for key, value in self.request.headers.items():
            if key.lower() != "authorization":
                continue
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer":
                return token
        return None


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """Build an HttpResponse with `payload` encoded as a JSON body."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    return HttpResponse(status, all_headers, json.dumps(payload).encode("utf-8"))


def scripted_timeout(url: str) -> TransportError:
    """Build the TransportError that an adapter raises when `url` timed out."""
    return TransportError(f"scripted timeout calling {url}", url=url)


class ScriptedHttp:
    """An HTTP adapter that replies from a script and records every request.

    A reply is either an HttpResponse, returned as is, or a TransportError,
    raised as a network failure would be. For each request the adapter takes
    the oldest reply queued for its URL; when there is none it calls
    `responder`, and without a responder it raises UnexpectedRequestError.

    Args:
        clock: stamps each recorded request with the time it was sent.
        responder: computes a reply for requests that have no queued reply.
    """

    def __init__(
        self, *, clock: Clock | None = None, responder: Responder | None = None
    ) -> None:
        self.clock = clock
        self.responder = responder
        self.sent: list[SentRequest] = []
        self.closed = False
        self._queues: dict[str, list[Reply]] = {}
        self._listeners: list[Callable[[SentRequest], None]] = []

    def queue(self, url: str, *replies: Reply) -> None:
        """Queue `replies` for requests to `url`, to be used in order."""
        self._queues.setdefault(url, []).extend(replies)

    def queued(self, url: str) -> int:
        """Return how many queued replies for `url` are still unused."""
        return len(self._queues.get(url, []))

    def clear(self) -> None:
        """Drop every queued reply; the record of sent requests is kept."""
        self._queues.clear()

    def subscribe(self, listener: Callable[[SentRequest], None]) -> None:
        """Call `listener` with each request once its reply is chosen."""
        self._listeners.append(listener)

    def send(self, request: HttpRequest) -> HttpResponse:
        """Record `request` and return or raise its scripted reply.

        Raises:
            TransportError: the scripted reply is a network failure.
            UnexpectedRequestError: no reply is queued and no responder is set.
        """
        reply = self._reply_for(request)
        sent_at = None if self.clock is None else self.clock.now()
        record = SentRequest(request, reply, sent_at)
        self.sent.append(record)
        for listener in self._listeners:
            listener(record)
        if isinstance(reply, TransportError):
            raise reply
        return reply

    def _reply_for(self, request: HttpRequest) -> Reply:
        queue = self._queues.get(request.url)
        if queue:
            return queue.pop(0)
        if self.responder is not None:
            return self.responder(request)
        raise UnexpectedRequestError(
            f"no reply is queued for {request.method} {request.url} and no "
            "responder is set; queue one with ScriptedHttp.queue"
        )

    def sent_to(self, url: str) -> list[SentRequest]:
        """Return the recorded requests whose URL is `url`, oldest first."""
        return [sent for sent in self.sent if sent.url == url]

    def exchanged_codes(self) -> list[str]:
        """Return the authorization codes sent in code exchange requests."""
        return [
            code
            for sent in self.sent
            if sent.form_value("grant_type") == "authorization_code"
            and (code := sent.form_value("code")) is not None
        ]

    def refresh_tokens_sent(self) -> list[str]:
        """Return the refresh tokens sent in refresh requests, in order."""
        return [
            token
            for sent in self.sent
            if sent.form_value("grant_type") == "refresh_token"
            and (token := sent.form_value("refresh_token")) is not None
        ]

    def presented_tokens(self, url: str | None = None) -> list[str]:
        """Return the bearer tokens presented, to `url` only if it is given."""
        return [
            token
            for sent in self.sent
            if (url is None or sent.url == url)
            and (token := sent.bearer_token) is not None
        ]

    def close(self) -> None:
        self.closed = True


# --- token and code values -------------------------------------------------

# RFC 6750 §2.1 b64token: the characters a bearer token may contain.
_B64TOKEN_CHARS = string.ascii_letters + string.digits + "-._~+/"

# RFC 6749 §3.3: a scope token is printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')

# RFC 6749 §A.7: an OAuth error code is printable ASCII except '"' and '\'.
_ERROR_CODE_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')

STANDARD_ERROR_CODES = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "access_denied",
    "server_error",
    "temporarily_unavailable",
)


def bearer_tokens(*, max_size: int = 64) -> st.SearchStrategy[str]:
    """Generate token values in RFC 6750 b64token syntax, some very long."""
    short = st.builds(
        lambda body, padding: body + "=" * padding,
        st.text(_B64TOKEN_CHARS, min_size=1, max_size=max_size),
        st.integers(min_value=0, max_value=2),
    )
    # Repeating a short piece makes a long value without drawing every
    # character, which would exceed hypothesis' limit on generated data.
    long = st.builds(
        lambda piece, times: piece * times,
        st.text(_B64TOKEN_CHARS, min_size=1, max_size=8),
        st.integers(min_value=500, max_value=5_000),
    )
    return st.one_of(short, short, short, long)


def scopes(*, max_tokens: int = 4) -> st.SearchStrategy[str]:
    """Generate scope values: RFC 6749 §3.3 scope tokens joined by spaces."""
    scope_token = st.text(_SCOPE_TOKEN_CHARS, min_size=1, max_size=16)
    return st.lists(scope_token, max_size=max_tokens).map(" ".join)


def _error_codes() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(STANDARD_ERROR_CODES),
        st.text(_ERROR_CODE_CHARS, min_size=1, max_size=40),
    )


def _plain_text(max_size: int = 40) -> st.SearchStrategy[str]:
    # Any text that UTF-8 can encode: lone surrogates cannot go in a URL.
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=max_size)


# --- callbacks -------------------------------------------------------------

CallbackKind = Literal["code", "error", "invalid"]


@dataclasses.dataclass(frozen=True)
class CallbackCase:
    """A generated authorization response and what a client must make of it.

    `kind` is "code" or "error" when the query parses as an authorization
    response with that outcome (RFC 6749 §4.1.2 and §4.1.2.1), and "invalid"
    when the parser must reject it with a ProtocolError. `state_matches` is
    true when its `state` equals the expected one, so only a "code" case
    with a matching state may deliver its code. `code`, `state` and `error`
    are the values the parser must read back.
    """

    query: str
    kind: CallbackKind
    state_matches: bool
    label: str
    code: str | None = None
    state: str | None = None
    error: str | None = None

    def url(self, redirect_uri: str) -> str:
        """Return the callback as a redirect to `redirect_uri`."""
        return f"{redirect_uri}?{self.query}"


def _encode(pairs: Sequence[tuple[str, str]]) -> str:
    return urllib.parse.urlencode(list(pairs))


def _callback_codes() -> st.SearchStrategy[str]:
    return st.one_of(bearer_tokens(), _plain_text().filter(bool))


def _other_state(expected: str | None) -> st.SearchStrategy[str]:
    return st.one_of(bearer_tokens(), _plain_text().filter(bool)).filter(
        lambda state: state != expected
    )


@st.composite
def _code_callbacks(
    draw: st.DrawFn, expected: str | None, codes: st.SearchStrategy[str]
) -> CallbackCase:
    code = draw(codes)
    extras = draw(st.lists(st.sampled_from(["scope", "session_state"]), unique=True))
    extra_pairs = [(name, draw(_plain_text())) for name in extras]
    choice = draw(st.sampled_from(["valid", "wrong state", "missing state"]))
    if choice == "valid" and expected is not None:
        state: str | None = expected
    elif choice == "missing state":
        state = None
    else:
        state = draw(_other_state(expected))
    pairs = [("code", code), *extra_pairs]
    if state is not None:
        pairs.insert(draw(st.integers(0, len(pairs))), ("state", state))
    elif draw(st.booleans()):
        pairs.append(("state", ""))  # an empty value counts as missing
    matches = state is not None and state == expected
    label = "wrong state"
    if matches:
        label = "valid"
    elif state is None:
        label = "missing state"
    return CallbackCase(_encode(pairs), "code", matches, label, code, state)


@st.composite
def _error_callbacks(draw: st.DrawFn, expected: str | None) -> CallbackCase:
    error = draw(_error_codes())
    pairs = [("error", error)]
    if draw(st.booleans()):
        pairs.append(("error_description", draw(_plain_text(200))))
    if draw(st.booleans()):
        pairs.append(("error_uri", "https://as.example/errors/" + error[:8]))
    if draw(st.booleans()):
        pairs.append(("code", draw(bearer_tokens())))  # the error still wins
    choice = draw(st.sampled_from(["matching state", "wrong state", "no state"]))
    state: str | None = None
    if choice == "matching state" and expected is not None:
        state = expected
    elif choice == "wrong state":
        state = draw(_other_state(expected))
    if state is not None:
        pairs.append(("state", state))
    matches = state is not None and state == expected
    label = f"error with {choice}" if expected is not None else "error"
    return CallbackCase(_encode(pairs), "error", matches, label, None, state, error)


@st.composite
def _invalid_callbacks(draw: st.DrawFn, expected: str | None) -> CallbackCase:
    state = expected or draw(bearer_tokens())
    code = draw(bearer_tokens())
    valid = _encode([("code", code), ("state", state)])
    choice = draw(
        st.sampled_from(
            [
                "duplicate state",
                "duplicate code",
                "neither code nor error",
                "non-UTF-8 escape",
                "forbidden error characters",
                "too many parameters",
                "empty query",
                "random text",
            ]
        )
    )
    if choice == "duplicate state":
        query = valid + "&" + _encode([("state", draw(_plain_text()))])
    elif choice == "duplicate code":
        query = valid + "&" + _encode([("code", draw(_plain_text()))])
    elif choice == "neither code nor error":
        query = _encode([("state", state), ("scope", draw(_plain_text()))])
    elif choice == "non-UTF-8 escape":
        byte = draw(st.integers(min_value=0x80, max_value=0xFF))
        query = f"{valid}&note=%{byte:02X}"
    elif choice == "forbidden error characters":
        bad = draw(st.sampled_from(['"', "\\", "\u00e9", "\x7f", "\n"]))
        error = draw(_plain_text(10)) + bad
        query = _encode([("error", error), ("state", state)])
    elif choice == "too many parameters":
        count = draw(st.integers(min_value=51, max_value=500))
        query = valid + "".join(f"&p{i}=x" for i in range(count))
    elif choice == "random text":
        # The escape at the end keeps it invalid. '#' would move the escape
        # into a fragment and '[' or ']' would form a host.
        alphabet = st.characters(exclude_categories=["Cs"], exclude_characters="#[]")
        query = draw(st.text(alphabet, max_size=60)) + "&note=%FF"
    else:
        query = ""
    return CallbackCase(query, "invalid", False, choice)


def callbacks(
    expected_state: str | None = None,
    *,
    codes: st.SearchStrategy[str] | None = None,
    kinds: Sequence[CallbackKind] = ("code", "error", "invalid"),
) -> st.SearchStrategy[CallbackCase]:
    """Generate authorization responses for a grant that expects a state.

    Cases with a code carry the expected state, another state or none; error
    cases likewise. Invalid cases repeat a parameter, carry neither code nor
    error, hold a percent escape that is not UTF-8, an error code with
    characters RFC 6749 §A.7 forbids, more than 50 parameters, random text,
    or nothing.

    Args:
        expected_state: the state value of the pending authorization request.
            Without it no case has a matching state.
        codes: the authorization codes to put in callbacks; any non-empty
            text by default.
        kinds: which kinds of case to generate.
    """
    chosen = codes if codes is not None else _callback_codes()
    options: list[st.SearchStrategy[CallbackCase]] = []
    if "code" in kinds:
        options.append(_code_callbacks(expected_state, chosen))
    if "error" in kinds:
        options.append(_error_callbacks(expected_state))
    if "invalid" in kinds:
        options.append(_invalid_callbacks(expected_state))
    if not options:
        raise ValueError(f"kinds {kinds!r} names no kind; use code, error, invalid")
    return st.one_of(options)


# --- token responses -------------------------------------------------------

TokenOutcome = Literal["token", "oauth_error", "invalid"]


@dataclasses.dataclass(frozen=True)
class TokenResponseCase:
    """A generated token endpoint response and how a client must read it.

    `outcome` is "token" when the response is a valid token (RFC 6749 §5.1),
    "oauth_error" when it is an OAuth error response (§5.2), whatever its
    HTTP status, and "invalid" when the parser must reject it with a
    ProtocolError. For a token, `access_token`, `refresh_token` and
    `lifetime` (seconds, None when unknown) are the values the parser must
    read; for an error, `error` is its code.
    """

    response: HttpResponse
    outcome: TokenOutcome
    label: str
    access_token: str | None = None
    refresh_token: str | None = None
    lifetime: float | None = None
    error: str | None = None


_JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/javascript",
    "",
]

# Values of expires_in that leave the lifetime unknown (RFC 6749 §5.1 makes
# the field optional): JSON text, so that NaN and huge integers go through
# the real JSON decoder.
_UNKNOWN_LIFETIME_JSON = [
    "null",
    '""',
    "-1",
    "-0.5",
    "true",
    "false",
    '"soon"',
    "[]",
    "{}",
    "NaN",
    "Infinity",
    '"inf"',
    "1" + "0" * 400,
]


def _lifetimes() -> st.SearchStrategy[float | None]:
    return st.one_of(
        st.none(),
        st.integers(min_value=0, max_value=10**9).map(float),
        st.floats(min_value=0.0, max_value=1e12),
        st.just(sys.float_info.max),
    )


@st.composite
def _expires_in_json(draw: st.DrawFn, lifetime: float | None) -> str | None:
    """Return the JSON text of an expires_in value meaning `lifetime`.

    None means the field is left out.
    """
    if lifetime is None:
        return draw(st.one_of(st.none(), st.sampled_from(_UNKNOWN_LIFETIME_JSON)))
    forms = [json.dumps(lifetime), json.dumps(str(lifetime))]
    if lifetime.is_integer() and lifetime < 2**53:
        forms += [str(int(lifetime)), json.dumps(f" {int(lifetime)} ")]
    return draw(st.sampled_from(forms))


def _response(status: int, media_type: str, body: bytes) -> HttpResponse:
    headers = {"Content-Type": media_type} if media_type else {}
    return HttpResponse(status, headers, body)


def _json_object_text(fields: Sequence[tuple[str, str]]) -> str:
    # Fields are already JSON text, so raw values such as NaN survive.
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields) + "}"


@st.composite
def _success_responses(
    draw: st.DrawFn,
    access_tokens: st.SearchStrategy[str],
    refresh_tokens: st.SearchStrategy[str],
    lifetimes: st.SearchStrategy[float | None],
) -> TokenResponseCase:
    access = draw(access_tokens)
    refresh = draw(st.one_of(st.none(), refresh_tokens))
    lifetime = draw(lifetimes)
    # The parser reads an expires_in above MAX_TOKEN_LIFETIME as unknown.
    expected = lifetime
    if lifetime is not None and lifetime > MAX_TOKEN_LIFETIME:
        expected = None
    token_type = draw(st.sampled_from(["Bearer", "bearer", "BEARER"]))
    status = draw(st.sampled_from([200, 200, 200, 201]))
    fields = {"access_token": access, "token_type": token_type}
    if refresh is not None:
        fields["refresh_token"] = refresh
    if draw(st.booleans()):
        fields["scope"] = draw(scopes())
    if draw(st.booleans()):
        form = _form_success(draw, fields, status, access, refresh, lifetime)
        return dataclasses.replace(form, lifetime=expected)

    texts = [(key, json.dumps(value)) for key, value in fields.items()]
    expires_in = draw(_expires_in_json(lifetime))
    if expires_in is not None:
        texts.append(("expires_in", expires_in))
    if draw(st.booleans()):
        texts.append(("id_token_hint", json.dumps(draw(_plain_text()))))
    order = draw(st.permutations(texts))
    body = _json_object_text(order).encode("utf-8")
    media_type = draw(st.sampled_from(_JSON_TYPES))
    label = "JSON token" if expected is not None else "JSON token, unknown lifetime"
    return TokenResponseCase(
        _response(status, media_type, body),
        "token",
        label,
        access,
        refresh,
        expected,
    )


def _form_success(
    draw: st.DrawFn,
    fields: dict[str, str],
    status: int,
    access: str,
    refresh: str | None,
    lifetime: float | None,
) -> TokenResponseCase:
    if lifetime is not None:
        fields["expires_in"] = draw(
            st.sampled_from([repr(lifetime), f" {lifetime!r} "])
        )
    elif draw(st.booleans()):
        fields["expires_in"] = draw(st.sampled_from(["", "soon", "-1", "nan"]))
    body = urllib.parse.urlencode(list(draw(st.permutations(list(fields.items())))))
    return TokenResponseCase(
        _response(status, "application/x-www-form-urlencoded", body.encode("ascii")),
        "token",
        "form-encoded token",
        access,
        refresh,
        lifetime,
    )


@st.composite
def _error_responses(
    draw: st.DrawFn, error_codes: st.SearchStrategy[str]
) -> TokenResponseCase:
    error = draw(error_codes)
    status = draw(st.sampled_from([400, 400, 401, 403, 200, 500, 503]))
    fields: dict[str, object] = {"error": error}
    if draw(st.booleans()):
        fields["error_description"] = draw(
            st.one_of(_plain_text(200), st.integers(), st.none())
        )
    if draw(st.booleans()):
        fields["error_uri"] = draw(st.sampled_from(["https://as.example/e", None]))
    if draw(st.booleans()):
        fields["access_token"] = draw(bearer_tokens())  # the error still wins
    if draw(st.booleans()):
        form = {k: v for k, v in fields.items() if isinstance(v, str)}
        body = urllib.parse.urlencode(form).encode("ascii")
        response = _response(status, "application/x-www-form-urlencoded", body)
        label = "form-encoded OAuth error"
    else:
        media_type = draw(st.sampled_from(_JSON_TYPES))
        response = _response(status, media_type, json.dumps(fields).encode())
        label = f"OAuth error with HTTP {status}"
    return TokenResponseCase(response, "oauth_error", label, error=error)


def _invalid_json_bodies() -> st.SearchStrategy[tuple[str, bytes]]:
    """Generate (label, body) pairs that are not a usable JSON token object."""
    token = bearer_tokens()
    wrong_values = st.one_of(
        st.integers(), st.floats(allow_nan=False), st.none(), st.booleans(),
        st.lists(st.integers(), max_size=3), st.just(""),
    )  # fmt: skip
    nested = st.integers(min_value=1, max_value=100_000).map(
        lambda depth: b"[" * depth + b"]" * depth
    )

    def json_body(label: str, value: object) -> tuple[str, bytes]:
        return label, json.dumps(value).encode()

    return st.one_of(
        st.builds(json_body, st.just("JSON that is not an object"), wrong_values),
        st.builds(
            json_body,
            st.just("access_token missing"),
            st.fixed_dictionaries({"token_type": st.just("Bearer")}),
        ),
        st.builds(
            json_body,
            st.just("access_token of a wrong type"),
            st.fixed_dictionaries(
                {"access_token": wrong_values, "token_type": st.just("Bearer")}
            ),
        ),
        st.builds(
            json_body,
            st.just("token_type not Bearer"),
            st.fixed_dictionaries(
                {
                    "access_token": token,
                    "token_type": st.one_of(
                        st.sampled_from(["mac", "DPoP", "", "bearer ", "N_A"]),
                        wrong_values,
                    ),
                }
            ),
        ),
        st.builds(
            json_body,
            st.just("error of a wrong type or with forbidden characters"),
            st.fixed_dictionaries(
                {
                    "error": st.one_of(
                        wrong_values,
                        st.sampled_from(['bad"quote', "back\\slash", "caf\u00e9"]),
                    )
                }
            ),
        ),
        st.tuples(st.just("deeply nested JSON"), nested),
        st.tuples(
            st.just("body that is not UTF-8"),
            st.binary(max_size=64).map(lambda tail: b"\xff\xfe{" + tail),
        ),
        st.tuples(st.just("empty body"), st.just(b"")),
    )


def _server_error_pages() -> st.SearchStrategy[TokenResponseCase]:
    def page(status: int, filler: int) -> TokenResponseCase:
        html = f"<html><h1>{status} Server Error</h1>{'x' * filler}</html>"
        response = _response(status, "text/html", html.encode())
        return TokenResponseCase(response, "invalid", "5xx HTML page")

    return st.builds(
        page,
        st.sampled_from([500, 502, 503, 504]),
        st.sampled_from([0, 10, 100_000]),
    )


@st.composite
def _cut_or_redirected_tokens(
    draw: st.DrawFn, access_tokens: st.SearchStrategy[str]
) -> TokenResponseCase:
    text = json.dumps({"access_token": draw(access_tokens), "token_type": "Bearer"})
    if draw(st.booleans()):
        # Every proper prefix of a JSON object lacks its closing brace.
        cut = draw(st.integers(min_value=0, max_value=len(text) - 1))
        response = _response(200, "application/json", text[:cut].encode())
        return TokenResponseCase(response, "invalid", "truncated JSON")
    status = draw(st.sampled_from([301, 302, 303, 307]))
    response = _response(status, "application/json", text.encode())
    return TokenResponseCase(response, "invalid", "token body with a 3xx status")


def _bad_forms() -> st.SearchStrategy[TokenResponseCase]:
    def form(body: bytes) -> TokenResponseCase:
        response = _response(200, "application/x-www-form-urlencoded", body)
        return TokenResponseCase(response, "invalid", "malformed form body")

    return st.builds(form, st.sampled_from([b"access_token", b"a&b", b"=&=", b"&&"]))


@st.composite
def _bad_json(draw: st.DrawFn) -> TokenResponseCase:
    label, body = draw(_invalid_json_bodies())
    status = draw(st.sampled_from([200, 200, 400, 500]))
    response = _response(status, draw(st.sampled_from(_JSON_TYPES)), body)
    return TokenResponseCase(response, "invalid", label)


def _invalid_responses(
    access_tokens: st.SearchStrategy[str],
) -> st.SearchStrategy[TokenResponseCase]:
    return st.one_of(
        _server_error_pages(),
        _cut_or_redirected_tokens(access_tokens),
        _bad_forms(),
        _bad_json(),
    )


def token_responses(
    *,
    access_tokens: st.SearchStrategy[str] | None = None,
    refresh_tokens: st.SearchStrategy[str] | None = None,
    lifetimes: st.SearchStrategy[float | None] | None = None,
    error_codes: st.SearchStrategy[str] | None = None,
    outcomes: Sequence[TokenOutcome] = ("token", "oauth_error", "invalid"),
) -> st.SearchStrategy[TokenResponseCase]:
    """Generate token endpoint responses with the outcome each must have.

    Tokens come as JSON (in any field order, with or without a JSON media
    type, expires_in as number, string or an unknown-lifetime value such as
    null, -1 or a huge integer) or form-encoded. OAuth errors come with 4xx,
    5xx and also HTTP 200. Invalid responses include 5xx HTML pages,
    truncated JSON, JSON that is not an object, wrong field types, a wrong
    token_type, malformed form bodies, bodies that are not UTF-8, deeply
    nested JSON and empty bodies.

    Args:
        access_tokens: values for access_token; b64token text by default.
        refresh_tokens: values for refresh_token, which is sometimes left
            out; b64token text by default.
        lifetimes: token lifetimes in seconds, None for an unknown lifetime.
            A lifetime above MAX_TOKEN_LIFETIME (ten years) is expected to
            parse as unknown.
        error_codes: OAuth error codes; standard and made-up codes by default.
        outcomes: which outcomes to generate.
    """
    access = access_tokens if access_tokens is not None else bearer_tokens()
    refresh = refresh_tokens if refresh_tokens is not None else bearer_tokens()
    lives = lifetimes if lifetimes is not None else _lifetimes()
    errors = error_codes if error_codes is not None else _error_codes()
    options: list[st.SearchStrategy[TokenResponseCase]] = []
    if "token" in outcomes:
        options.append(_success_responses(access, refresh, lives))
    if "oauth_error" in outcomes:
        options.append(_error_responses(errors))
    if "invalid" in outcomes:
        options.append(_invalid_responses(access))
    if not options:
        raise ValueError(
            f"outcomes {outcomes!r} names no outcome; use token, oauth_error, invalid"
        )
    return st.one_of(options)


# --- the stateful test of a flow definition --------------------------------

Invariant = Callable[[FlowRecord, Sequence[AuditEvent]], object]
InputStrategy = st.SearchStrategy[Mapping[str, Any]]
TriggerInputs = Mapping[str, InputStrategy] | Callable[[str], InputStrategy]
FireOutcome = FireResult | FlowEngineError


class FlowStateMachine(RuleBasedStateMachine):
    """A stateful test that fires a definition's triggers on one flow.

    Build subclasses with `flow_state_machine`. Each instance drives one
    flow, created in the definition's initial state, through an `Engine`
    with a `MemoryStore` and a `FakeClock`. Every rule checks its own step:

    - a trigger that is not valid in the state raises InvalidTriggerError
      and changes neither the record (state, version, data) nor the audit
      trail;
    - a valid trigger either moves the flow to one of the destinations the
      table allows, with one audit event for the transition, or raises a
      FlowEngineError, keeps state and data, and audits the failure.

    After every step the invariants hold. The state is one of the
    definition's and the destination of the last audit event. The event
    sequence numbers count up from 0 to the record's version. Replaying the
    trail reproduces the state, and each of `flow_invariants` passes.

    Override `build_engine` to run the flow through another engine, such as
    an `OAuthClient`'s, and `on_fired` to follow what each trigger did.
    """

    definition: ClassVar[FlowDefinition]
    registry: ClassVar[Registry]
    engine_context: ClassVar[Any] = None
    flow_invariants: ClassVar[tuple[Invariant, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.engine = self.build_engine()
        self.flow_id = self.engine.create().id

    def build_engine(self) -> Engine:
        """Return the engine the flow runs on, here a new in-memory one."""
        return Engine(
            self.definition,
            self.registry,
            MemoryStore(),
            self.clock,
            context=self.engine_context,
        )

    def on_fired(
        self, trigger: str, inputs: Mapping[str, Any], outcome: FireOutcome
    ) -> None:
        """Receive the FireResult or FlowEngineError of each fired trigger.

        Does nothing here. Subclasses override it to keep a model of the flow.
        """

    def record(self) -> FlowRecord:
        """Return the flow's stored record."""
        return self.engine.load(self.flow_id)

    def trail(self) -> list[AuditEvent]:
        """Return the flow's audit trail, oldest first."""
        return self.engine.events(self.flow_id)

    def fire_and_check(self, trigger: str, inputs: Mapping[str, Any]) -> FireOutcome:
        """Fire `trigger` with `inputs` and check the step against the table.

        Raises:
            AssertionError: the engine broke a rule of the table.
        """
        before = self.record()
        trail = self.trail()
        valid = trigger in self.definition.triggers_from(before.state)
        outcome: FireOutcome
        try:
            outcome = self.engine.fire(self.flow_id, trigger, **inputs)
        except InvalidTriggerError as error:
            self._check_invalid(trigger, before, trail, valid, error)
            outcome = error
        except FlowEngineError as error:
            self._check_rejected(trigger, before, trail, valid, error)
            outcome = error
        else:
            self._check_moved(trigger, before, trail, valid)
        self.on_fired(trigger, inputs, outcome)
        return outcome

    def _check_invalid(
        self,
        trigger: str,
        before: FlowRecord,
        trail: list[AuditEvent],
        valid: bool,
        error: InvalidTriggerError,
    ) -> None:
        assert not valid, (
            f"{trigger!r} is valid in {before.state!r} by the table, but the "
            "engine raised InvalidTriggerError"
        )
        assert error.state == before.state, error.state
        assert error.trigger == trigger, error.trigger
        after = self.record()
        assert after == before, f"invalid {trigger!r} changed the record"
        assert self.trail() == trail, f"invalid {trigger!r} changed the audit trail"

    def _check_rejected(
        self,
        trigger: str,
        before: FlowRecord,
        trail: list[AuditEvent],
        valid: bool,
        error: FlowEngineError,
    ) -> None:
        assert valid, (
            f"{trigger!r} is not valid in {before.state!r}, but the engine "
            f"raised {type(error).__name__} instead of InvalidTriggerError"
        )
        after = self.record()
        assert after.state == before.state, (
            f"rejected {trigger!r} moved the flow from {before.state!r} to "
            f"{after.state!r}"
        )
        assert after.data == before.data, f"rejected {trigger!r} changed the data"
        assert after.version == before.version + 1, after.version
        events = self.trail()
        assert events[:-1] == trail, f"rejected {trigger!r} rewrote the audit trail"
        last = events[-1]
        assert (last.trigger, last.source, last.destination) == (
            trigger,
            before.state,
            before.state,
        ), last
        assert last.outcome == error.code, (last.outcome, error.code)

    def _check_moved(
        self, trigger: str, before: FlowRecord, trail: list[AuditEvent], valid: bool
    ) -> None:
        assert valid, f"{trigger!r} fired in {before.state!r}, where it is not valid"
        after = self.record()
        allowed = {
            spec.dest for spec in self.definition.transitions_for(trigger, before.state)
        }
        assert after.state in allowed, (
            f"{trigger!r} moved the flow from {before.state!r} to "
            f"{after.state!r}; the table allows {sorted(allowed)}"
        )
        assert after.version == before.version + 1, after.version
        events = self.trail()
        assert events[:-1] == trail, f"{trigger!r} rewrote the audit trail"
        last = events[-1]
        assert (last.trigger, last.source, last.destination) == (
            trigger,
            before.state,
            after.state,
        ), last

    @rule(seconds=clock_moves())
    def move_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def check_flow_invariants(self) -> None:
        record = self.record()
        events = self.trail()
        assert record.state in self.definition.state_names, record.state
        assert events, "the flow has no audit trail"
        assert events[-1].destination == record.state, (
            f"the last audit event ends in {events[-1].destination!r}, but the "
            f"flow is in {record.state!r}"
        )
        sequences = [event.sequence for event in events]
        assert sequences == list(range(record.version + 1)), (
            f"audit sequences {sequences} do not count up to version {record.version}"
        )
        replayed = replay(self.definition, events)
        assert replayed == record.state, (
            f"replaying the audit trail leads to {replayed!r}, but the flow is "
            f"in {record.state!r}"
        )
        for check in self.flow_invariants:
            check(record, events)


def _no_inputs(trigger: str) -> InputStrategy:
    return st.just({})


def _input_lookup(inputs: TriggerInputs | None) -> Callable[[str], InputStrategy]:
    if inputs is None:
        return _no_inputs
    if isinstance(inputs, Mapping):
        table = inputs
        return lambda trigger: table.get(trigger, st.just({}))
    return inputs


def _trigger_rule(trigger: str, inputs: InputStrategy) -> Callable[..., None]:
    def fire(self: FlowStateMachine, inputs: Mapping[str, Any]) -> None:
        self.fire_and_check(trigger, inputs)

    fire.__name__ = fire.__qualname__ = f"fire_{trigger}"
    fire.__doc__ = f"Fire {trigger!r} with generated inputs, valid or not."
    return rule(inputs=inputs)(fire)


def _undefined_trigger_rule(definition: FlowDefinition) -> Callable[..., None]:
    names = st.text(string.ascii_lowercase + "_", min_size=1, max_size=12).filter(
        lambda name: name not in definition.triggers
    )

    # Named without the fire_ prefix, so that no trigger's rule can replace it.
    def try_undefined_trigger(self: FlowStateMachine, trigger: str) -> None:
        self.fire_and_check(trigger, {})

    return rule(trigger=names)(try_undefined_trigger)


def flow_state_machine(
    definition: FlowDefinition,
    registry: Registry,
    *,
    inputs: TriggerInputs | None = None,
    invariants: Sequence[Invariant] = (),
    context: Any = None,
    base: type[FlowStateMachine] = FlowStateMachine,
) -> type[FlowStateMachine]:
    """Build a stateful test class for `definition` from its triggers.

    The class has one rule per trigger of the definition, `fire_<trigger>`,
    fired in any state with inputs drawn from `inputs`. Two more rules fire
    a trigger the definition does not have (`try_undefined_trigger`) and
    move the clock (`move_clock`). Run it with pytest through its `TestCase`
    attribute, or with `hypothesis.stateful.run_state_machine_as_test`.

    Args:
        definition: the flow definition to test.
        registry: binds the definition's guards and actions.
        inputs: the keyword inputs of each trigger, as a mapping from trigger
            name to a strategy of dicts, or a function from trigger name to
            such a strategy. Triggers without one fire with no inputs.
        invariants: extra checks, called after every step with the flow's
            record and audit trail; each raises AssertionError on failure.
        context: the engine's context object, read by guards and actions.
        base: the class to extend, a subclass of FlowStateMachine.

    Returns:
        A new subclass of `base`.
    """
    lookup = _input_lookup(inputs)
    namespace: dict[str, Any] = {
        "definition": definition,
        "registry": registry,
        "engine_context": context,
        "flow_invariants": (*base.flow_invariants, *invariants),
        "try_undefined_trigger": _undefined_trigger_rule(definition),
    }
    for trigger in definition.triggers:
        namespace[f"fire_{trigger}"] = _trigger_rule(trigger, lookup(trigger))
    class_name = "".join(part.title() for part in definition.name.split("_"))
    return type(f"{class_name}FlowMachine", (base,), namespace)
