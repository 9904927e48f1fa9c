"""Hardening of the client: each test pins one defence and fails without it.

The peers are real: the demo authorization server and resource under
waitress, small Flask apps, and the scripted raw-socket servers of
hostile.py for peers that misbehave or must record what they received. All
of them listen on loopback ports that the tests choose.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask, jsonify, request
from hostile import (
    Exchange,
    Script,
    ScriptedServer,
    never_answer,
    reply,
    response_bytes,
    stall_mid_body,
)

from flowengine.adapters.http import HttpClient
from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.engine import Run
from flowengine.errors import (
    ConfigError,
    ConflictError,
    IssuerMismatchError,
    OAuthError,
    ProtocolError,
    ResourceError,
    StateMismatchError,
    TransportError,
)
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpRequest
from flowengine.oauth.protocol import TokenSet, parse_callback
from flowengine.records import AuditEvent, FlowRecord
from flowengine.web import create_app

TIMEOUT = 10
START = 1_700_000_000.0
REDIRECT_URI = "http://localhost:9000/callback"
# Never contacted: grants against scripted token endpoints build their
# callback URLs themselves.
UNUSED_AUTHORIZATION_ENDPOINT = "http://127.0.0.1:9/authorize"
TOKEN_LIFETIME = 3600
EVIL_URL = "https://evil.example.test/steal"


# --- shared helpers ----------------------------------------------------------


class FakeClock:
    """A clock that moves only when the test moves it."""

    def __init__(self, start: float = START) -> None:
        self.current = start

    def now(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


class DeferredApp:
    """A WSGI app whose target is set once its server has bound a port.

    Issuer and redirect URIs contain ports known only after binding.
    """

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: Any, start_response: Any) -> Any:
        return self.target(environ, start_response)


def query_value(url: str, name: str) -> str:
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)[name]
    assert len(values) == 1
    return values[0]


def with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    query.update(changes)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def callback_for(
    authorization_url: str, redirect_uri: str = REDIRECT_URI, **params: str
) -> str:
    """Build the redirect back to the client for an authorization request.

    Carries the request's state and a code, unless `params` contain an error.
    """
    values = {"state": query_value(authorization_url, "state")}
    if "error" not in params:
        values["code"] = "code-from-the-authorization-server"
    values.update(params)
    separator = "&" if "?" in redirect_uri else "?"
    return redirect_uri + separator + urllib.parse.urlencode(values)


def token_body(
    access_token: str = "at-first-0123456789",
    refresh_token: str | None = "rt-first-0123456789",
    **extra: object,
) -> dict[str, object]:
    body: dict[str, object] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME,
        **extra,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


def token_endpoint(code_reply: dict[str, object], refresh_reply: Script) -> Script:
    """Reply to the code exchange with `code_reply` and to refreshes with a script."""

    def script(exchange: Exchange) -> None:
        form = urllib.parse.parse_qs(exchange.request.body.decode("ascii"))
        if form.get("grant_type") == ["refresh_token"]:
            refresh_reply(exchange)
            return
        payload = json.dumps(code_reply).encode()
        exchange.send(response_bytes(200, payload))

    return script


def scripted_client(
    token_url: str,
    *,
    store: MemoryStore | None = None,
    clock: FakeClock | None = None,
    **changes: Any,
) -> OAuthClient:
    """Return a client whose token endpoint is `token_url`, without discovery."""
    values: dict[str, Any] = {
        "authorization_endpoint": UNUSED_AUTHORIZATION_ENDPOINT,
        "token_endpoint": token_url,
        "resource_url": "http://127.0.0.1:9/resource",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "store": "memory:",
    }
    values.update(changes)
    return OAuthClient(
        ClientConfig(**values),
        store=store if store is not None else MemoryStore(),
        clock=clock or FakeClock(),
    )


def grant_token(client: OAuthClient, redirect_uri: str = REDIRECT_URI) -> str:
    """Run a grant whose callback the test writes; return the flow id."""
    flow_id = client.create_flow()
    url = client.start(flow_id)
    client.handle_callback(flow_id, callback_for(url, redirect_uri))
    assert client.status(flow_id).state == "token_held"
    return flow_id


def form_of(body: bytes) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(body.decode("ascii"), keep_blank_values=True)


@dataclasses.dataclass
class DemoServers:
    """The demo authorization server and resource of one test."""

    database: DemoDatabase
    auth_url: str
    resource_url: str

    def config(self, **changes: Any) -> ClientConfig:
        values: dict[str, Any] = {
            "issuer": self.auth_url,
            "resource_url": f"{self.resource_url}/resource",
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "store": "memory:",
        }
        values.update(changes)
        return ClientConfig(**values)

    def code_exchanges(self) -> int:
        """Count every authorization_code token request, whatever its outcome."""
        counts = self.database.token_requests.items()
        return sum(n for (kind, _), n in counts if kind == "authorization_code")


@contextlib.contextmanager
def demo_servers(redirect_uri: str = REDIRECT_URI) -> Iterator[DemoServers]:
    database = DemoDatabase()
    deferred = DeferredApp()
    auth = BackgroundServer(deferred, name="demo authorization server")
    settings = DemoSettings(issuer=auth.url, redirect_uris=(redirect_uri,))
    deferred.target = create_authorization_server(settings, database)
    resource = BackgroundServer(create_resource_server(settings, database))
    with auth, resource:
        yield DemoServers(database, auth.url, resource.url)


@pytest.fixture
def browser() -> Iterator[requests.Session]:
    with requests.Session() as session:
        # Every peer is on loopback; no proxy from the environment may see it.
        session.trust_env = False
        yield session


# --- state: entropy, single use, session binding, constant time, expiry -------


def test_state_value_has_256_random_bits() -> None:
    client = scripted_client("http://127.0.0.1:9/token")
    states = {query_value(client.start(), "state") for _ in range(20)}

    assert len(states) == 20
    for state in states:
        padded = state + "=" * (-len(state) % 4)
        assert len(base64.urlsafe_b64decode(padded)) == 32


class LoadBarrierStore:
    """A MemoryStore whose next loads of a flow awaiting its callback meet.

    While `armed`, each load of such a flow waits at a barrier until every
    party has loaded it, so all parties hold the same version before any
    of them saves. The barrier disarms itself once it opens.
    """

    def __init__(self, parties: int) -> None:
        self.inner = MemoryStore()
        self.armed = False
        self.barrier = threading.Barrier(parties, action=self._disarm, timeout=TIMEOUT)

    def _disarm(self) -> None:
        self.armed = False

    def load(self, flow_id: str) -> FlowRecord:
        record = self.inner.load(flow_id)
        if self.armed and record.state == "awaiting_callback":
            self.barrier.wait()
        return record

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        self.inner.create(record, event)

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        self.inner.commit(record, event)

    def events(self, flow_id: str) -> list[AuditEvent]:
        return self.inner.events(flow_id)

    def flows(self) -> list[FlowRecord]:
        return self.inner.flows()


def test_concurrent_duplicate_callback_exchanges_code_once(
    browser: requests.Session,
) -> None:
    """Two threads deliver one callback at the same moment; one code exchange.

    The state value is claimed by the compare-and-set of `receive_code`, so
    the thread that loses the race never reaches the token endpoint.
    """
    store = LoadBarrierStore(parties=2)
    with demo_servers() as demo:
        client = OAuthClient(demo.config(), store=store)
        flow_id = client.create_flow()
        callback = approve(browser, client.start(flow_id))
        outcomes: list[object] = []

        def deliver() -> None:
            try:
                outcomes.append(client.handle_callback(flow_id, callback))
            except (ConflictError, StateMismatchError) as exc:
                outcomes.append(exc)

        store.armed = True
        threads = [threading.Thread(target=deliver) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 2)
        client.close()

    records = [o for o in outcomes if isinstance(o, FlowRecord)]
    rejected = [o for o in outcomes if not isinstance(o, FlowRecord)]
    claims = [
        event
        for event in store.events(flow_id)
        if event.trigger == "receive_code" and event.ok
    ]
    assert not store.barrier.broken
    assert len(records) == 1
    assert len(rejected) == 1
    assert records[0].state == "token_held"
    assert len(claims) == 1
    assert demo.code_exchanges() == 1


def test_state_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The received state reaches hmac.compare_digest, never `==`.

    Timing cannot be asserted reliably, so the test records the calls of
    the real compare_digest instead.
    """
    calls: list[tuple[object, object]] = []
    real_compare = hmac.compare_digest

    def recording_compare(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recording_compare)
    client = scripted_client("http://127.0.0.1:9/token")
    flow_id = client.create_flow()
    url = client.start(flow_id)
    expected = query_value(url, "state").encode()
    forged_state = "f" * 43
    forged = callback_for(url, state=forged_state)

    assert client.find_flow_for_callback([flow_id], forged) is None
    assert (expected, forged_state.encode()) in calls

    calls.clear()
    with pytest.raises(StateMismatchError):
        client.handle_callback(flow_id, forged)
    assert (expected, forged_state.encode()) in calls
    assert client.status(flow_id).state == "awaiting_callback"


