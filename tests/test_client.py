"""Integration tests of OAuthClient against real servers on loopback.

The demo authorization server and resource run under waitress. Misbehaving
token endpoints and resources are scripted TCP servers from hostile.py. The
redirect back to the client is never followed: the test hands its URL to
`handle_callback`, as the client's web application would.
"""

from __future__ import annotations

import dataclasses
import gzip
import re
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import (
    Exchange,
    ScriptedServer,
    never_answer,
    refused_port,
    reply,
    response_bytes,
    stall_mid_body,
    trickle_body,
)

from flowengine.adapters.http import HttpClient
from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.engine import Store
from flowengine.errors import (
    FlowEngineError,
    InvalidTriggerError,
    IssuerMismatchError,
    OAuthError,
    ProtocolError,
    ResourceError,
    StateMismatchError,
    TokenExpiredError,
    TransportError,
)
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpRequest
from flowengine.records import AuditEvent

REDIRECT_URI = "http://localhost:9000/callback"
START = 1_700_000_000.0
TOKEN_LIFETIME = 3600


class FakeClock:
    """A clock that moves only when the test moves it."""

    def __init__(self, start: float = START) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


class DeferredApp:
    """A WSGI app whose target is set after its server has a port.

    The demo server's issuer must be its own URL, known only once bound.
    """

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.target(environ, start_response)


