"""No secret of a grant may reach logs, the audit trail, reprs or errors.

One test runs a whole grant, a refresh and a series of failures against
hostile peers, with DEBUG logging on for every logger. It records the real
secret values as they appear (the client secret, the state value, the PKCE
verifier, the code and every access and refresh token) and then searches
everything a user or an operator could see for them.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import (
    ScriptedServer,
    echo_request,
    never_answer,
    refused_port,
    reply,
    stall_mid_body,
)

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
from flowengine.errors import FlowEngineError
from flowengine.grant import tokens_of
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.protocol import (
    basic_authorization,
    refresh_request,
    resource_request,
    token_request,
)

REDIRECT_URI = "http://localhost:9000/callback"
CLIENT_ID = "secret-test-client"
# Characters that form encoding and Basic credentials must both survive.
CLIENT_SECRET = f"cs+/:= {secrets.token_hex(12)}"

ECHO_PAGE = (
    "<html><body><h1>400 Bad Request</h1><p>The request was: {body}</p>"
    "<pre>{headers}</pre></body></html>"
)

ECHOING_TOKEN_ENDPOINTS = {
    "html_echo": echo_request(500, ECHO_PAGE, content_type="text/html"),
    "text_echo": echo_request(
        400, "invalid request: {body}", content_type="text/plain"
    ),
    "bare_form_echo": echo_request(400, "{body}", content_type="text/plain"),
    "json_echo": echo_request(
        500, '{"message": "failed", "request": "{body}"}', content_type="text/json"
    ),
    "html_500": reply(500, "<html><body>Oops</body></html>", content_type="text/html"),
    "never_answers": never_answer,
    "stalls_mid_body": stall_mid_body,
    # Last, because an OAuth error ends a code exchange for good.
    "oauth_error_echo": echo_request(
        503,
        '{"error": "temporarily_unavailable", "error_description": "{body}"}',
        content_type="application/json",
    ),
}

HEADER_ECHO_PAGE = "<html><body><pre>{headers}</pre><p>Server error.</p></body></html>"

ECHOING_RESOURCES = {
    "html_echo": echo_request(500, HEADER_ECHO_PAGE, content_type="text/html"),
    "text_echo": echo_request(
        502, "upstream failed for {headers}", content_type="text/plain"
    ),
    "forbidden_echo": echo_request(
        403, "forbidden for {headers}", content_type="text/plain"
    ),
}


class FakeClock:
    def __init__(self) -> None:
        self.current = 1_700_000_000.0

    def now(self) -> float:
        return self.current


class DeferredApp:
    """A WSGI app whose target is set once its server has bound its port."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.target(environ, start_response)


