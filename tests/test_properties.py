"""Stateful property test of the authorization code grant through OAuthClient.

Hypothesis drives one flow of the shipped definition through a real
`OAuthClient` with a `MemoryStore`, a `FakeClock` and a `ScriptedHttp` that
plays the authorization server and the protected resource. The scripted
server lets hypothesis choose every reply: a token, an OAuth error, a 5xx
page, a malformed body or a timeout at the token endpoint, and 200 or 401 at
the resource. Beside the client's own steps, the trigger-level rules of
`flowengine.testing` fire every trigger on the client's engine directly.

The scripted server checks each request as it arrives, and a listener on the
engine checks each transition as it is saved, so a failure points at the
first request or transition that broke a promise of the grant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, precondition, rule

from flowengine.adapters.memory import MemoryStore
from flowengine.client import OAuthClient
from flowengine.definition import FlowDefinition, load_definition
from flowengine.engine import Engine, FireResult
from flowengine.errors import (
    FlowEngineError,
    InvalidTriggerError,
    OAuthError,
    ProtocolError,
    TransportError,
)
from flowengine.grant import REGISTRY
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.oauth.pkce import code_challenge
from flowengine.oauth.protocol import Callback
from flowengine.records import AuditEvent, FlowRecord
from flowengine.testing import (
    FakeClock,
    FireOutcome,
    FlowStateMachine,
    ScriptedHttp,
    TokenResponseCase,
    UnexpectedRequestError,
    bearer_tokens,
    callbacks,
    flow_state_machine,
    json_response,
    scripted_timeout,
    token_responses,
)

CONFIG = ClientConfig(store="memory:")
LEEWAY = CONFIG.expiry_leeway
TOKEN_URL = CONFIG.token_endpoint
RESOURCE_URL = CONFIG.resource_url
DEFINITION = load_definition("authorization_code", REGISTRY)

SIX_STATES = {
    "unauthorized",
    "awaiting_callback",
    "code_received",
    "token_held",
    "expired",
    "refreshing",
}
# OAuth errors after which the refresh token is dead (RFC 6749 §5.2).
DEAD_REFRESH_ERRORS = {"invalid_grant", "unauthorized_client"}
RESET_STATES = {"unauthorized", "awaiting_callback"}
TOKEN_STATES = {"token_held", "expired", "refreshing"}

# Token lifetimes in seconds, None for an unknown lifetime.
# Lifetimes at or below the leeway are included: the client must never
# present such a token, even right after a refresh.
LIFETIMES = st.one_of(
    st.none(),
    st.sampled_from([0.0, LEEWAY, LEEWAY + 1, 60.0, 3600.0]),
    st.floats(min_value=0.0, max_value=2 * 86_400.0),
)
# invalid_grant twice, so that a dead refresh token is not a rare event.
ERROR_CODES = st.sampled_from(
    [
        "invalid_grant",
        "invalid_grant",
        "unauthorized_client",
        "invalid_request",
        "server_error",
    ]
)
TIMEOUT = "timeout"

# --- trigger-level inputs --------------------------------------------------

# Inputs for firing triggers on the engine directly. They are what any caller
# could send, so none can pass a guard that protects a token. A callback never
# carries the pending state, a "token" is never a TokenSet, and a lease id is
# never the one the engine handed out.
_errors = st.sampled_from(
    [
        OAuthError("invalid_grant"),
        TransportError("scripted timeout", url=TOKEN_URL),
        ProtocolError("scripted malformed body"),
    ]
)
_foreign_callbacks = st.builds(
    Callback,
    code=st.none() | bearer_tokens(),
    state=st.none() | bearer_tokens(),
    error=st.none() | st.just("access_denied"),
)
_callback_inputs = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"callback": _foreign_callbacks}),
    st.fixed_dictionaries({"callback": st.text(max_size=20)}),
)
_error_inputs = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"error": _errors}),
    st.fixed_dictionaries({"error": _errors, "lease_id": bearer_tokens()}),
)
ENGINE_INPUTS: dict[str, st.SearchStrategy[Mapping[str, Any]]] = {
    "start": st.just({}) | st.fixed_dictionaries({"scope": st.just("foo")}),
    "receive_code": _callback_inputs,
    "receive_error": _callback_inputs,
    "receive_token": st.one_of(
        st.just({}),
        st.fixed_dictionaries(
            {"token": st.none() | st.text(max_size=20), "lease_id": bearer_tokens()}
        ),
    ),
    "reject_code": _error_inputs,
    "exchange_failed": _error_inputs,
    "expire": st.just({}) | st.fixed_dictionaries({"reason": st.text(max_size=50)}),
    "reject_refresh": _error_inputs,
    "refresh_failed": _error_inputs,
}


def no_tokens_outside_token_states(
    record: FlowRecord, events: list[AuditEvent]
) -> None:
    if record.state not in TOKEN_STATES:
        assert not record.data.get("access_token"), record.state
        assert not record.data.get("refresh_token"), record.state


TriggerMachine = flow_state_machine(
    DEFINITION,
    REGISTRY,
    inputs=ENGINE_INPUTS,
    invariants=[no_tokens_outside_token_states],
    context=CONFIG,
)

# --- the scripted authorization server's records --------------------------


@dataclasses.dataclass(frozen=True)
class Pending:
    """An authorization request as the user agent carries it."""

    state: str
    challenge: str
    expires_at: float


@dataclasses.dataclass(frozen=True)
class Issued:
    """An access token issued by the scripted token endpoint."""

    value: str
    lifetime: float | None
    requested_at: float

    @property
    def expires_at(self) -> float | None:
        return None if self.lifetime is None else self.requested_at + self.lifetime


@dataclasses.dataclass(frozen=True)
class Expected:
    """The transition a token endpoint reply must cause next."""

    trigger: str
    destination: str
    check: Callable[[FlowRecord], None]


def pending_from(url: str, now: float) -> Pending:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["code_challenge_method"] == "S256"
    return Pending(
        query["state"], query["code_challenge"], now + CONFIG.pending_lifetime
    )


def applied(event: AuditEvent) -> bool:
    """Tell whether `event` records a transition rather than a rejected attempt.

    A rejected attempt stays in its state with an error outcome. An applied
    transition that records a failure, such as receive_error, also has an
    error outcome, but it moves the flow.
    """
    return event.ok or event.destination != event.source


def reply_kind(reply: TokenResponseCase | str) -> str:
    return reply if isinstance(reply, str) else reply.outcome


class GrantMachine(TriggerMachine):
    """The grant through OAuthClient, checked against a scripted server."""

    def build_engine(self) -> Engine:
        self.http = ScriptedHttp(clock=self.clock, responder=self.respond)
        self.client = OAuthClient(
            CONFIG,
            store=MemoryStore(),
            http=self.http,
            clock=self.clock,
            definition=self.definition,
            sleep=self.clock.sleep,
        )
        self.client.engine.subscribe(self.on_event)
        self.data: st.DataObject | None = None
        self.rule_name = ""
        self.pending: Pending | None = None
        self.used_states: list[str] = []
        self.codes_issued = 0
        self.matched_codes: dict[str, str] = {}  # code -> PKCE challenge
        self.settled_codes: set[str] = set()
        self.dead_codes: set[str] = set()
        self.issued: dict[str, Issued] = {}
        self.newest: Issued | None = None
        self.refresh_tokens: set[str] = set()
        self.dead_access: set[str] = set()
        self.dead_refresh: set[str] = set()
        self.expected: Expected | None = None
        self.last_resource: tuple[str, int] | None = None
        self.only_tokens = False
        return self.client.engine

    # --- the scripted server ----------------------------------------------

    def respond(self, request: HttpRequest) -> HttpResponse | TransportError:
        if self.data is None:
            raise UnexpectedRequestError(
                f"{request.method} {request.url} sent during {self.rule_name}, "
                "a step that fires triggers only"
            )
        if request.url == TOKEN_URL:
            return self.token_endpoint(request, self.data)
        if request.url == RESOURCE_URL:
            return self.resource(request, self.data)
        raise UnexpectedRequestError(f"request to unknown URL {request.url}")

    def token_endpoint(
        self, request: HttpRequest, data: st.DataObject
    ) -> HttpResponse | TransportError:
        form = dict(request.form or {})
        if form.get("grant_type") == "authorization_code":
            self.check_code_exchange(form)
        else:
            assert form.get("grant_type") == "refresh_token", form.get("grant_type")
            self.check_refresh_request(form)

        reply = data.draw(self.token_replies(), label="token endpoint reply")
        self.follow_token_reply(form, reply)
        if isinstance(reply, str):
            return scripted_timeout(TOKEN_URL)
        return reply.response

    def token_replies(self) -> st.SearchStrategy[TokenResponseCase | str]:
        number = len(self.issued) + 1
        tokens = token_responses(
            access_tokens=st.just(f"at-{number}"),
            refresh_tokens=st.just(f"rt-{number}"),
            lifetimes=LIFETIMES,
            error_codes=ERROR_CODES,
            outcomes=["token"],
        )
        if self.only_tokens:
            return tokens
        errors = token_responses(error_codes=ERROR_CODES, outcomes=["oauth_error"])
        invalid = token_responses(outcomes=["invalid"])
        # Two replies in five are tokens, so that runs get past the exchange.
        return st.one_of(tokens, tokens, errors, invalid, st.just(TIMEOUT))

    def check_code_exchange(self, form: dict[str, str]) -> None:
        code = form.get("code", "")
        assert code in self.matched_codes, (
            "the client exchanged a code that no matching callback delivered"
        )
        assert code not in self.settled_codes, (
            "the client exchanged a code the token endpoint already answered"
        )
        assert code not in self.dead_codes, (
            "the client exchanged a code of a grant that was dropped"
        )
        verifier = form.get("code_verifier", "")
        assert code_challenge(verifier) == self.matched_codes[code], (
            "the code_verifier does not match the request's code_challenge"
        )
        assert form.get("redirect_uri") == CONFIG.redirect_uri

    def check_refresh_request(self, form: dict[str, str]) -> None:
        token = form.get("refresh_token", "")
        assert token in self.refresh_tokens, "refresh with an unknown token"
        assert token not in self.dead_refresh, (
            "the client sent a refresh token that was rejected, replaced or dropped"
        )

    def follow_token_reply(
        self, form: dict[str, str], reply: TokenResponseCase | str
    ) -> None:
        kind = reply_kind(reply)
        is_code = form["grant_type"] == "authorization_code"
        if is_code and kind in ("token", "oauth_error"):
            self.settled_codes.add(form["code"])
        if isinstance(reply, TokenResponseCase) and reply.outcome == "token":
            assert reply.access_token is not None
            issued = Issued(reply.access_token, reply.lifetime, self.clock.now())
            self.issued[issued.value] = issued
            self.newest = issued
            if reply.refresh_token is not None:
                self.refresh_tokens.add(reply.refresh_token)
                if not is_code:
                    self.dead_refresh.add(form["refresh_token"])
        if is_code:
            self.expected = self.expected_after_exchange(form["code"], reply)
        else:
            self.expected = self.expected_after_refresh(form["refresh_token"], reply)

    def expected_after_exchange(
        self, code: str, reply: TokenResponseCase | str
    ) -> Expected:
        kind = reply_kind(reply)
        if kind == "token":
            assert isinstance(reply, TokenResponseCase)
            return Expected("receive_token", "token_held", self.holds(reply))
        if kind == "oauth_error":
            return Expected("reject_code", "unauthorized", self.holds_nothing)

        def keeps_code(record: FlowRecord) -> None:
            assert record.data.get("code") == code, "a failed exchange lost the code"

        return Expected("exchange_failed", "code_received", keeps_code)

    def expected_after_refresh(
        self, refresh_token: str, reply: TokenResponseCase | str
    ) -> Expected:
        kind = reply_kind(reply)
        if kind == "token":
            assert isinstance(reply, TokenResponseCase)
            return Expected(
                "receive_token", "token_held", self.holds(reply, refresh_token)
            )
        if isinstance(reply, TokenResponseCase) and reply.error in DEAD_REFRESH_ERRORS:
            self.dead_refresh.add(refresh_token)
            return Expected("reject_refresh", "unauthorized", self.holds_nothing)

        def keeps_refresh_token(record: FlowRecord) -> None:
            assert record.data.get("refresh_token") == refresh_token, (
                f"a refresh that failed with {kind} lost the refresh token"
            )

        return Expected("refresh_failed", "expired", keeps_refresh_token)

    def holds(
        self, reply: TokenResponseCase, old_refresh: str | None = None
    ) -> Callable[[FlowRecord], None]:
        def check(record: FlowRecord) -> None:
            assert record.data.get("access_token") == reply.access_token
            kept = reply.refresh_token or old_refresh
            assert record.data.get("refresh_token") == kept

        return check

    @staticmethod
    def holds_nothing(record: FlowRecord) -> None:
        assert not record.data.get("access_token"), "the access token was kept"
        assert not record.data.get("refresh_token"), "the refresh token was kept"

    def resource(self, request: HttpRequest, data: st.DataObject) -> HttpResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        scheme, _, token = headers.get("authorization", "").partition(" ")
        assert scheme == "Bearer", "the resource got no bearer token"
        self.check_presented(token)
        status = data.draw(st.sampled_from([200, 200, 401]), label="resource")
        self.last_resource = (token, status)
        if status == 401:
            challenge = 'Bearer error="invalid_token"'
            return json_response({}, 401, {"WWW-Authenticate": challenge})
        return json_response({"name": "protected resource"})

    def check_presented(self, token: str) -> None:
        assert token in self.issued, "the client presented a token never issued"
        assert token not in self.dead_access, (
            "the client presented an access token that was expired, replaced or dropped"
        )
        expires_at = self.issued[token].expires_at
        if expires_at is not None:
            now = self.clock.now()
            assert now < expires_at - LEEWAY, (
                f"token presented at {now}, at or after its expiry {expires_at} "
                f"minus the leeway of {LEEWAY} s"
            )

    # --- following transitions ----------------------------------------------

    def on_event(self, event: AuditEvent) -> None:
        record = self.client.engine.load(event.flow_id)
        if self.expected is not None:
            self.check_expected(event, record, self.expected)
            self.expected = None
        if not applied(event):
            return
        if event.source == "awaiting_callback" and self.pending is not None:
            self.used_states.append(self.pending.state)
            self.pending = None
        if event.destination in RESET_STATES:
            self.dead_access.update(self.issued)
            self.dead_refresh.update(self.refresh_tokens)
            self.dead_codes.update(self.matched_codes)
        if event.trigger == "expire":
            self.check_expiry_cause(record)
            self.dead_access.update(self.issued)
        if event.destination == "token_held":
            assert self.newest is not None
            held = record.data.get("access_token")
            assert held == self.newest.value, "token_held without the newest token"
            self.dead_access.update(set(self.issued) - {held})

    @staticmethod
    def check_expected(
        event: AuditEvent, record: FlowRecord, expected: Expected
    ) -> None:
        assert (event.trigger, event.destination) == (
            expected.trigger,
            expected.destination,
        ), (
            f"after the token endpoint's reply the flow went {event.trigger} to "
            f"{event.destination}, not {expected.trigger} to {expected.destination}"
        )
        expected.check(record)

    def check_expiry_cause(self, record: FlowRecord) -> None:
        # A token is dropped when asked to, on a 401, or by time; a token of
        # unknown lifetime only on a 401.
        if self.rule_name in ("force_refresh", "fire_expire"):
            return
        token = record.data.get("access_token")
        if self.last_resource == (token, 401):
            return
        assert token in self.issued
        expires_at = self.issued[token].expires_at
        assert expires_at is not None, (
            "a token of unknown lifetime expired without a 401 from the resource"
        )
        assert self.clock.now() >= expires_at - LEEWAY, (
            "a token expired before its expiry minus the leeway"
        )

    def on_fired(
        self, trigger: str, inputs: Mapping[str, Any], outcome: FireOutcome
    ) -> None:
        if trigger == "start" and isinstance(outcome, FireResult):
            self.pending = pending_from(str(outcome.result), self.clock.now())

    # --- the client's steps -------------------------------------------------

    def client_step(
        self, name: str, data: st.DataObject, call: Callable[[], Any]
    ) -> Any:
        """Run one client call with the scripted server drawing from `data`."""
        self.data = data
        self.rule_name = name
        self.last_resource = None
        try:
            outcome = call()
        except FlowEngineError as error:
            outcome = error
        finally:
            self.data = None
        assert self.expected is None, "a token endpoint reply caused no transition"
        return outcome

    def held(self) -> Issued | None:
        token = self.record().data.get("access_token")
        return self.issued.get(token) if isinstance(token, str) else None

    @initialize(data=st.data(), grant=st.booleans())
    def begin(self, data: st.DataObject, grant: bool) -> None:
        """Start half of the runs with a token, obtained through the client."""
        if grant:
            self.obtain_token(data)

    def obtain_token(self, data: st.DataObject) -> None:
        self.start_grant(data)
        self.only_tokens = True
        try:
            self.deliver_matching_code(data)
        finally:
            self.only_tokens = False
        assert self.record().state == "token_held"

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        self.start_grant(data)

    def start_grant(self, data: st.DataObject) -> None:
        before = self.record()
        outcome = self.client_step(
            "start", data, lambda: self.client.start(self.flow_id)
        )
        if isinstance(outcome, str):
            self.pending = pending_from(outcome, self.clock.now())
            return
        assert isinstance(outcome, InvalidTriggerError), outcome
        assert self.record() == before

    def deliver(
        self,
        data: st.DataObject,
        query: str,
        *,
        code: str | None,
        kind: str,
        matches: bool,
    ) -> None:
        before = self.record()
        mark = len(self.trail())
        accepted = (
            kind in ("code", "error")
            and matches
            and before.state == "awaiting_callback"
            and self.pending is not None
            and self.clock.now() < self.pending.expires_at
        )
        if accepted and code is not None and kind == "code":
            assert self.pending is not None
            self.matched_codes[code] = self.pending.challenge
        url = f"{CONFIG.redirect_uri}?{query}"
        outcome = self.client_step(
            "deliver", data, lambda: self.client.handle_callback(self.flow_id, url)
        )
        moves = [event for event in self.trail()[mark:] if applied(event)]
        if not accepted:
            assert not moves, f"the flow applied a {kind} callback it must reject"
            assert self.record().data == before.data
            assert isinstance(outcome, FlowEngineError), outcome
            return
        first = "receive_code" if kind == "code" else "receive_error"
        assert moves and moves[0].trigger == first, (
            f"a {kind} callback with the matching state was not applied"
        )
        if kind == "error":
            assert isinstance(outcome, OAuthError), outcome
            assert self.record().state == "unauthorized"

    def issue_code(self) -> str:
        self.codes_issued += 1
        return f"code-{self.codes_issued}"

    @precondition(lambda self: self.pending is not None)
    @rule(data=st.data())
    def deliver_right_callback(self, data: st.DataObject) -> None:
        self.deliver_matching_code(data)

    def deliver_matching_code(self, data: st.DataObject) -> None:
        assert self.pending is not None
        code = self.issue_code()
        query = urllib.parse.urlencode({"code": code, "state": self.pending.state})
        self.deliver(data, query, code=code, kind="code", matches=True)

    @precondition(lambda self: self.pending is not None)
    @rule(data=st.data(), error=st.sampled_from(["access_denied", "server_error"]))
    def deliver_error_callback(self, data: st.DataObject, error: str) -> None:
        assert self.pending is not None
        query = urllib.parse.urlencode({"error": error, "state": self.pending.state})
        self.deliver(data, query, code=None, kind="error", matches=True)

    @rule(data=st.data())
    def deliver_generated_callback(self, data: st.DataObject) -> None:
        code = self.issue_code()
        expected = None if self.pending is None else self.pending.state
        case = data.draw(
            callbacks(expected_state=expected, codes=st.just(code)), label="callback"
        )
        self.deliver(
            data, case.query, code=case.code, kind=case.kind, matches=case.state_matches
        )

    @precondition(lambda self: bool(self.used_states))
    @rule(data=st.data())
    def replay_used_state(self, data: st.DataObject) -> None:
        state = data.draw(st.sampled_from(self.used_states), label="used state")
        code = self.issue_code()
        query = urllib.parse.urlencode({"code": code, "state": state})
        self.deliver(data, query, code=code, kind="code", matches=False)

    @rule(data=st.data())
    def retry_exchange(self, data: st.DataObject) -> None:
        before = self.record()
        outcome = self.client_step(
            "retry_exchange", data, lambda: self.client.exchange_code(self.flow_id)
        )
        if before.state != "code_received":
            assert isinstance(outcome, InvalidTriggerError), outcome
            assert self.record() == before

    @rule(data=st.data())
    def fetch_resource(self, data: st.DataObject) -> None:
        before = self.record()
        held = self.held()
        mark = len(self.http.sent)
        self.client_step(
            "fetch_resource", data, lambda: self.client.fetch_resource(self.flow_id)
        )
        if before.state != "token_held" or held is None:
            return
        expires_at = held.expires_at
        if expires_at is None or self.clock.now() < expires_at - LEEWAY:
            sent = self.http.sent[mark:]
            assert sent, "a usable token was held, but no request was sent"
            assert (sent[0].url, sent[0].bearer_token) == (RESOURCE_URL, held.value), (
                "the client did not present the usable token it held"
            )

    @rule(data=st.data())
    def force_refresh(self, data: st.DataObject) -> None:
        self.client_step(
            "force_refresh", data, lambda: self.client.refresh(self.flow_id)
        )

    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        before = self.record()
        outcome = self.client_step(
            "logout", data, lambda: self.client.logout(self.flow_id)
        )
        if before.state == "unauthorized":
            assert isinstance(outcome, InvalidTriggerError), outcome
            return
        assert self.record().state == "unauthorized"

    @precondition(lambda self: self.held() is not None)
    @rule(
        offset=st.sampled_from(
            [-1.0, -0.001, 0.0, 0.001, 1.0, LEEWAY / 2, LEEWAY - 0.001, LEEWAY]
        )
    )
    def move_clock_near_expiry(self, offset: float) -> None:
        held = self.held()
        assert held is not None
        if held.expires_at is not None:
            self.clock.set(held.expires_at - LEEWAY + offset)

    def fire_and_check(self, trigger: str, inputs: Mapping[str, Any]) -> FireOutcome:
        self.rule_name = f"fire_{trigger}"
        return super().fire_and_check(trigger, inputs)

    @invariant()
    def state_is_one_of_six(self) -> None:
        assert self.record().state in SIX_STATES

    @invariant()
    def held_token_is_live(self) -> None:
        record = self.record()
        if record.state == "token_held":
            token = record.data.get("access_token")
            assert token in self.issued, "token_held with a token never issued"
            assert token not in self.dead_access, "token_held with a dropped token"


GrantMachine.TestCase.settings = settings(stateful_step_count=40)
TestGrant = GrantMachine.TestCase


class TokenLifecycleMachine(GrantMachine):
    """The grant from token_held on: resource calls, expiry and refresh.

    Every run starts with a token, and the rules that would start the grant
    again are left out, so that the runs spend their steps on expiry and
    refresh. A class attribute set to None hides the inherited rule.
    """

    begin = None
    start = None
    deliver_right_callback = None
    deliver_error_callback = None
    deliver_generated_callback = None
    replay_used_state = None
    retry_exchange = None
    logout = None
    fire_start = None
    fire_logout = None
    fire_receive_code = None
    fire_receive_error = None
    fire_reject_code = None
    fire_exchange_failed = None
    try_undefined_trigger = None

    @initialize(data=st.data())
    def begin_with_token(self, data: st.DataObject) -> None:
        self.obtain_token(data)


TokenLifecycleMachine.TestCase.settings = settings(stateful_step_count=30)
TestTokenLifecycle = TokenLifecycleMachine.TestCase


def grant_machine(
    definition: FlowDefinition | None = None,
    *,
    base: type[GrantMachine] = GrantMachine,
) -> type[FlowStateMachine]:
    """Return a grant machine that runs another flow definition."""
    namespace: dict[str, Any] = {}
    if definition is not None:
        namespace["definition"] = definition
    return type(f"Variant{base.__name__}", (base,), namespace)


# --- regressions found while writing the properties ------------------------


def scripted_client() -> tuple[OAuthClient, ScriptedHttp, str]:
    """Return a client, its scripted HTTP and a flow waiting for its callback."""
    clock = FakeClock()
    http = ScriptedHttp(clock=clock)
    client = OAuthClient(
        CONFIG, store=MemoryStore(), http=http, clock=clock, sleep=clock.sleep
    )
    flow_id = client.create_flow()
    pending = pending_from(client.start(flow_id), clock.now())
    http.queue(
        TOKEN_URL,
        json_response(
            {"access_token": "at-1", "token_type": "Bearer", "refresh_token": "rt-1"}
        ),
    )
    query = urllib.parse.urlencode({"code": "code-1", "state": pending.state})
    client.handle_callback(flow_id, f"{CONFIG.redirect_uri}?{query}")
    return client, http, flow_id


REJECTED = json_response({}, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})


def test_short_lived_refreshed_token_is_not_presented() -> None:
    client, http, flow_id = scripted_client()
    http.queue(
        TOKEN_URL,
        json_response(
            {"access_token": "at-2", "token_type": "Bearer", "expires_in": 10}
        ),
    )
    http.queue(RESOURCE_URL, REJECTED, json_response({}))

    with contextlib.suppress(FlowEngineError):
        client.fetch_resource(flow_id)

    presented = [
        sent for sent in http.sent_to(RESOURCE_URL) if sent.bearer_token == "at-2"
    ]
    assert presented == [], "at-2 expires 10 s after issue, inside the 30 s leeway"


def test_token_rejected_after_refresh_expires() -> None:
    client, http, flow_id = scripted_client()
    http.queue(
        TOKEN_URL, json_response({"access_token": "at-2", "token_type": "Bearer"})
    )
    http.queue(RESOURCE_URL, REJECTED, REJECTED)

    with contextlib.suppress(FlowEngineError):
        client.fetch_resource(flow_id)

    assert client.status(flow_id).state == "expired"