@dataclasses.dataclass
class Demo:
    """The demo servers of one test and the client settings that reach them."""

    db: DemoDatabase
    settings: DemoSettings
    auth_url: str
    resource_url: str

    def config(self, **changes: Any) -> ClientConfig:
        values: dict[str, Any] = {
            "authorization_endpoint": f"{self.auth_url}/authorize",
            "token_endpoint": f"{self.auth_url}/token",
            "resource_url": f"{self.resource_url}/resource",
            "issuer": self.auth_url,
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "store": "memory:",
        }
        values.update(changes)
        return ClientConfig(**values)

    def count(self, grant_type: str, outcome: str = "ok") -> int:
        return self.db.token_requests[(grant_type, outcome)]

    def exchanges(self, grant_type: str) -> int:
        """Count every token request of `grant_type`, whatever its outcome."""
        return sum(
            n for (kind, _), n in self.db.token_requests.items() if kind == grant_type
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    sqlite = SQLiteStore(tmp_path / "flows.sqlite3")
    yield sqlite
    sqlite.close()


@pytest.fixture
def start_demo(clock: FakeClock) -> Iterator[Callable[..., Demo]]:
    servers: list[BackgroundServer] = []

    def start(**settings_changes: Any) -> Demo:
        db = DemoDatabase(now=clock.now)
        deferred = DeferredApp()
        auth = BackgroundServer(deferred, name="demo-auth")
        settings = DemoSettings(
            issuer=auth.url, redirect_uris=(REDIRECT_URI,), **settings_changes
        )
        deferred.target = create_authorization_server(settings, db)
        resource = BackgroundServer(
            create_resource_server(settings, db), name="demo-resource"
        )
        servers.extend([auth.start(), resource.start()])
        return Demo(db, settings, auth.url, resource.url)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def demo(start_demo: Callable[..., Demo]) -> Demo:
    return start_demo()


@pytest.fixture
def make_client(
    store: Store, clock: FakeClock
) -> Iterator[Callable[[ClientConfig], OAuthClient]]:
    clients: list[OAuthClient] = []

    def make(config: ClientConfig) -> OAuthClient:
        client = OAuthClient(config, store=store, clock=clock)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.http.close()


@pytest.fixture
def client(
    demo: Demo, make_client: Callable[[ClientConfig], OAuthClient]
) -> OAuthClient:
    return make_client(demo.config())


@pytest.fixture
def browser() -> Iterator[requests.Session]:
    with requests.Session() as session:
        # The demo runs on loopback; no proxy from the environment may see it.
        session.trust_env = False
        yield session


def approved_callback(
    client: OAuthClient, browser: requests.Session, flow_id: str
) -> str:
    """Start a grant and return the redirect URL after the user approves."""
    return approve(browser, client.start(flow_id))


def deny(browser: requests.Session, authorization_url: str) -> str:
    """Open the approval page, press Deny and return the redirect URL."""
    page = browser.get(authorization_url, timeout=10)
    match = re.search(r'name="reqid" value="([^"]+)"', page.text)
    assert match is not None, page.text[:300]
    approve_url = urllib.parse.urljoin(page.url, "/approve")
    answer = browser.post(
        approve_url,
        data={"reqid": match.group(1), "deny": "deny"},
        timeout=10,
        allow_redirects=False,
    )
    return str(answer.headers["Location"])


def full_grant(client: OAuthClient, browser: requests.Session) -> str:
    flow_id = client.create_flow()
    client.handle_callback(flow_id, approved_callback(client, browser, flow_id))
    return flow_id


def with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def path_of(events: list[AuditEvent]) -> list[tuple[str, str | None, str, str]]:
    return [(e.trigger, e.source, e.destination, e.outcome) for e in events]


GRANT_PATH = [
    ("create", None, "unauthorized", "ok"),
    ("start", "unauthorized", "awaiting_callback", "ok"),
    ("receive_code", "awaiting_callback", "code_received", "ok"),
    ("receive_token", "code_received", "token_held", "ok"),
]

REFRESH_PATH = [
    ("refresh", "expired", "refreshing", "ok"),
    ("receive_token", "refreshing", "token_held", "ok"),
]


# --- the whole grant -----------------------------------------------------------


def test_full_grant_holds_token(
    client: OAuthClient, demo: Demo, browser: requests.Session, clock: FakeClock
) -> None:
    flow_id = full_grant(client, browser)
    status = client.status(flow_id)
    record = client.engine.load(flow_id)

    assert status.state == "token_held"
    assert status.scope == "foo bar"
    assert status.has_refresh_token
    assert status.expires_at == clock.now() + TOKEN_LIFETIME
    assert record.data["access_token"]
    assert "code" not in record.data
    assert "code_verifier" not in record.data
    assert demo.count("authorization_code") == 1


def test_full_grant_audit_trail_replays(
    client: OAuthClient, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)
    events = client.events(flow_id)

    assert path_of(events) == GRANT_PATH
    assert [e.sequence for e in events] == [0, 1, 2, 3]
    assert client.engine.replay(flow_id) == "token_held"


def test_fetch_resource_returns_demo_data(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)

    result = client.fetch_resource(flow_id)

    assert result.status == 200
    assert result.json()["name"] == "Protected Resource"
    assert result.json()["scope"] == "foo bar"
    assert demo.db.resource_requests["ok"] == 1


def test_flow_survives_new_client_on_same_store(
    client: OAuthClient,
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    flow_id = full_grant(client, browser)

    second = make_client(demo.config())

    assert second.status(flow_id).state == "token_held"
    assert second.fetch_resource(flow_id).status == 200


def test_logout_drops_tokens(client: OAuthClient, browser: requests.Session) -> None:
    flow_id = full_grant(client, browser)

    record = client.logout(flow_id)

    assert record.state == "unauthorized"
    assert "access_token" not in record.data
    assert "refresh_token" not in record.data
    with pytest.raises(TokenExpiredError):
        client.fetch_resource(flow_id)


# --- expiry and refresh --------------------------------------------------------


def test_server_side_expiry_refreshes_once(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)
    old = client.engine.load(flow_id).data
    demo.db.expire_access_tokens()

    result = client.fetch_resource(flow_id)
    new = client.engine.load(flow_id).data
    events = client.events(flow_id)

    assert result.status == 200
    assert demo.count("refresh_token") == 1
    assert demo.exchanges("refresh_token") == 1
    assert demo.db.resource_requests["invalid_token"] == 1
    assert demo.db.resource_requests["ok"] == 1
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    assert path_of(events[4:]) == [
        ("expire", "token_held", "expired", "ok"),
        *REFRESH_PATH,
    ]
    assert events[4].details["reason"] == "resource: invalid_token"
    assert client.engine.replay(flow_id) == "token_held"


def test_clock_expiry_refreshes_before_resource_call(
    client: OAuthClient, demo: Demo, browser: requests.Session, clock: FakeClock
) -> None:
    flow_id = full_grant(client, browser)
    record = client.engine.load(flow_id)
    expires_at = float(record.data["expires_at"])
    clock.current = expires_at - client.config.expiry_leeway

    result = client.fetch_resource(flow_id)
    events = client.events(flow_id)

    assert result.status == 200
    assert demo.count("refresh_token") == 1
    assert demo.db.resource_requests["invalid_token"] == 0
    assert demo.db.resource_requests["ok"] == 1
    assert events[4].trigger == "expire"
    assert events[4].details["reason"] == "expiry time reached"
    assert path_of(events[5:]) == REFRESH_PATH


def test_token_before_leeway_is_used_unchanged(
    client: OAuthClient, demo: Demo, browser: requests.Session, clock: FakeClock
) -> None:
    flow_id = full_grant(client, browser)
    record = client.engine.load(flow_id)
    clock.current = float(record.data["expires_at"]) - client.config.expiry_leeway - 1

    token = client.access_token(flow_id)

    assert token == record.data["access_token"]
    assert demo.exchanges("refresh_token") == 0
    assert client.status(flow_id).state == "token_held"


def test_unknown_lifetime_expires_only_on_401(
    start_demo: Callable[..., Demo],
    make_client: Callable[[ClientConfig], OAuthClient],
    browser: requests.Session,
    clock: FakeClock,
) -> None:
    demo = start_demo(send_expires_in=False)
    client = make_client(demo.config())
    flow_id = full_grant(client, browser)
    token = client.engine.load(flow_id).data["access_token"]

    clock.advance(10 * 24 * 3600)
    still = client.access_token(flow_id)

    assert client.status(flow_id).expires_at is None
    assert still == token
    assert demo.exchanges("refresh_token") == 0

    result = client.fetch_resource(flow_id)
    events = client.events(flow_id)

    assert result.status == 200
    assert demo.count("refresh_token") == 1
    assert events[4].details["reason"] == "resource: invalid_token"
    assert client.engine.load(flow_id).data["access_token"] != token


def test_server_without_refresh_tokens_ends_in_expired(
    start_demo: Callable[..., Demo],
    make_client: Callable[[ClientConfig], OAuthClient],
    browser: requests.Session,
) -> None:
    demo = start_demo(issue_refresh_tokens=False)
    client = make_client(demo.config())
    flow_id = full_grant(client, browser)
    assert not client.status(flow_id).has_refresh_token
    demo.db.expire_access_tokens()

    with pytest.raises(TokenExpiredError, match="no refresh token"):
        client.fetch_resource(flow_id)

    assert client.status(flow_id).state == "expired"
    assert demo.exchanges("refresh_token") == 0
    assert demo.db.resource_requests["invalid_token"] == 1
    with pytest.raises(TokenExpiredError):
        client.fetch_resource(flow_id)
    assert demo.db.resource_requests["invalid_token"] == 1


def test_refresh_without_new_refresh_token_keeps_old(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)

    record = client.refresh(flow_id)

    assert record.state == "token_held"
    assert record.data["refresh_token"]
    assert demo.count("refresh_token") == 1


def test_revoked_grant_refresh_returns_to_unauthorized(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)
    refresh_token = client.engine.load(flow_id).data["refresh_token"]
    assert demo.db.revoke_token(refresh_token) == "refresh_token"

    with pytest.raises(OAuthError) as caught:
        client.fetch_resource(flow_id)
    record = client.engine.load(flow_id)

    assert caught.value.error == "invalid_grant"
    assert record.state == "unauthorized"
    assert "refresh_token" not in record.data
    assert record.data["last_error"] == "invalid_grant"
    assert client.events(flow_id)[-1].trigger == "reject_refresh"


# --- callbacks -----------------------------------------------------------------


def test_error_redirect_without_state_keeps_flow_waiting(
    start_demo: Callable[..., Demo],
    make_client: Callable[[ClientConfig], OAuthClient],
    browser: requests.Session,
) -> None:
    """RFC 6749 §4.1.2.1: access_denied without state cannot end the grant."""
    demo = start_demo(state_on_error=False)
    client = make_client(demo.config())
    flow_id = client.create_flow()
    url = client.start(flow_id)
    callback = deny(browser, url)
    assert "state=" not in callback

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback)
    last = client.events(flow_id)[-1]

    assert caught.value.error == "access_denied"
    assert isinstance(caught.value.__cause__, StateMismatchError)
    assert client.status(flow_id).state == "awaiting_callback"
    assert (last.trigger, last.destination, last.outcome) == (
        "receive_error",
        "awaiting_callback",
        "state_mismatch",
    )

    # The pending request is intact, so a later approval still completes it.
    client.handle_callback(flow_id, approve(browser, url))
    assert client.status(flow_id).state == "token_held"


def test_error_redirect_with_state_ends_grant(
    client: OAuthClient, browser: requests.Session
) -> None:
    """RFC 6749 §4.1.2.1: access_denied with the right state ends the grant."""
    flow_id = client.create_flow()
    callback = deny(browser, client.start(flow_id))

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback)
    record = client.engine.load(flow_id)

    assert caught.value.error == "access_denied"
    assert record.state == "unauthorized"
    assert record.data["last_error"] == "access_denied"
    assert client.events(flow_id)[-1].outcome == "access_denied"