def test_pending_lifetime_is_configurable() -> None:
    """A callback is accepted until pending_lifetime has passed, not after."""
    clock = FakeClock()
    with ScriptedServer(reply(200, token_body())) as server:
        client = scripted_client(
            f"{server.url}/token", clock=clock, pending_lifetime=5.0
        )
        in_time = client.create_flow()
        in_time_url = client.start(in_time)
        clock.advance(4.5)
        client.handle_callback(in_time, callback_for(in_time_url))

        too_late = client.create_flow()
        too_late_url = client.start(too_late)
        clock.advance(5.0)
        with pytest.raises(StateMismatchError, match="expired"):
            client.handle_callback(too_late, callback_for(too_late_url))
        exchanges = len(server.requests)

    assert client.status(in_time).state == "token_held"
    assert client.status(too_late).state == "awaiting_callback"
    assert exchanges == 1


# --- PKCE and the issuer --------------------------------------------------------


def test_token_request_sends_verifier_of_s256_challenge() -> None:
    """RFC 7636 §4.2 and §4.5: the verifier sent hashes to the challenge."""
    with ScriptedServer(reply(200, token_body())) as server:
        client = scripted_client(f"{server.url}/token")
        flow_id = client.create_flow()
        url = client.start(flow_id)
        client.handle_callback(flow_id, callback_for(url))
        sent = form_of(server.requests[0].body)

    verifier = sent["code_verifier"][0]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    assert query_value(url, "code_challenge_method") == "S256"
    assert query_value(url, "code_challenge") == expected
    assert 43 <= len(verifier) <= 128