class Findings:
    """Collects the secret values of a run and every text that is shown."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.texts: list[tuple[str, str]] = []

    def add_secret(self, name: str, value: object) -> None:
        assert isinstance(value, str) and value, f"no value for {name}"
        self.secrets[name] = value

    def add_text(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def add_error(self, where: str, error: BaseException) -> None:
        seen: set[int] = set()
        current: BaseException | None = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            self.add_text(f"{where}: str", str(current))
            self.add_text(f"{where}: repr", repr(current))
            current = current.__cause__ or current.__context__

    def leaks(self) -> list[str]:
        found = []
        for where, text in self.texts:
            for name, value in self.secrets.items():
                if any(piece in text for piece in pieces(value)):
                    found.append(f"{name} in {where}")
        return found


# A shown piece of a secret this long counts as a leak: an excerpt cut in
# the middle of a token still gives most of it away. Shorter pieces, such as
# the 4-character token labels of FlowStatus, are allowed.
PIECE_LENGTH = 12


def pieces(value: str) -> set[str]:
    """Return every run of PIECE_LENGTH characters of each encoding of `value`."""
    found: set[str] = set()
    for form in encodings(value):
        if len(form) <= PIECE_LENGTH:
            found.add(form)
            continue
        found.update(
            form[start : start + PIECE_LENGTH]
            for start in range(len(form) - PIECE_LENGTH + 1)
        )
    return found


def encodings(value: str) -> set[str]:
    """Return the forms in which `value` could appear in a text."""
    return {
        value,
        urllib.parse.quote_plus(value),
        urllib.parse.quote(value, safe=""),
        json.dumps(value)[1:-1],
    }


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    clock = FakeClock()
    db = DemoDatabase(now=clock.now)
    deferred = DeferredApp()
    auth = BackgroundServer(deferred, name="demo-auth")
    settings = DemoSettings(
        issuer=auth.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uris=(REDIRECT_URI,),
    )
    deferred.target = create_authorization_server(settings, db)
    resource = BackgroundServer(create_resource_server(settings, db))
    auth.start()
    resource.start()
    store = SQLiteStore(tmp_path / "flows.sqlite3")
    yield {"db": db, "clock": clock, "auth": auth, "resource": resource, "store": store}
    store.close()
    auth.stop()
    resource.stop()


@pytest.fixture
def browser() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False
        yield session


def test_grant_refresh_and_failures_leak_no_secret(
    demo: dict[str, Any],
    browser: requests.Session,
    caplog: pytest.LogCaptureFixture,
    token_auth_method: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="transitions")
    findings = Findings()
    findings.add_secret("client_secret", CLIENT_SECRET)
    findings.add_secret(
        "basic_credentials", basic_authorization(CLIENT_ID, CLIENT_SECRET)[6:]
    )
    base = ClientConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_auth_method=token_auth_method,
        authorization_endpoint=f"{demo['auth'].url}/authorize",
        token_endpoint=f"{demo['auth'].url}/token",
        resource_url=f"{demo['resource'].url}/resource",
        issuer=demo["auth"].url,
        connect_timeout=0.5,
        read_timeout=0.5,
        store="memory:",
    )
    clients: list[OAuthClient] = []

    def make_client(**changes: Any) -> OAuthClient:
        client = OAuthClient(
            base.replace(**changes), store=demo["store"], clock=demo["clock"]
        )
        clients.append(client)
        return client

    browser_records: set[int] = set()

    def user_approves(authorization_url: str) -> str:
        # The browser's own request line carries the state value by design
        # (RFC 6749 §4.1.1), so urllib3's DEBUG lines for it are not the
        # client's output and are left out of the search.
        first = len(caplog.records)
        callback = approve(browser, authorization_url)
        for record in caplog.records[first:]:
            if record.name.startswith("urllib3"):
                browser_records.add(id(record))
        return callback

    good = make_client()

    # A grant and a refresh, recording each secret as it appears.
    flow_a = good.create_flow()
    url = good.start(flow_a)
    findings.add_secret("state", query_value(url, "state"))
    pending = good.engine.load(flow_a)
    findings.add_secret("code_verifier", pending.data["code_verifier"])
    findings.add_text("FlowRecord awaiting_callback", repr(pending))
    callback = user_approves(url)
    findings.add_secret("code", query_value(callback, "code"))
    good.handle_callback(flow_a, callback)
    granted = good.engine.load(flow_a)
    findings.add_secret("access_token_1", granted.data["access_token"])
    findings.add_secret("refresh_token_1", granted.data["refresh_token"])
    findings.add_text(
        "HttpRequest token",
        repr(
            token_request(
                base, findings.secrets["code"], findings.secrets["code_verifier"]
            )
        ),
    )
    assert good.fetch_resource(flow_a).status == 200

    demo["db"].expire_access_tokens()
    assert good.fetch_resource(flow_a).status == 200
    refreshed = good.engine.load(flow_a)
    findings.add_secret("access_token_2", refreshed.data["access_token"])
    findings.add_secret("refresh_token_2", refreshed.data["refresh_token"])
    assert refreshed.data["refresh_token"] != granted.data["refresh_token"]

    # A second grant whose code exchange meets hostile token endpoints.
    flow_b = good.create_flow()
    url_b = good.start(flow_b)
    findings.add_secret("state_b", query_value(url_b, "state"))
    findings.add_secret(
        "code_verifier_b", good.engine.load(flow_b).data["code_verifier"]
    )
    callback_b = user_approves(url_b)
    findings.add_secret("code_b", query_value(callback_b, "code"))
    with refused_port() as port:
        hostile = make_client(token_endpoint=f"http://127.0.0.1:{port}/token")
        with pytest.raises(FlowEngineError) as refused:
            hostile.handle_callback(flow_b, callback_b)
    findings.add_error("code exchange refused", refused.value)
    stuck = good.engine.load(flow_b)
    assert stuck.state == "code_received"
    findings.add_text("FlowRecord code_received", repr(stuck))
    for case, script in ECHOING_TOKEN_ENDPOINTS.items():
        with ScriptedServer(script) as server:
            hostile = make_client(token_endpoint=f"{server.url}/token")
            with pytest.raises(FlowEngineError) as caught:
                hostile.exchange_code(flow_b)
        findings.add_error(f"code exchange {case}", caught.value)

    # Refreshes of the first flow that meet the same hostile endpoints.
    demo["db"].expire_access_tokens()
    for case, script in ECHOING_TOKEN_ENDPOINTS.items():
        with ScriptedServer(script) as server:
            hostile = make_client(token_endpoint=f"{server.url}/token")
            with pytest.raises(FlowEngineError) as caught:
                hostile.fetch_resource(flow_a)
        findings.add_error(f"refresh {case}", caught.value)
    assert good.engine.load(flow_a).state == "expired"
    assert good.fetch_resource(flow_a).status == 200
    final = good.engine.load(flow_a)
    findings.add_secret("access_token_3", final.data["access_token"])
    findings.add_secret("refresh_token_3", final.data["refresh_token"])

    # Resources that echo the bearer token back in their error pages.
    for case, script in ECHOING_RESOURCES.items():
        with ScriptedServer(script) as server:
            hostile = make_client(resource_url=f"{server.url}/resource")
            with pytest.raises(FlowEngineError) as caught:
                hostile.fetch_resource(flow_a)
        findings.add_error(f"resource {case}", caught.value)

    # Everything a user or an operator could see.
    for flow_id in (flow_a, flow_b):
        record = good.engine.load(flow_id)
        events = [event.to_dict() for event in good.events(flow_id)]
        findings.add_text(f"audit trail {flow_id}", json.dumps(events))
        findings.add_text(f"FlowRecord {flow_id}", repr(record))
        findings.add_text(f"FlowStatus {flow_id}", repr(good.status(flow_id)))
        findings.add_text(f"TokenSet {flow_id}", repr(tokens_of(dict(record.data))))
    findings.add_text("ClientConfig", repr(base) + str(base))
    findings.add_text(
        "HttpRequest refresh",
        repr(refresh_request(base, findings.secrets["refresh_token_3"])),
    )
    findings.add_text(
        "HttpRequest resource",
        repr(resource_request(base, findings.secrets["access_token_3"])),
    )
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = [r for r in caplog.records if id(r) not in browser_records]
    for log_record in logged:
        findings.add_text(
            f"log record of {log_record.name}", formatter.format(log_record)
        )
    for client in clients:
        client.http.close()

    assert any(r.name.startswith("flowengine.engine") for r in logged)
    assert any(r.name.startswith("urllib3") for r in logged)
    assert len(findings.secrets) == 14
    assert findings.leaks() == []


@pytest.fixture(params=["client_secret_basic", "client_secret_post"])
def token_auth_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def query_value(url: str, name: str) -> str:
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)[name]
    assert len(values) == 1
    return values[0]


def test_findings_detect_planted_secret() -> None:
    findings = Findings()
    findings.add_secret("token", "planted+value/1")
    findings.add_text("plain", "x planted+value/1 y")
    findings.add_text("form", "a=planted%2Bvalue%2F1")
    findings.add_text("cut", "excerpt ends in planted+valu")
    findings.add_text("label", "plan…(15 chars)")
    findings.add_text("clean", "nothing here")

    assert findings.leaks() == ["token in plain", "token in form", "token in cut"]


def test_findings_follow_error_chain() -> None:
    findings = Findings()
    findings.add_secret("code", "code-value-4411")
    try:
        try:
            raise ValueError("bad code-value-4411")
        except ValueError as inner:
            raise FlowEngineError("outer") from inner
    except FlowEngineError as outer:
        findings.add_error("chain", outer)

    assert findings.leaks() == ["code in chain: str", "code in chain: repr"]


def test_echo_page_contains_what_it_echoes(browser: requests.Session) -> None:
    script = echo_request(500, ECHO_PAGE, content_type="text/html")
    with ScriptedServer(script) as server:
        answer = browser.post(
            f"{server.url}/token",
            data={"code": "echoed-code-77"},
            headers={"Authorization": "Bearer echoed-token-88"},
            timeout=5,
        )

    assert "code=echoed-code-77" in answer.text
    assert "authorization: Bearer echoed-token-88" in answer.text