def test_callback_with_wrong_state_is_rejected(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)
    before = client.engine.load(flow_id)

    with pytest.raises(StateMismatchError):
        client.handle_callback(flow_id, with_query(callback, state="forged"))
    after = client.engine.load(flow_id)
    last = client.events(flow_id)[-1]

    assert after.state == "awaiting_callback"
    assert after.data == before.data
    assert (last.trigger, last.source, last.destination, last.outcome) == (
        "receive_code",
        "awaiting_callback",
        "awaiting_callback",
        "state_mismatch",
    )
    assert demo.exchanges("authorization_code") == 0

    client.handle_callback(flow_id, callback)
    assert client.status(flow_id).state == "token_held"


def test_callback_without_state_is_rejected(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)
    parts = urllib.parse.urlsplit(callback)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "state"]
    stripped = urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query))
    )

    with pytest.raises(StateMismatchError):
        client.handle_callback(flow_id, stripped)

    assert client.status(flow_id).state == "awaiting_callback"
    assert demo.exchanges("authorization_code") == 0


def test_callback_with_wrong_issuer_is_rejected(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)

    with pytest.raises(IssuerMismatchError) as caught:
        client.handle_callback(flow_id, with_query(callback, iss="https://evil.test"))

    assert caught.value.code == "issuer_mismatch"
    assert client.status(flow_id).state == "awaiting_callback"
    assert demo.exchanges("authorization_code") == 0