def test_callback_checked_against_issuer_recorded_with_flow(
    browser: requests.Session,
) -> None:
    """RFC 9207 §2.4: `iss` is compared with the issuer the request went to.

    Two clients for two authorization servers share one store. The flow was
    started with server A, so a response naming server B is rejected even
    by the client configured for B.
    """
    store = MemoryStore()
    with demo_servers() as server_a, demo_servers() as server_b:
        client_a = OAuthClient(server_a.config(), store=store)
        client_b = OAuthClient(server_b.config(), store=store)
        client_b.discover()
        flow_id = client_a.create_flow()
        callback = approve(browser, client_a.start(flow_id))
        recorded = dict(store.load(flow_id).data)
        mixed_up = with_query(callback, iss=server_b.auth_url)

        with pytest.raises(IssuerMismatchError):
            client_b.handle_callback(flow_id, mixed_up)
        waiting = client_a.status(flow_id).state
        client_a.handle_callback(flow_id, callback)
        client_a.close()
        client_b.close()

    assert recorded["issuer"] == server_a.auth_url
    assert recorded["require_iss"] is True
    assert waiting == "awaiting_callback"
    assert server_b.code_exchanges() == 0
    assert store.load(flow_id).state == "token_held"


# --- discovery ----------------------------------------------------------------


@dataclasses.dataclass
class MetadataServer:
    """A Flask app that serves one metadata document at one path."""

    issuer: str
    paths_seen: list[str]
    document: dict[str, object]


@contextlib.contextmanager
def openid_only_server(
    issuer_path: str = "", *, document_issuer: str | None = None, serve: bool = True
) -> Iterator[MetadataServer]:
    """Serve only `/.well-known/openid-configuration` below the issuer's path.

    `document_issuer` replaces the issuer named in the document. Without
    `serve`, every path returns 404.
    """
    deferred = DeferredApp()
    server = BackgroundServer(deferred, name="openid-configuration only")
    issuer = server.url + issuer_path
    document: dict[str, object] = {
        "issuer": document_issuer or issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "revocation_endpoint": f"{issuer}/revoke",
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }
    seen: list[str] = []
    app = Flask("openid_only")

    @app.before_request
    def record_path() -> None:
        seen.append(request.path)

    if serve:

        @app.get(f"{issuer_path}/.well-known/openid-configuration")
        def openid_configuration() -> Any:
            return jsonify(document)

    deferred.target = app
    with server:
        yield MetadataServer(issuer, seen, document)


@pytest.mark.parametrize("issuer_path", ["", "/tenant/one"])
def test_discovery_falls_back_to_openid_configuration(issuer_path: str) -> None:
    """RFC 8414 §3.1 is tried first, then OpenID Connect Discovery 1.0 §4."""
    with openid_only_server(issuer_path) as server:
        client = OAuthClient(
            ClientConfig(issuer=server.issuer, store="memory:"), store=MemoryStore()
        )
        metadata = client.discover()
        flow_id = client.create_flow()
        url = client.start(flow_id)
        client.close()

    assert metadata is not None
    assert metadata.issuer == server.issuer
    assert server.paths_seen == [
        f"/.well-known/oauth-authorization-server{issuer_path}",
        f"{issuer_path}/.well-known/openid-configuration",
    ]
    assert client.config.authorization_endpoint == f"{server.issuer}/authorize"
    assert client.config.token_endpoint == f"{server.issuer}/token"
    assert client.config.revocation_endpoint == f"{server.issuer}/revoke"
    assert url.startswith(f"{server.issuer}/authorize?")
    assert client.engine.load(flow_id).data["require_iss"] is True


def test_openid_configuration_of_other_issuer_is_rejected() -> None:
    """RFC 8414 §3.3: the document's issuer must equal the configured one."""
    with openid_only_server(document_issuer="https://attacker.example.test") as server:
        client = OAuthClient(
            ClientConfig(issuer=server.issuer, store="memory:"), store=MemoryStore()
        )
        with pytest.raises(ProtocolError, match="identical"):
            client.start()
        client.close()

    assert client.config.token_endpoint is None