def test_replayed_callback_is_rejected(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)
    client.handle_callback(flow_id, callback)
    token = client.engine.load(flow_id).data["access_token"]

    with pytest.raises(StateMismatchError):
        client.handle_callback(flow_id, callback)

    assert demo.exchanges("authorization_code") == 1
    assert client.status(flow_id).state == "token_held"
    assert client.engine.load(flow_id).data["access_token"] == token


def test_malformed_callback_is_audited(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    client.start(flow_id)

    with pytest.raises(ProtocolError):
        client.handle_callback(flow_id, f"{REDIRECT_URI}?code=a&code=b&state=s")
    last = client.events(flow_id)[-1]

    assert client.status(flow_id).state == "awaiting_callback"
    assert (last.trigger, last.outcome) == ("receive_code", "protocol_error")


def test_expired_authorization_request_is_rejected(
    client: OAuthClient, demo: Demo, browser: requests.Session, clock: FakeClock
) -> None:
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)
    clock.advance(client.config.pending_lifetime)

    with pytest.raises(StateMismatchError, match="expired"):
        client.handle_callback(flow_id, callback)

    assert client.status(flow_id).state == "awaiting_callback"
    assert client.events(flow_id)[-1].outcome == "state_mismatch"
    assert demo.exchanges("authorization_code") == 0


def test_new_start_replaces_pending_state(
    client: OAuthClient, demo: Demo, browser: requests.Session
) -> None:
    flow_id = client.create_flow()
    old_callback = approved_callback(client, browser, flow_id)
    client.start(flow_id)

    with pytest.raises(StateMismatchError):
        client.handle_callback(flow_id, old_callback)

    assert demo.exchanges("authorization_code") == 0


# --- invalid triggers ----------------------------------------------------------


def test_exchange_without_code_is_invalid_trigger(client: OAuthClient) -> None:
    flow_id = client.create_flow()

    with pytest.raises(InvalidTriggerError) as caught:
        client.exchange_code(flow_id)

    assert caught.value.state == "unauthorized"
    assert caught.value.valid_triggers == ("start",)
    assert "valid triggers there: start" in str(caught.value)


def test_refresh_trigger_in_token_held_is_invalid(
    client: OAuthClient, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)
    events_before = len(client.events(flow_id))

    with pytest.raises(InvalidTriggerError) as caught:
        client.engine.fire(flow_id, "refresh")

    assert caught.value.valid_triggers == ("expire", "logout")
    assert "'refresh'" in str(caught.value)
    assert "token_held" in str(caught.value)
    assert len(client.events(flow_id)) == events_before


def test_start_while_token_held_is_invalid(
    client: OAuthClient, browser: requests.Session
) -> None:
    flow_id = full_grant(client, browser)

    with pytest.raises(InvalidTriggerError) as caught:
        client.start(flow_id)

    assert caught.value.trigger == "start"
    assert client.status(flow_id).state == "token_held"


# --- hostile token endpoints: the code exchange --------------------------------

HTML_500 = (
    "<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
    "<body><h1>Internal Server Error</h1>"
    + "<p>Stack trace line.</p>" * 300
    + "</body></html>"
)

BROKEN_TOKEN_ENDPOINTS: dict[
    str, tuple[Callable[[Exchange], None], type[FlowEngineError]]
] = {
    "html_500": (
        reply(500, HTML_500, content_type="text/html; charset=utf-8"),
        ProtocolError,
    ),
    "not_json": (reply(200, "OK", content_type="text/plain"), ProtocolError),
    "json_without_access_token": (
        reply(200, {"token_type": "Bearer", "expires_in": 3600}),
        ProtocolError,
    ),
    "json_array": (reply(200, "[]"), ProtocolError),
    "mac_token": (
        reply(200, {"access_token": "x", "token_type": "mac"}),
        ProtocolError,
    ),
    "never_answers": (never_answer, TransportError),
    "stalls_mid_body": (stall_mid_body, TransportError),
    "trickles_body": (trickle_body, TransportError),
    "oversized_body": (
        reply(200, b" " * (2 << 20), content_type="application/json"),
        ProtocolError,
    ),
}


def hostile_config(demo: Demo, token_endpoint: str) -> ClientConfig:
    return demo.config(
        token_endpoint=token_endpoint, connect_timeout=0.5, read_timeout=0.5
    )


def code_received_flow(
    client: OAuthClient, browser: requests.Session
) -> tuple[str, str]:
    """Run a grant up to the code exchange; return the flow id and callback."""
    flow_id = client.create_flow()
    callback = approved_callback(client, browser, flow_id)
    return flow_id, callback