def test_explicit_endpoints_work_without_metadata(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 8414 §3: a server need not publish metadata; configured endpoints do."""
    with openid_only_server(serve=False) as server:
        explicit = OAuthClient(
            ClientConfig(
                issuer=server.issuer,
                authorization_endpoint=f"{server.issuer}/oauth/authorize",
                token_endpoint=f"{server.issuer}/oauth/token",
                store="memory:",
            ),
            store=MemoryStore(),
        )
        with caplog.at_level(logging.WARNING, logger="flowengine.client"):
            url = explicit.start()
        bare = OAuthClient(
            ClientConfig(issuer=server.issuer, store="memory:"), store=MemoryStore()
        )
        with pytest.raises(ProtocolError, match="publishes no metadata"):
            bare.start()
        explicit.close()
        bare.close()

    assert url.startswith(f"{server.issuer}/oauth/authorize?")
    assert "publishes no metadata" in caplog.text
    assert len(server.paths_seen) == 4


# --- redirect_uri -------------------------------------------------------------

EXACT_REDIRECT_URIS = [
    "http://127.0.0.1:9000/callback",
    "http://127.0.0.1:9000/callback/",
    "http://127.0.0.1:9000/cb?tenant=a%20b&x=1",
    "http://127.0.0.1:9000",
    "https://client.example.test/oauth/callback/",
]


@pytest.mark.parametrize("redirect_uri", EXACT_REDIRECT_URIS)
def test_redirect_uri_sent_exactly_as_configured(redirect_uri: str) -> None:
    """RFC 6749 §4.1.1 and §4.1.3: both requests carry the identical value.

    RFC 9700 §2.1 makes the server compare redirect URIs by exact string
    matching, so an added or removed slash breaks the grant.
    """
    with ScriptedServer(reply(200, token_body())) as server:
        client = scripted_client(f"{server.url}/token", redirect_uri=redirect_uri)
        flow_id = client.create_flow()
        url = client.start(flow_id)
        client.handle_callback(flow_id, callback_for(url, redirect_uri))
        received = server.requests[0]

    encoded = urllib.parse.urlencode({"redirect_uri": redirect_uri})
    assert query_value(url, "redirect_uri") == redirect_uri
    assert form_of(received.body)["redirect_uri"] == [redirect_uri]
    assert encoded.encode("ascii") in received.body.split(b"&")


# --- TLS and plain http ---------------------------------------------------------

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_http_client_ignores_proxy_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        ScriptedServer(reply(200, {"answered_by": "proxy"})) as proxy,
        ScriptedServer(reply(200, {"answered_by": "target"})) as target,
    ):
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        http = HttpClient((2.0, 5.0))
        answer = http.send(HttpRequest("GET", f"{target.url}/resource"))
        http.close()
        with requests.Session() as trusting:
            # The control: a session that reads the environment uses the proxy.
            control = trusting.get(f"{target.url}/resource", timeout=TIMEOUT)
        to_proxy = len(proxy.requests)
        to_target = len(target.requests)

    assert json.loads(answer.body) == {"answered_by": "target"}
    assert control.json() == {"answered_by": "proxy"}
    assert to_proxy == 1
    assert to_target == 1


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 that signs itself, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "server.pem"
    key_path = directory / "server.key"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate_path, key_path


class TLSScriptedServer(ScriptedServer):
    """A ScriptedServer that speaks TLS with the given certificate.

    The handshake runs in the connection's own thread, so a client that
    rejects the certificate ends only that connection.
    """

    def __init__(self, script: Script, certificate: Path, key: Path) -> None:
        super().__init__(script)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self._listener = context.wrap_socket(
            self._listener, server_side=True, do_handshake_on_connect=False
        )

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def test_tls_verification_cannot_be_turned_off_by_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 6749 §10.9: the client always validates the server's certificate.

    REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE name the server's own certificate,
    which a session that reads the environment would then trust.
    """
    certificate, key = write_self_signed_certificate(tmp_path)
    clear_proxy_environment(monkeypatch)
    with TLSScriptedServer(reply(200, {"ok": True}), certificate, key) as server:
        http = HttpClient((2.0, 5.0))
        with pytest.raises(TransportError, match="SSLError"):
            http.send(HttpRequest("GET", f"{server.url}/resource"))

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate))
        monkeypatch.setenv("CURL_CA_BUNDLE", str(certificate))
        with pytest.raises(TransportError, match="SSLError"):
            http.send(HttpRequest("GET", f"{server.url}/resource"))
        http.close()

        with requests.Session() as trusting:
            control = trusting.get(f"{server.url}/resource", timeout=TIMEOUT)
        pinned_session = requests.Session()
        pinned_session.verify = str(certificate)
        pinned = HttpClient((2.0, 5.0), session=pinned_session)
        answer = pinned.send(HttpRequest("GET", f"{server.url}/resource"))
        pinned.close()

    assert control.status_code == 200
    assert answer.status == 200


def test_http_client_rejects_session_without_verification() -> None:
    unverified = requests.Session()
    unverified.verify = False

    with pytest.raises(ConfigError, match="verify=False"):
        HttpClient(session=unverified)

    default = HttpClient()
    assert default.session.verify is True
    assert default.session.trust_env is False
    default.close()
    unverified.close()


# --- the web application --------------------------------------------------------


@dataclasses.dataclass
class WebSetup:
    """The client web application with the demo servers behind it."""

    url: str
    client: OAuthClient
    config: ClientConfig
    database: DemoDatabase
    resource_url: str

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        return session

    def start_grant(self, session: requests.Session) -> str:
        """Start a grant in `session`, approve it and return the callback URL."""
        response = session.get(
            f"{self.url}/authorize", allow_redirects=False, timeout=TIMEOUT
        )
        assert response.status_code == 302
        return approve(session, response.headers["Location"])

    def get_token(self, session: requests.Session) -> str:
        """Run a whole grant in `session`; return the flow id."""
        page = session.get(self.start_grant(session), timeout=TIMEOUT)
        assert page.status_code == 200, page.text[:300]
        return self.flow_id(session)

    def flow_id(self, session: requests.Session) -> str:
        page = session.get(f"{self.url}/", timeout=TIMEOUT).text
        match = re.search(r'id="flow-id"><code>([^<]+)</code>', page)
        assert match is not None
        return match.group(1)

    def csrf_token(self, session: requests.Session) -> str:
        page = session.get(f"{self.url}/", timeout=TIMEOUT).text
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match is not None
        return match.group(1)


@contextlib.contextmanager
def running_web(**config_changes: Any) -> Iterator[WebSetup]:
    auth_app, resource_app, client_app = DeferredApp(), DeferredApp(), DeferredApp()
    auth = BackgroundServer(auth_app, name="test authorization server")
    resource = BackgroundServer(resource_app, name="test resource")
    web = BackgroundServer(client_app, name="test client")
    redirect_uri = f"{web.url}/callback"
    settings = DemoSettings(issuer=auth.url, redirect_uris=(redirect_uri,))
    database = DemoDatabase()
    auth_app.target = create_authorization_server(settings, database)
    resource_app.target = create_resource_server(settings, database)
    values: dict[str, Any] = {
        "client_id": settings.client_id,
        "client_secret": settings.client_secret,
        "redirect_uri": redirect_uri,
        "issuer": auth.url,
        "resource_url": f"{resource.url}/resource",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "store": "memory:",
    }
    values.update(config_changes)
    config = ClientConfig(**values)
    client = OAuthClient(config, store=MemoryStore())
    client_app.target = create_app(client)
    with auth, resource, web:
        yield WebSetup(web.url, client, config, database, resource.url)
    client.close()