@pytest.mark.parametrize("case", sorted(BROKEN_TOKEN_ENDPOINTS))
def test_broken_code_exchange_keeps_code(
    case: str,
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6749 §4.1.3: a failed exchange keeps the code for a retry."""
    script, expected = BROKEN_TOKEN_ENDPOINTS[case]
    with ScriptedServer(script) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))
        flow_id, callback = code_received_flow(hostile, browser)

        with pytest.raises(expected) as caught:
            hostile.handle_callback(flow_id, callback)

        record = hostile.engine.load(flow_id)
        last = hostile.events(flow_id)[-1]
        assert len(server.requests) == 1
        if case == "trickles_body":
            assert server.hung_up.wait(10), "client read the whole trickled body"

    assert type(caught.value) is expected
    assert record.state == "code_received"
    assert record.data["code"]
    assert record.data["code_verifier"]
    assert record.data["last_error"] == caught.value.code
    assert (last.trigger, last.destination, last.outcome) == (
        "exchange_failed",
        "code_received",
        caught.value.code,
    )

    # The kept code and verifier still buy a token from the real endpoint.
    good = make_client(demo.config())
    assert good.exchange_code(flow_id).state == "token_held"
    assert demo.count("authorization_code") == 1


def test_code_exchange_to_refused_port_keeps_code(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    with refused_port() as port:
        hostile = make_client(hostile_config(demo, f"http://127.0.0.1:{port}/token"))
        flow_id, callback = code_received_flow(hostile, browser)

        with pytest.raises(TransportError) as caught:
            hostile.handle_callback(flow_id, callback)

    assert str(port) in caught.value.url
    assert hostile.status(flow_id).state == "code_received"
    assert make_client(demo.config()).exchange_code(flow_id).state == "token_held"


def test_code_exchange_error_with_status_200_ends_grant(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6749 §5.2: an error body is an error whatever the HTTP status."""
    body = {"error": "invalid_grant", "error_description": "code expired"}
    with ScriptedServer(reply(200, body)) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))
        flow_id, callback = code_received_flow(hostile, browser)

        with pytest.raises(OAuthError) as caught:
            hostile.handle_callback(flow_id, callback)

    record = hostile.engine.load(flow_id)
    last = hostile.events(flow_id)[-1]
    assert caught.value.error == "invalid_grant"
    assert caught.value.status == 200
    assert record.state == "unauthorized"
    assert "code" not in record.data
    assert record.data["last_error"] == "invalid_grant"
    assert (last.trigger, last.outcome) == ("reject_code", "invalid_grant")
    assert last.details["error_description"] == "code expired"


def test_html_500_error_names_status_and_excerpt(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6749 §5.2: an HTML 500 page is no OAuth error response."""
    script = reply(500, HTML_500, content_type="text/html")
    with ScriptedServer(script) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))
        flow_id, callback = code_received_flow(hostile, browser)

        with pytest.raises(ProtocolError) as caught:
            hostile.handle_callback(flow_id, callback)

    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value)
    assert "500 Internal Server Error" in caught.value.excerpt
    assert len(str(caught.value)) < 500


# --- hostile token endpoints: refresh ------------------------------------------

BROKEN_REFRESH: dict[str, tuple[Callable[[Exchange], None], type[FlowEngineError]]] = {
    "html_500": (reply(500, HTML_500, content_type="text/html"), ProtocolError),
    "not_json": (reply(200, "OK", content_type="text/plain"), ProtocolError),
    "json_without_access_token": (reply(200, {"token_type": "Bearer"}), ProtocolError),
    "never_answers": (never_answer, TransportError),
    "stalls_mid_body": (stall_mid_body, TransportError),
    "temporarily_unavailable": (
        reply(503, {"error": "temporarily_unavailable"}),
        OAuthError,
    ),
}


def expired_flow(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> tuple[str, dict[str, Any]]:
    """Return a flow whose access token the server has expired, and its data."""
    good = make_client(demo.config())
    flow_id = full_grant(good, browser)
    demo.db.expire_access_tokens()
    return flow_id, dict(good.engine.load(flow_id).data)


def assert_refresh_can_resume(
    flow_id: str,
    granted: dict[str, Any],
    demo: Demo,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    good = make_client(demo.config())
    record = good.engine.load(flow_id)

    assert record.state == "expired"
    assert record.data["refresh_token"] == granted["refresh_token"]
    assert "lease_id" not in record.data
    assert good.fetch_resource(flow_id).status == 200
    assert good.status(flow_id).state == "token_held"
    assert demo.count("refresh_token") == 1


@pytest.mark.parametrize("case", sorted(BROKEN_REFRESH))
def test_broken_refresh_keeps_refresh_token(
    case: str,
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    script, expected = BROKEN_REFRESH[case]
    flow_id, granted = expired_flow(demo, browser, make_client)
    with ScriptedServer(script) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))

        with pytest.raises(expected) as caught:
            hostile.fetch_resource(flow_id)

        sent = urllib.parse.parse_qs(server.requests[0].body.decode())

    last = hostile.events(flow_id)[-1]
    assert type(caught.value) is expected
    assert sent["grant_type"] == ["refresh_token"]
    assert sent["refresh_token"] == [granted["refresh_token"]]
    assert (last.trigger, last.source, last.destination) == (
        "refresh_failed",
        "refreshing",
        "expired",
    )
    assert last.outcome == caught.value.code
    assert_refresh_can_resume(flow_id, granted, demo, make_client)


def test_refresh_to_refused_port_keeps_refresh_token(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    flow_id, granted = expired_flow(demo, browser, make_client)
    with refused_port() as port:
        hostile = make_client(hostile_config(demo, f"http://127.0.0.1:{port}/token"))

        with pytest.raises(TransportError):
            hostile.fetch_resource(flow_id)
        with pytest.raises(TransportError):
            hostile.refresh(flow_id)

    assert_refresh_can_resume(flow_id, granted, demo, make_client)


def test_explicit_refresh_failure_keeps_tokens(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6749 §6: a refresh that times out keeps both tokens."""
    good = make_client(demo.config())
    flow_id = full_grant(good, browser)
    granted = dict(good.engine.load(flow_id).data)
    with ScriptedServer(never_answer) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))

        with pytest.raises(TransportError):
            hostile.refresh(flow_id)

    record = good.engine.load(flow_id)
    assert record.state == "expired"
    assert record.data["refresh_token"] == granted["refresh_token"]
    assert record.data["access_token"] == granted["access_token"]
    assert good.fetch_resource(flow_id).status == 200
    assert demo.count("refresh_token") == 1


def test_refresh_rejected_with_invalid_grant_ends_grant(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    flow_id, _ = expired_flow(demo, browser, make_client)
    body = {"error": "invalid_grant", "error_description": "refresh token revoked"}
    with ScriptedServer(reply(400, body)) as server:
        hostile = make_client(hostile_config(demo, f"{server.url}/token"))

        with pytest.raises(OAuthError) as caught:
            hostile.fetch_resource(flow_id)

    record = hostile.engine.load(flow_id)
    assert caught.value.error == "invalid_grant"
    assert record.state == "unauthorized"
    assert "refresh_token" not in record.data
    assert "access_token" not in record.data
    assert hostile.events(flow_id)[-1].trigger == "reject_refresh"


# --- hostile resources ---------------------------------------------------------


def resource_client(
    demo: Demo,
    server: ScriptedServer,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> tuple[OAuthClient, str]:
    client = make_client(demo.config(resource_url=f"{server.url}/resource"))
    return client, full_grant(client, browser)


def test_resource_401_twice_refreshes_once(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6750 §3.1: invalid_token leads to one refresh and one retry."""
    challenge = {"WWW-Authenticate": 'Bearer realm="r", error="invalid_token"'}
    with ScriptedServer(reply(401, b"", headers=challenge)) as server:
        client, flow_id = resource_client(demo, server, browser, make_client)
        first_token = client.engine.load(flow_id).data["access_token"]

        with pytest.raises(ResourceError) as caught:
            client.fetch_resource(flow_id)

        sent = [r.headers["authorization"] for r in server.requests]

    assert caught.value.status == 401
    assert caught.value.error == "invalid_token"
    assert demo.exchanges("refresh_token") == 1
    assert len(sent) == 2
    assert sent[0] == f"Bearer {first_token}"
    assert sent[1] != sent[0]
    assert client.status(flow_id).state == "expired"


def test_resource_403_insufficient_scope_does_not_refresh(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    """RFC 6750 §3.1: insufficient_scope is no reason to refresh."""
    challenge = {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="admin"'}
    with ScriptedServer(reply(403, b"", headers=challenge)) as server:
        client, flow_id = resource_client(demo, server, browser, make_client)

        with pytest.raises(ResourceError) as caught:
            client.fetch_resource(flow_id)

        requests_seen = len(server.requests)

    assert caught.value.status == 403
    assert caught.value.error == "insufficient_scope"
    assert caught.value.scope == "admin"
    assert requests_seen == 1
    assert demo.exchanges("refresh_token") == 0
    assert client.status(flow_id).state == "token_held"


def test_resource_500_is_resource_error(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    script = reply(500, HTML_500, content_type="text/html")
    with ScriptedServer(script) as server:
        client, flow_id = resource_client(demo, server, browser, make_client)

        with pytest.raises(ResourceError) as caught:
            client.fetch_resource(flow_id)

    assert caught.value.status == 500
    assert demo.exchanges("refresh_token") == 0
    assert client.status(flow_id).state == "token_held"


def test_unreachable_resource_is_transport_error(
    demo: Demo,
    browser: requests.Session,
    make_client: Callable[[ClientConfig], OAuthClient],
) -> None:
    with refused_port() as port:
        client = make_client(
            demo.config(resource_url=f"http://127.0.0.1:{port}/resource")
        )
        flow_id = full_grant(client, browser)

        with pytest.raises(TransportError):
            client.fetch_resource(flow_id)

    assert client.status(flow_id).state == "token_held"
    assert demo.exchanges("refresh_token") == 0


# --- the HTTP adapter ------------------------------------------------------------


def chunked_gzip(exchange: Exchange) -> None:
    """Send a gzip body in chunked transfer encoding, one chunk per write."""
    body = gzip.compress(b'{"access_token": "at", "token_type": "Bearer"}')
    head = (
        "HTTP/1.1 200 OK\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    exchange.send(head.encode())
    for start in range(0, len(body), 7):
        piece = body[start : start + 7]
        exchange.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    exchange.send(b"0\r\n\r\n")


def test_http_client_reads_chunked_gzip_body() -> None:
    with ScriptedServer(chunked_gzip) as server:
        http = HttpClient((1.0, 1.0))
        response = http.send(HttpRequest("GET", f"{server.url}/x"))
        http.close()

    assert response.status == 200
    assert response.body == b'{"access_token": "at", "token_type": "Bearer"}'


def test_http_client_sends_form_and_headers() -> None:
    with ScriptedServer(reply(204, b"", content_type=None)) as server:
        http = HttpClient((1.0, 1.0))
        http.send(
            HttpRequest("POST", f"{server.url}/t", {"Accept": "x/y"}, {"a": "b c"})
        )
        http.close()
        seen = server.requests[0]

    assert (seen.method, seen.path) == ("POST", "/t")
    assert seen.headers["accept"] == "x/y"
    assert seen.body == b"a=b+c"


def test_http_client_does_not_follow_redirects() -> None:
    moved = {"Location": "http://127.0.0.1:1/elsewhere"}
    with ScriptedServer(reply(302, b"", headers=moved)) as server:
        http = HttpClient((1.0, 1.0))
        response = http.send(HttpRequest("POST", f"{server.url}/token"))
        http.close()

    assert response.status == 302
    assert len(server.requests) == 1


def test_http_client_rejects_body_over_cap() -> None:
    body = b"x" * 5000
    with ScriptedServer(reply(200, body, content_type="text/plain")) as server:
        http = HttpClient((1.0, 1.0), max_body=4096)

        with pytest.raises(ProtocolError, match="larger than 4096 bytes"):
            http.send(HttpRequest("GET", f"{server.url}/big"))
        http.close()


def test_http_client_truncated_body_is_transport_error() -> None:
    def truncated(exchange: Exchange) -> None:
        exchange.send(response_bytes(200, b'{"a": 1', content_length=100))

    with ScriptedServer(truncated) as server:
        http = HttpClient((1.0, 1.0))

        with pytest.raises(TransportError, match="reading the response"):
            http.send(HttpRequest("GET", f"{server.url}/short"))
        http.close()