def test_callback_from_other_browser_session_is_rejected() -> None:
    """RFC 6749 §10.12 and RFC 9700 §4.7.1: state is bound to the session.

    A callback that another browser started (login CSRF, or a stolen
    authorization response) is rejected, and the grant of the browser that
    started it still completes.
    """
    with running_web() as web, web.session() as owner, web.session() as other:
        callback = web.start_grant(owner)
        owner_flow = web.flow_id(owner)

        without_grant = other.get(callback, allow_redirects=False, timeout=TIMEOUT)
        web.start_grant(other)
        other_flow = web.flow_id(other)
        with_grant = other.get(callback, allow_redirects=False, timeout=TIMEOUT)
        exchanges_before = web.database.token_requests.total()
        owner_state = web.client.status(owner_flow).state
        other_state = web.client.status(other_flow).state

        finished = owner.get(callback, allow_redirects=False, timeout=TIMEOUT)

        assert without_grant.status_code == 400
        assert "no authorization request in progress" in without_grant.text
        assert with_grant.status_code == 400
        assert "does not match" in with_grant.text
        assert exchanges_before == 0
        assert owner_state == "awaiting_callback"
        assert other_state == "awaiting_callback"
        assert finished.status_code == 302
        assert web.client.status(owner_flow).state == "token_held"


@pytest.mark.parametrize("path", ["/fetch_resource", "/refresh", "/logout"])
def test_every_post_action_requires_csrf_token(path: str) -> None:
    with running_web() as web, web.session() as user, web.session() as attacker:
        flow_id = web.get_token(user)
        before = web.client.engine.load(flow_id)
        foreign_token = web.csrf_token(attacker)

        missing = user.post(f"{web.url}{path}", data={}, timeout=TIMEOUT)
        foreign = user.post(
            f"{web.url}{path}", data={"csrf_token": foreign_token}, timeout=TIMEOUT
        )
        after = web.client.engine.load(flow_id)
        resource_calls = web.database.resource_requests.total()
        own = user.post(
            f"{web.url}{path}",
            data={"csrf_token": web.csrf_token(user)},
            allow_redirects=False,
            timeout=TIMEOUT,
        )

        assert missing.status_code == 400
        assert "CSRF token" in missing.text
        assert foreign.status_code == 400
        assert after.version == before.version
        assert resource_calls == 0
        assert own.status_code in (200, 302)


def test_web_logout_revokes_tokens() -> None:
    """RFC 7009 §2.1: the Log out action revokes both tokens at the server."""
    with running_web() as web, web.session() as user:
        flow_id = web.get_token(user)
        held = dict(web.client.engine.load(flow_id).data)
        page = user.post(
            f"{web.url}/logout",
            data={"csrf_token": web.csrf_token(user)},
            timeout=TIMEOUT,
        )
        last = web.client.events(flow_id)[-1]

        assert page.status_code == 200
        assert "Logged out" in page.text
        assert web.client.status(flow_id).state == "unauthorized"
        assert (last.trigger, last.details.get("revoked")) == ("logout", True)
        assert web.database.get_access_token(held["access_token"]) is None
        assert web.database.get_refresh_token(held["refresh_token"]) is None


def test_security_headers_on_every_response() -> None:
    """RFC 9700 §4.2.4 (Referer), §4.3.1 (history) and §4.16 (framing)."""
    with running_web() as web, web.session() as user:
        responses = {"page": user.get(f"{web.url}/", timeout=TIMEOUT)}
        responses["not found"] = user.get(f"{web.url}/missing", timeout=TIMEOUT)
        responses["diagram"] = user.get(f"{web.url}/diagram.svg", timeout=TIMEOUT)
        responses["forged callback"] = user.get(
            f"{web.url}/callback?code=c&state=s", timeout=TIMEOUT
        )
        callback = web.start_grant(user)
        responses["callback"] = user.get(
            callback, allow_redirects=False, timeout=TIMEOUT
        )
        responses["authorize"] = user.get(
            f"{web.url}/authorize", allow_redirects=False, timeout=TIMEOUT
        )
        responses["no csrf token"] = user.post(f"{web.url}/logout", timeout=TIMEOUT)

    for name, response in responses.items():
        policy = response.headers.get("Content-Security-Policy", "")
        assert response.headers.get("Referrer-Policy") == "no-referrer", name
        assert response.headers.get("X-Frame-Options") == "DENY", name
        assert "frame-ancestors 'none'" in policy, name
        assert response.headers.get("X-Content-Type-Options") == "nosniff", name
        if response.headers.get("Content-Type", "").startswith("text/html"):
            assert response.headers.get("Cache-Control") == "no-store", name


def test_forwarded_headers_are_not_trusted() -> None:
    """RFC 9700 §4.13: only a proxy may set X-Forwarded-*, and none is trusted.

    A browser that sends them itself changes neither the scheme the
    application uses nor the URLs it builds: waitress drops them by default
    (clear_untrusted_proxy_headers), and the application alone, run without
    waitress, reads none of them either.
    """
    spoofed = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example.test",
        "X-Forwarded-For": "203.0.113.7",
        "Forwarded": "for=203.0.113.7;host=evil.example.test;proto=https",
    }
    with running_web() as web, web.session() as user:
        page = user.get(f"{web.url}/", headers=spoofed, timeout=TIMEOUT)
        authorize = user.get(
            f"{web.url}/authorize",
            headers=spoofed,
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        bare_app = create_app(web.client).test_client()
        bare_page = bare_app.get("/", headers=spoofed)
        bare_authorize = bare_app.get("/authorize", headers=spoofed)

    for response_cookie in (
        page.headers["Set-Cookie"],
        bare_page.headers["Set-Cookie"],
    ):
        assert "Secure" not in response_cookie
    for location in (authorize.headers["Location"], bare_authorize.headers["Location"]):
        assert "evil.example.test" not in location
        assert query_value(location, "redirect_uri") == web.config.redirect_uri


class ReplyQueue:
    """A script that sends the queued responses in order, one per request."""

    def __init__(self, *responses: bytes) -> None:
        self.responses = list(responses)
        self._lock = threading.Lock()

    def __call__(self, exchange: Exchange) -> None:
        with self._lock:
            payload = self.responses.pop(0)
        exchange.send(payload)


def escaped_start(payload: str) -> str:
    """Return the first 20 characters of `payload` as HTML escaping shows them."""
    return payload.replace("<", "&lt;").replace(">", "&gt;")[:20]


def test_resource_strings_are_escaped_on_pages() -> None:
    """Resource data and the scope of a 403 challenge are shown, never run."""
    json_payload = "<script>alert('json')</script>"
    text_payload = "<img src=x onerror=alert('text')>"
    scope_payload = "<b onmouseover=alert('scope')>admin</b>"
    challenge = f'Bearer error="insufficient_scope", scope="{scope_payload}"'
    resource = ReplyQueue(
        response_bytes(200, json.dumps({"name": json_payload}).encode()),
        response_bytes(200, text_payload.encode(), content_type="text/html"),
        response_bytes(403, b"", headers={"WWW-Authenticate": challenge}),
    )
    with (
        ScriptedServer(resource) as resource_server,
        running_web(resource_url=f"{resource_server.url}/resource") as web,
        web.session() as user,
    ):
        web.get_token(user)
        pages = [
            user.post(
                f"{web.url}/fetch_resource",
                data={"csrf_token": web.csrf_token(user)},
                timeout=TIMEOUT,
            )
            for _ in range(3)
        ]

    assert [page.status_code for page in pages] == [200, 200, 403]
    for page, payload in zip(
        pages, [json_payload, text_payload, scope_payload], strict=True
    ):
        assert payload not in page.text
        assert escaped_start(payload) in page.text


def test_token_error_description_is_escaped_on_page() -> None:
    """RFC 6749 §5.2: error_description is the server's text, shown escaped."""
    payload = "<script>alert('description')</script>"
    token_error = {"error": "invalid_grant", "error_description": payload}
    with (
        ScriptedServer(reply(400, token_error)) as token_server,
        running_web(token_endpoint=f"{token_server.url}/token") as web,
        web.session() as user,
    ):
        page = user.get(web.start_grant(user), timeout=TIMEOUT)

    assert page.status_code == 502
    assert payload not in page.text
    assert escaped_start(payload) in page.text


def test_no_route_redirects_to_url_from_request() -> None:
    """RFC 9700 §4.11.1: the client is no open redirector, and §4.12: no 307.

    Every route is called with the usual names of redirect parameters set to
    an outside URL. The only redirect target that may come from outside the
    application is the authorization URL that the client itself built.
    """
    hostile = {
        name: EVIL_URL
        for name in ("next", "return_to", "redirect", "redirect_uri", "url")
    }
    spoofed = {"Host": "evil.example.test", "X-Forwarded-Host": "evil.example.test"}
    with running_web() as web, web.session() as user:
        seen: list[requests.Response] = []

        def call(method: str, path: str, **options: Any) -> requests.Response:
            response = user.request(
                method,
                f"{web.url}{path}",
                allow_redirects=False,
                timeout=TIMEOUT,
                **options,
            )
            seen.append(response)
            return response

        call("GET", "/", params=hostile)
        call("GET", "/diagram.svg", params=hostile)
        authorize = call("GET", "/authorize", params=hostile)
        callback = approve(user, authorize.headers["Location"])
        call(
            "GET", "/callback?" + urllib.parse.urlsplit(callback).query, params=hostile
        )
        for path in ("/fetch_resource", "/refresh", "/logout"):
            form = {**hostile, "csrf_token": web.csrf_token(user)}
            call("POST", path, data=form)
            call("POST", path, data=form, headers=spoofed)
        call("GET", "/callback", params={**hostile, "error": "access_denied"})
        authorization_endpoint = web.client.config.authorization_endpoint

    locations = [r.headers["Location"] for r in seen if "Location" in r.headers]
    authorization_urls = [
        url for url in locations if url.startswith(f"{authorization_endpoint}?")
    ]
    assert len(authorization_urls) == 1
    assert query_value(authorization_urls[0], "redirect_uri") == web.config.redirect_uri
    assert locations.count("/") == len(locations) - 1
    for response in seen:
        assert response.status_code not in (307, 308)
        assert EVIL_URL not in response.headers.get("Location", "")
        assert "evil.example.test" not in response.headers.get("Location", "")


# --- secrets in reprs ---------------------------------------------------------


def test_run_repr_hides_flow_secrets() -> None:
    state = "state-value-5566778899"
    verifier = "verifier-value-1122334455"
    code = "code-value-9988776655"
    access = "access-token-value-44332211"
    refresh = "refresh-token-value-66554433"
    run = Run(
        flow_id="flow-1",
        state="code_received",
        data={
            "state": state,
            "code_verifier": verifier,
            "code": code,
            "access_token": access,
            "refresh_token": refresh,
        },
        inputs={
            "callback": parse_callback(f"code={code}&state={state}"),
            "token": TokenSet(access, "Bearer", None, refresh, None),
        },
        now=START,
        result=f"https://as.example.test/authorize?state={state}",
        details={"refresh_token": refresh},
    )

    shown = repr(run) + str(run)

    assert "flow-1" in shown
    for secret in (state, verifier, code, access, refresh):
        assert secret not in shown


def test_fire_result_repr_hides_result() -> None:
    store = MemoryStore()
    client = scripted_client("http://127.0.0.1:9/token", store=store)
    flow_id = client.create_flow()
    started = client.engine.fire(flow_id, "start")
    state = query_value(str(started.result), "state")
    held = FlowRecord(
        id="expired-flow",
        definition="authorization_code",
        state="expired",
        version=0,
        created_at=START,
        updated_at=START,
        data={"access_token": "at-0123456789abcdef", "refresh_token": "rt-0123456789"},
    )
    store.create(
        held,
        AuditEvent(
            flow_id="expired-flow",
            sequence=0,
            time="2023-11-14T22:13:20.000000Z",
            trigger="create",
            source=None,
            destination="expired",
            outcome="ok",
        ),
    )
    lease = client.engine.fire("expired-flow", "refresh")

    assert state not in repr(started)
    assert str(lease.result) not in repr(lease)


# --- real-world token responses -------------------------------------------------


def test_form_encoded_token_response_is_accepted() -> None:
    """RFC 6749 §5.1 specifies JSON, but some servers reply in form encoding.

    The client sends `Accept: application/json` and parses the body by its
    media type.
    """
    body = "access_token=at-form-0123456789&token_type=bearer&expires_in=3600"
    body += "&refresh_token=rt-form-0123456789&scope=foo+bar"
    script = reply(200, body, content_type="application/x-www-form-urlencoded")
    clock = FakeClock()
    with ScriptedServer(script) as server:
        client = scripted_client(f"{server.url}/token", clock=clock)
        flow_id = grant_token(client)
        accept = server.requests[0].headers["accept"]

    data = client.engine.load(flow_id).data
    assert accept == "application/json"
    assert data["access_token"] == "at-form-0123456789"
    assert data["refresh_token"] == "rt-form-0123456789"
    assert data["expires_at"] == clock.now() + 3600
    assert data["scope"] == "foo bar"


def test_text_plain_error_page_is_protocol_error() -> None:
    """RFC 6749 §5.2: an error is a JSON object with `error`; this is not one.

    A 500 whose body is JSON labelled text/plain becomes a ProtocolError with
    the status and an excerpt, and the code is kept for a retry.
    """
    script = reply(
        500, '{"message": "database unavailable"}', content_type="text/plain"
    )
    with ScriptedServer(script) as server:
        client = scripted_client(f"{server.url}/token")
        flow_id = client.create_flow()
        url = client.start(flow_id)
        with pytest.raises(ProtocolError) as caught:
            client.handle_callback(flow_id, callback_for(url))

    assert caught.value.status == 500
    assert "HTTP 500" in str(caught.value)
    assert "database unavailable" in caught.value.excerpt
    assert client.status(flow_id).state == "code_received"


def test_lowercase_bearer_token_type_sends_bearer_header() -> None:
    """RFC 6749 §7.1 compares token_type without case, and RFC 6750 §2.1
    defines the header scheme as `Bearer`, whatever case the server wrote."""
    tokens = token_body(access_token="at-lower-0123456789", token_type="bearer")
    with (
        ScriptedServer(reply(200, tokens)) as token_server,
        ScriptedServer(reply(200, {"ok": True})) as resource,
    ):
        client = scripted_client(
            f"{token_server.url}/token", resource_url=f"{resource.url}/resource"
        )
        flow_id = grant_token(client)
        result = client.fetch_resource(flow_id)
        header = resource.requests[0].headers["authorization"]

    assert result.json() == {"ok": True}
    assert header == "Bearer at-lower-0123456789"


@pytest.mark.parametrize("token_type", ["DPoP", "N_A", "mac"])
def test_unusable_token_type_is_rejected(token_type: str) -> None:
    """RFC 6749 §7.1: a client must not use a token whose type it does not
    understand; DPoP (RFC 9449) tokens need proofs this client cannot make."""
    with ScriptedServer(reply(200, token_body(token_type=token_type))) as server:
        client = scripted_client(f"{server.url}/token")
        flow_id = client.create_flow()
        url = client.start(flow_id)
        with pytest.raises(ProtocolError, match="token_type"):
            client.handle_callback(flow_id, callback_for(url))

    record = client.engine.load(flow_id)
    assert record.state == "code_received"
    assert "access_token" not in record.data


def test_refresh_without_refresh_token_keeps_old_one() -> None:
    """RFC 6749 §6: the server may omit a new refresh token; the old one stays."""
    refreshed = reply(200, token_body("at-second-0123456789", refresh_token=None))
    script = token_endpoint(token_body(), refreshed)
    with ScriptedServer(script) as server:
        client = scripted_client(f"{server.url}/token")
        flow_id = grant_token(client)
        client.refresh(flow_id)
        sent = form_of(server.requests[1].body)

    data = client.engine.load(flow_id).data
    last = client.events(flow_id)[-1]
    assert sent["refresh_token"] == ["rt-first-0123456789"]
    assert data["access_token"] == "at-second-0123456789"
    assert data["refresh_token"] == "rt-first-0123456789"
    assert last.details["refresh_token_kept"] is True


def test_client_secret_is_form_encoded_before_base64() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then base64."""
    secret = "cs+/:= with spaces"
    with ScriptedServer(reply(200, token_body())) as server:
        client = scripted_client(
            f"{server.url}/token", client_id="client:1", client_secret=secret
        )
        grant_token(client)
        header = server.requests[0].headers["authorization"]

    scheme, _, encoded = header.partition(" ")
    decoded = base64.b64decode(encoded).decode("ascii")
    user, _, password = decoded.partition(":")
    assert scheme == "Basic"
    assert decoded == "client%3A1:cs%2B%2F%3A%3D+with+spaces"
    assert urllib.parse.unquote_plus(user) == "client:1"
    assert urllib.parse.unquote_plus(password) == secret


def test_callback_with_unknown_error_code_ends_grant() -> None:
    """RFC 6749 §4.1.2.1: servers may send error codes beyond the listed ones;
    the code is kept, so the page shows the server's error code."""
    with ScriptedServer(reply(200, token_body())) as server:
        client = scripted_client(f"{server.url}/token")
        flow_id = client.create_flow()
        url = client.start(flow_id)
        callback = callback_for(url, error="consent_required_by_vendor")
        with pytest.raises(OAuthError) as caught:
            client.handle_callback(flow_id, callback)
        exchanges = len(server.requests)

    record = client.engine.load(flow_id)
    assert caught.value.error == "consent_required_by_vendor"
    assert record.state == "unauthorized"
    assert record.data["last_error"] == "consent_required_by_vendor"
    assert exchanges == 0


# --- real-world resource responses ------------------------------------------------


def test_resource_401_without_challenge_refreshes_once() -> None:
    """RFC 6750 §3: a 401 may come without WWW-Authenticate. The client
    refreshes once and retries once; a second 401 is an error, not a loop."""
    refreshed = reply(200, token_body("at-second-0123456789", "rt-second-0123456789"))
    with (
        ScriptedServer(token_endpoint(token_body(), refreshed)) as token_server,
        ScriptedServer(reply(401, b"", content_type=None)) as resource,
    ):
        client = scripted_client(
            f"{token_server.url}/token", resource_url=f"{resource.url}/resource"
        )
        flow_id = grant_token(client)
        with pytest.raises(ResourceError) as caught:
            client.fetch_resource(flow_id)
        sent = [r.headers["authorization"] for r in resource.requests]
        token_requests = len(token_server.requests)

    assert caught.value.status == 401
    assert sent == ["Bearer at-first-0123456789", "Bearer at-second-0123456789"]
    assert token_requests == 2


@pytest.mark.parametrize("leeway", [0.0, 30.0])
def test_expiry_leeway_only_shortens_token_use(leeway: float) -> None:
    """RFC 6749 §5.1: expires_in counts from the response; the leeway for
    clock skew makes the client drop a token early, never use it late."""
    refreshed = reply(200, token_body("at-second-0123456789"))
    clock = FakeClock()
    with ScriptedServer(token_endpoint(token_body(), refreshed)) as server:
        client = scripted_client(
            f"{server.url}/token", clock=clock, expiry_leeway=leeway
        )
        flow_id = grant_token(client)
        expires_at = float(client.engine.load(flow_id).data["expires_at"])

        clock.current = expires_at - leeway - 1
        before = client.access_token(flow_id)
        clock.current = expires_at - leeway
        at_leeway = client.access_token(flow_id)

    assert before == "at-first-0123456789"
    assert at_leeway == "at-second-0123456789"
    with pytest.raises(ConfigError, match="expiry_leeway"):
        ClientConfig(store="memory:", expiry_leeway=-1)


@pytest.mark.parametrize(
    "hostile", [never_answer, stall_mid_body], ids=["never_answers", "stalls"]
)
def test_refresh_timeout_keeps_held_tokens(hostile: Script) -> None:
    """RFC 6749 §6: a refresh that times out keeps the refresh token, so the
    refresh can be retried."""
    store = MemoryStore()
    refreshed = reply(200, token_body("at-second-0123456789"))
    with ScriptedServer(token_endpoint(token_body(), refreshed)) as good_server:
        good = scripted_client(f"{good_server.url}/token", store=store)
        flow_id = grant_token(good)
        with ScriptedServer(hostile) as bad_server:
            bad = scripted_client(
                f"{bad_server.url}/token",
                store=store,
                connect_timeout=0.5,
                read_timeout=0.5,
            )
            with pytest.raises(TransportError, match="timed out|did not finish"):
                bad.refresh(flow_id)
        kept = store.load(flow_id)
        failed = bad.events(flow_id)[-1]
        retried = good.refresh(flow_id)

    assert kept.state == "expired"
    assert kept.data["access_token"] == "at-first-0123456789"
    assert kept.data["refresh_token"] == "rt-first-0123456789"
    assert (failed.trigger, failed.outcome) == ("refresh_failed", "transport_error")
    assert retried.state == "token_held"
    assert retried.data["access_token"] == "at-second-0123456789"
