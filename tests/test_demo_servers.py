"""Integration tests of the demo authorization server and protected resource.

Both servers run under waitress on loopback ports. The tests drive the
authorization code grant by hand with requests and compute PKCE themselves,
so the server is checked against the RFCs rather than against the client.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
import requests

from flowengine.adapters.wsgi import BackgroundServer
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)

REDIRECT_URI = "http://localhost:9000/callback"
CHALLENGE_WITHOUT_ERROR = 'Bearer realm="flowengine-demo"'


class ManualClock:
    """A time source that moves only when a test advances it."""

    def __init__(self) -> None:
        self.current = 1_700_000_000.0

    def __call__(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


def make_pkce() -> tuple[str, str]:
    """Return a PKCE verifier and its S256 challenge (RFC 7636 §4.1, §4.2)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


def basic_header(client_id: str, secret: str, *, form_encode: bool = True) -> str:
    """Build a Basic Authorization header, encoded as RFC 6749 §2.3.1 requires.

    With form_encode=False the values go into base64 raw, as many clients
    wrongly do.
    """
    if form_encode:
        client_id = urllib.parse.quote_plus(client_id)
        secret = urllib.parse.quote_plus(secret)
    credentials = f"{client_id}:{secret}".encode()
    return "Basic " + base64.b64encode(credentials).decode("ascii")


class _FormParser(HTMLParser):
    """Collect the input and button fields of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.buttons: list[str] = []
        self.form_actions: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        name = attributes.get("name")
        if tag == "form":
            self.form_actions.append(attributes.get("action") or "")
        elif tag == "input" and name is not None:
            self.inputs[name] = attributes
        elif tag == "button" and name is not None:
            self.buttons.append(name)


def parse_form(page: str) -> _FormParser:
    parser = _FormParser()
    parser.feed(page)
    return parser


def redirect_params(response: requests.Response) -> dict[str, str]:
    """Return the query parameters of a redirect to the client's callback."""
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    query = urllib.parse.urlsplit(location).query
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


@dataclass
class Demo:
    """Running demo servers, their shared database and an HTTP session."""

    settings: DemoSettings
    db: DemoDatabase
    clock: ManualClock
    auth_url: str
    resource_url: str
    http: requests.Session
    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def authorize(self, **overrides: str | None) -> requests.Response:
        """Send GET /authorize. A None override leaves the parameter out."""
        _, challenge = make_pkce()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.settings.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": "foo bar",
            "state": self.state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        params.update(overrides)
        sent = {name: value for name, value in params.items() if value is not None}
        return self.http.get(
            self.auth_url + "/authorize", params=sent, allow_redirects=False
        )

    def reqid_of(self, response: requests.Response) -> str:
        assert response.status_code == 200, response.text
        reqid = parse_form(response.text).inputs["reqid"]["value"]
        assert reqid
        return reqid

    def approve(
        self,
        reqid: str,
        scopes: tuple[str, ...] = ("foo", "bar"),
        action: str = "approve",
    ) -> requests.Response:
        form = {"reqid": reqid, action: action}
        form.update({f"scope_{scope}": "on" for scope in scopes})
        return self.http.post(
            self.auth_url + "/approve", data=form, allow_redirects=False
        )

    def obtain_code(
        self, scope: str = "foo bar", **overrides: str | None
    ) -> tuple[str, str]:
        """Run the front channel and return the code and the PKCE verifier."""
        verifier, challenge = make_pkce()
        page = self.authorize(scope=scope, code_challenge=challenge, **overrides)
        requested = tuple(scope.split()) or self.settings.scopes
        params = redirect_params(self.approve(self.reqid_of(page), requested))
        return params["code"], verifier

    def token_request(
        self, form: dict[str, str], headers: dict[str, str] | None = None
    ) -> requests.Response:
        """POST to /token with client_secret_basic unless headers are given."""
        if headers is None:
            headers = {"Authorization": self.basic_auth()}
        return self.http.post(self.auth_url + "/token", data=form, headers=headers)

    def basic_auth(self) -> str:
        return basic_header(self.settings.client_id, self.settings.client_secret)

    def exchange_code(self, code: str, verifier: str) -> requests.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        return self.token_request(form)

    def obtain_tokens(self, scope: str = "foo bar") -> dict[str, Any]:
        response = self.exchange_code(*self.obtain_code(scope))
        assert response.status_code == 200, response.text
        tokens: dict[str, Any] = response.json()
        return tokens

    def refresh(
        self, refresh_token: str, scope: str | None = None
    ) -> requests.Response:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope is not None:
            form["scope"] = scope
        return self.token_request(form)

    def revoke(self, token: str, hint: str | None = None) -> requests.Response:
        form = {"token": token}
        if hint is not None:
            form["token_type_hint"] = hint
        return self.http.post(
            self.auth_url + "/revoke",
            data=form,
            headers={"Authorization": self.basic_auth()},
        )

    def call_resource(
        self, token: str | None, scheme: str = "Bearer"
    ) -> requests.Response:
        headers = {} if token is None else {"Authorization": f"{scheme} {token}"}
        return self.http.post(self.resource_url + "/resource", headers=headers)


@pytest.fixture
def start_demo() -> Iterator[Callable[..., Demo]]:
    """Return a function that starts both servers with DemoSettings overrides."""
    servers: list[BackgroundServer] = []
    sessions: list[requests.Session] = []

    def start(**overrides: Any) -> Demo:
        settings = DemoSettings(**overrides)
        clock = ManualClock()
        db = DemoDatabase(now=clock)
        auth = BackgroundServer(
            create_authorization_server(settings, db), name="demo-authserver"
        )
        resource = BackgroundServer(
            create_resource_server(settings, db), name="demo-resource"
        )
        servers.extend([auth.start(), resource.start()])
        http = requests.Session()
        http.trust_env = False  # never route loopback requests through a proxy
        sessions.append(http)
        return Demo(settings, db, clock, auth.url, resource.url, http)

    yield start
    for http in sessions:
        http.close()
    for server in servers:
        server.stop()


@pytest.fixture
def demo(start_demo: Callable[..., Demo]) -> Demo:
    return start_demo()


def assert_token_error(response: requests.Response, error: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert response.json()["error_description"]
    assert response.headers["Cache-Control"] == "no-store"


def assert_invalid_token(response: requests.Response) -> None:
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="flowengine-demo", ')
    assert 'error="invalid_token"' in challenge
    assert "error_description=" in challenge


# --- the whole grant ----------------------------------------------------------


def test_full_grant_reaches_resource(demo: Demo) -> None:
    verifier, challenge = make_pkce()

    page = demo.authorize(code_challenge=challenge)
    form = parse_form(page.text)
    assert page.status_code == 200
    assert "oauth-client-1" in page.text
    assert form.form_actions == ["/approve"]
    assert "checked" in form.inputs["scope_foo"]
    assert "checked" in form.inputs["scope_bar"]
    assert sorted(form.buttons) == ["approve", "deny"]

    callback = redirect_params(demo.approve(demo.reqid_of(page)))
    assert callback["state"] == demo.state
    assert callback["iss"] == "http://localhost:9001"
    assert callback["code"]

    response = demo.exchange_code(callback["code"], verifier)
    tokens = response.json()
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 3600
    assert tokens["scope"] == "foo bar"
    assert tokens["refresh_token"]

    resource = demo.call_resource(tokens["access_token"])
    assert resource.status_code == 200
    assert resource.json()["name"] == "Protected Resource"
    assert resource.json()["scope"] == "foo bar"
    assert demo.db.token_requests[("authorization_code", "ok")] == 1
    assert demo.db.resource_requests["ok"] == 1


def test_approved_subset_of_scopes_is_granted(demo: Demo) -> None:
    verifier, challenge = make_pkce()
    page = demo.authorize(code_challenge=challenge)

    callback = redirect_params(demo.approve(demo.reqid_of(page), scopes=("bar",)))
    tokens = demo.exchange_code(callback["code"], verifier).json()

    assert tokens["scope"] == "bar"
    assert demo.call_resource(tokens["access_token"]).json()["scope"] == "bar"


def test_empty_scope_requests_all_scopes(demo: Demo) -> None:
    page = demo.authorize(scope=None)
    form = parse_form(page.text)

    assert "scope_foo" in form.inputs
    assert "scope_bar" in form.inputs


def test_redirect_uri_query_is_kept(start_demo: Callable[..., Demo]) -> None:
    registered = REDIRECT_URI + "?tenant=a%20b"
    demo = start_demo(redirect_uris=(registered,))
    page = demo.authorize(redirect_uri=registered)

    response = demo.approve(demo.reqid_of(page))

    assert response.headers["Location"].startswith(registered + "&code=")


def test_missing_redirect_uri_uses_registered_one(demo: Demo) -> None:
    code, verifier = demo.obtain_code(redirect_uri=None)
    form = {"grant_type": "authorization_code", "code": code}
    form["code_verifier"] = verifier

    response = demo.token_request(form)

    assert response.status_code == 200, response.text


# --- front channel errors -------------------------------------------------------


def test_deny_redirects_access_denied_with_state(demo: Demo) -> None:
    page = demo.authorize()

    callback = redirect_params(demo.approve(demo.reqid_of(page), action="deny"))

    assert callback["error"] == "access_denied"
    assert callback["state"] == demo.state
    assert callback["iss"] == "http://localhost:9001"
    assert "code" not in callback


def test_approve_without_scopes_is_access_denied(demo: Demo) -> None:
    page = demo.authorize()

    callback = redirect_params(demo.approve(demo.reqid_of(page), scopes=()))

    assert callback["error"] == "access_denied"
    assert callback["error_description"] == "no scope approved"


def test_approve_with_unrequested_scope_is_rejected(demo: Demo) -> None:
    page = demo.authorize(scope="foo")

    response = demo.approve(demo.reqid_of(page), scopes=("foo", "bar"))

    assert redirect_params(response)["error"] == "invalid_scope"


def test_error_redirect_omits_state_when_configured(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo(state_on_error=False)

    denied = redirect_params(
        demo.approve(demo.reqid_of(demo.authorize()), action="deny")
    )
    approved = redirect_params(demo.approve(demo.reqid_of(demo.authorize())))

    assert denied["error"] == "access_denied"
    assert "state" not in denied
    assert approved["state"] == demo.state


def test_iss_omitted_when_configured(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(send_iss=False)

    callback = redirect_params(demo.approve(demo.reqid_of(demo.authorize())))

    assert callback["code"]
    assert "iss" not in callback


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"scope": "foo baz"}, "invalid_scope"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "too-short"}, "invalid_request"),
    ],
)
def test_authorize_error_redirects(
    demo: Demo, overrides: dict[str, str | None], error: str
) -> None:
    callback = redirect_params(demo.authorize(**overrides))

    assert callback["error"] == error
    assert callback["error_description"]
    assert callback["state"] == demo.state
    assert callback["iss"] == "http://localhost:9001"


def test_repeated_authorize_parameter_is_rejected(demo: Demo) -> None:
    url = (
        demo.auth_url
        + "/authorize?"
        + urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": "oauth-client-1",
                "redirect_uri": REDIRECT_URI,
                "code_challenge": make_pkce()[1],
                "code_challenge_method": "S256",
            }
        )
    )

    response = demo.http.get(url + "&scope=foo&scope=bar", allow_redirects=False)

    assert redirect_params(response)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://localhost:9000/callback/",
        "http://localhost:9000/callback?extra=1",
        "http://LOCALHOST:9000/callback",
        "https://attacker.invalid/callback",
    ],
)
def test_redirect_uri_mismatch_shows_error_page(demo: Demo, redirect_uri: str) -> None:
    response = demo.authorize(redirect_uri=redirect_uri)

    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "not registered" in response.text


def test_unknown_client_shows_error_page(demo: Demo) -> None:
    response = demo.authorize(client_id="someone-else")

    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "Unknown client" in response.text


def test_ambiguous_missing_redirect_uri_is_rejected(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo(redirect_uris=(REDIRECT_URI, "http://localhost:9000/other"))

    response = demo.authorize(redirect_uri=None)

    assert response.status_code == 400
    assert "Location" not in response.headers


def test_error_page_escapes_redirect_uri(demo: Demo) -> None:
    response = demo.authorize(redirect_uri="http://x.invalid/<script>alert(1)</script>")

    assert response.status_code == 400
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_approval_reqid_is_single_use(demo: Demo) -> None:
    reqid = demo.reqid_of(demo.authorize())
    assert demo.approve(reqid).status_code == 302

    second = demo.approve(reqid)

    assert second.status_code == 400
    assert "Location" not in second.headers


def test_unknown_reqid_is_rejected(demo: Demo) -> None:
    response = demo.approve("not-a-request-id")

    assert response.status_code == 400
    assert "Location" not in response.headers


def test_approval_page_forbids_framing(demo: Demo) -> None:
    response = demo.authorize()

    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


# --- token endpoint: code grant ---------------------------------------------------


def test_wrong_pkce_verifier_is_invalid_grant(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    other_verifier, _ = make_pkce()

    rejected = demo.exchange_code(code, other_verifier)
    accepted = demo.exchange_code(code, verifier)

    assert_token_error(rejected, "invalid_grant")
    assert accepted.status_code == 200, accepted.text


def test_malformed_pkce_verifier_is_invalid_request(demo: Demo) -> None:
    code, _ = demo.obtain_code()

    response = demo.exchange_code(code, "short")

    assert_token_error(response, "invalid_request")


def test_missing_pkce_verifier_is_invalid_request(demo: Demo) -> None:
    code, _ = demo.obtain_code()
    form = {"grant_type": "authorization_code", "code": code}
    form["redirect_uri"] = REDIRECT_URI

    response = demo.token_request(form)

    assert_token_error(response, "invalid_request")


def test_code_reuse_revokes_issued_tokens(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    first = demo.exchange_code(code, verifier).json()
    assert demo.call_resource(first["access_token"]).status_code == 200

    second = demo.exchange_code(code, verifier)

    assert_token_error(second, "invalid_grant")
    assert_invalid_token(demo.call_resource(first["access_token"]))
    assert_token_error(demo.refresh(first["refresh_token"]), "invalid_grant")
    assert demo.db.token_requests[("authorization_code", "invalid_grant")] == 1


def test_code_expires_after_lifetime(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    demo.clock.advance(demo.settings.code_lifetime)

    response = demo.exchange_code(code, verifier)

    assert_token_error(response, "invalid_grant")
    assert "expired" in response.json()["error_description"]


def test_token_redirect_uri_mismatch_is_invalid_grant(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    form = {"grant_type": "authorization_code", "code": code}
    form.update(redirect_uri=REDIRECT_URI + "/", code_verifier=verifier)

    response = demo.token_request(form)

    assert_token_error(response, "invalid_grant")


def test_token_without_redirect_uri_is_invalid_request(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    form = {"grant_type": "authorization_code", "code": code}
    form["code_verifier"] = verifier

    response = demo.token_request(form)

    assert_token_error(response, "invalid_request")


def test_unknown_code_is_invalid_grant(demo: Demo) -> None:
    response = demo.exchange_code(secrets.token_urlsafe(32), make_pkce()[0])

    assert_token_error(response, "invalid_grant")


def test_verifier_without_challenge_is_rejected(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo(require_pkce=False)
    page = demo.authorize(code_challenge=None, code_challenge_method=None)
    code = redirect_params(demo.approve(demo.reqid_of(page)))["code"]
    form = {"grant_type": "authorization_code", "code": code}
    form["redirect_uri"] = REDIRECT_URI

    downgraded = demo.token_request(form | {"code_verifier": make_pkce()[0]})
    plain = demo.token_request(form)

    assert_token_error(downgraded, "invalid_grant")
    assert plain.status_code == 200, plain.text


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "password", "username": "u"}, "unsupported_grant_type"),
        ({"code": "x"}, "invalid_request"),
        ({"grant_type": "authorization_code"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
    ],
)
def test_token_request_errors(demo: Demo, form: dict[str, str], error: str) -> None:
    assert_token_error(demo.token_request(form), error)


def test_repeated_token_parameter_is_invalid_request(demo: Demo) -> None:
    code, verifier = demo.obtain_code()
    body = urllib.parse.urlencode(
        [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code", code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", verifier),
        ]
    )
    headers = {
        "Authorization": demo.basic_auth(),
        "Content-Type": "application/x-www-form-urlencoded",
    }

    response = demo.http.post(demo.auth_url + "/token", data=body, headers=headers)

    assert_token_error(response, "invalid_request")


def test_json_token_request_is_invalid_request(demo: Demo) -> None:
    response = demo.http.post(
        demo.auth_url + "/token",
        json={"grant_type": "authorization_code"},
        headers={"Authorization": demo.basic_auth()},
    )

    assert_token_error(response, "invalid_request")


# --- client authentication ------------------------------------------------------

ODD_SECRET = "s3cr+t/ with:colon=and spaces"


def code_form(code: str, verifier: str) -> dict[str, str]:
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }


def test_basic_auth_form_encoded_secret_works(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo(client_secret=ODD_SECRET)
    header = basic_header("oauth-client-1", ODD_SECRET, form_encode=True)

    response = demo.token_request(
        code_form(*demo.obtain_code()), headers={"Authorization": header}
    )

    assert response.status_code == 200, response.text


def test_basic_auth_raw_secret_fails(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(client_secret=ODD_SECRET)
    header = basic_header("oauth-client-1", ODD_SECRET, form_encode=False)

    response = demo.token_request(
        code_form(*demo.obtain_code()), headers={"Authorization": header}
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="flowengine-demo"'


def test_client_secret_post_works(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(client_secret=ODD_SECRET)
    form = code_form(*demo.obtain_code())
    form.update(client_id="oauth-client-1", client_secret=ODD_SECRET)

    response = demo.token_request(form, headers={})

    assert response.status_code == 200, response.text


def test_wrong_secret_is_invalid_client(demo: Demo) -> None:
    header = basic_header("oauth-client-1", "wrong-secret")

    response = demo.token_request(
        code_form(*demo.obtain_code()), headers={"Authorization": header}
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="flowengine-demo"'
    assert response.headers["Cache-Control"] == "no-store"


def test_missing_client_authentication_is_invalid_client(demo: Demo) -> None:
    response = demo.token_request(code_form(*demo.obtain_code()), headers={})

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_malformed_basic_header_is_invalid_client(demo: Demo) -> None:
    response = demo.token_request(
        code_form(*demo.obtain_code()), headers={"Authorization": "Basic !!!"}
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_basic_and_post_together_is_invalid_request(demo: Demo) -> None:
    form = code_form(*demo.obtain_code())
    form.update(client_id="oauth-client-1", client_secret="oauth-client-secret-1")

    response = demo.token_request(form)

    assert_token_error(response, "invalid_request")


# --- refresh tokens -----------------------------------------------------------


def test_refresh_rotates_tokens(demo: Demo) -> None:
    first = demo.obtain_tokens()

    response = demo.refresh(first["refresh_token"])
    second = response.json()

    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["scope"] == "foo bar"
    assert demo.call_resource(second["access_token"]).status_code == 200
    assert demo.db.token_requests[("refresh_token", "ok")] == 1


def test_refresh_token_reuse_revokes_grant(demo: Demo) -> None:
    first = demo.obtain_tokens()
    second = demo.refresh(first["refresh_token"]).json()

    reused = demo.refresh(first["refresh_token"])

    assert_token_error(reused, "invalid_grant")
    assert_invalid_token(demo.call_resource(first["access_token"]))
    assert_invalid_token(demo.call_resource(second["access_token"]))
    assert_token_error(demo.refresh(second["refresh_token"]), "invalid_grant")


def test_refresh_reuse_leaves_other_grants(demo: Demo) -> None:
    victim = demo.obtain_tokens()
    bystander = demo.obtain_tokens()
    demo.refresh(victim["refresh_token"])

    demo.refresh(victim["refresh_token"])

    assert demo.call_resource(bystander["access_token"]).status_code == 200


def test_refresh_narrows_scope(demo: Demo) -> None:
    first = demo.obtain_tokens()

    narrowed = demo.refresh(first["refresh_token"], scope="foo").json()
    widened_again = demo.refresh(narrowed["refresh_token"]).json()

    assert narrowed["scope"] == "foo"
    assert demo.call_resource(narrowed["access_token"]).json()["scope"] == "foo"
    assert widened_again["scope"] == "foo bar"


def test_refresh_beyond_grant_scope_is_invalid_scope(demo: Demo) -> None:
    tokens = demo.obtain_tokens(scope="foo")

    response = demo.refresh(tokens["refresh_token"], scope="foo bar")

    assert_token_error(response, "invalid_scope")


def test_refresh_token_expires_after_lifetime(
    start_demo: Callable[..., Demo],
) -> None:
    demo = start_demo(refresh_token_lifetime=30)
    tokens = demo.obtain_tokens()
    demo.clock.advance(30)

    response = demo.refresh(tokens["refresh_token"])

    assert_token_error(response, "invalid_grant")


def test_unknown_refresh_token_is_invalid_grant(demo: Demo) -> None:
    assert_token_error(demo.refresh(secrets.token_urlsafe(32)), "invalid_grant")


# --- optional response fields -------------------------------------------------


def test_no_refresh_tokens_when_disabled(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(issue_refresh_tokens=False)

    tokens = demo.obtain_tokens()
    refresh = demo.refresh("anything")
    metadata = demo.http.get(
        demo.auth_url + "/.well-known/oauth-authorization-server"
    ).json()

    assert "refresh_token" not in tokens
    assert tokens["access_token"]
    assert_token_error(refresh, "unsupported_grant_type")
    assert metadata["grant_types_supported"] == ["authorization_code"]


def test_no_expires_in_when_disabled(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(send_expires_in=False, access_token_lifetime=5)

    tokens = demo.obtain_tokens()
    demo.clock.advance(5)

    assert "expires_in" not in tokens
    assert_invalid_token(demo.call_resource(tokens["access_token"]))


# --- protected resource -----------------------------------------------------


def test_expired_token_is_invalid_token(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(access_token_lifetime=5)
    tokens = demo.obtain_tokens()
    demo.clock.advance(4)
    assert demo.call_resource(tokens["access_token"]).status_code == 200

    demo.clock.advance(1)
    response = demo.call_resource(tokens["access_token"])

    assert tokens["expires_in"] == 5
    assert_invalid_token(response)
    assert "expired" in response.headers["WWW-Authenticate"]
    assert demo.db.resource_requests["invalid_token"] == 1


def test_expire_access_tokens_takes_effect_now(demo: Demo) -> None:
    tokens = demo.obtain_tokens()

    demo.db.expire_access_tokens()

    assert_invalid_token(demo.call_resource(tokens["access_token"]))
    assert demo.refresh(tokens["refresh_token"]).status_code == 200


def test_missing_bearer_gets_plain_challenge(demo: Demo) -> None:
    response = demo.call_resource(None)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE_WITHOUT_ERROR


def test_other_scheme_gets_plain_challenge(demo: Demo) -> None:
    response = demo.call_resource(demo.obtain_tokens()["access_token"], "Basic")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE_WITHOUT_ERROR


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_bearer_scheme_is_case_insensitive(demo: Demo, scheme: str) -> None:
    response = demo.call_resource(demo.obtain_tokens()["access_token"], scheme)

    assert response.status_code == 200, response.text


def test_unknown_token_is_invalid_token(demo: Demo) -> None:
    assert_invalid_token(demo.call_resource(secrets.token_urlsafe(32)))


def test_malformed_bearer_is_invalid_request(demo: Demo) -> None:
    response = demo.call_resource("not a token")

    assert response.status_code == 400
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]


def test_token_in_query_is_not_accepted(demo: Demo) -> None:
    token = demo.obtain_tokens()["access_token"]

    in_query = demo.http.post(
        demo.resource_url + "/resource", params={"access_token": token}
    )
    in_body = demo.http.post(
        demo.resource_url + "/resource", data={"access_token": token}
    )

    assert in_query.status_code == 400
    assert in_query.json()["error"] == "invalid_request"
    assert in_body.status_code == 400


def test_resource_get_is_method_not_allowed(demo: Demo) -> None:
    token = demo.obtain_tokens()["access_token"]

    response = demo.http.get(
        demo.resource_url + "/resource",
        headers={"Authorization": f"Bearer {token}"},
    )

    assert response.status_code == 405


# --- revocation -----------------------------------------------------------------


def test_revoke_access_token(demo: Demo) -> None:
    tokens = demo.obtain_tokens()

    response = demo.revoke(tokens["access_token"], hint="access_token")

    assert response.status_code == 200
    assert_invalid_token(demo.call_resource(tokens["access_token"]))
    assert demo.refresh(tokens["refresh_token"]).status_code == 200


def test_revoke_refresh_token_revokes_grant(demo: Demo) -> None:
    tokens = demo.obtain_tokens()

    response = demo.revoke(tokens["refresh_token"])

    assert response.status_code == 200
    assert_invalid_token(demo.call_resource(tokens["access_token"]))
    assert_token_error(demo.refresh(tokens["refresh_token"]), "invalid_grant")


def test_revoke_unknown_token_is_ok(demo: Demo) -> None:
    assert demo.revoke(secrets.token_urlsafe(32)).status_code == 200


def test_revoke_requires_client_authentication(demo: Demo) -> None:
    tokens = demo.obtain_tokens()

    response = demo.http.post(
        demo.auth_url + "/revoke", data={"token": tokens["access_token"]}
    )

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert demo.call_resource(tokens["access_token"]).status_code == 200


def test_revoke_without_token_is_invalid_request(demo: Demo) -> None:
    response = demo.http.post(
        demo.auth_url + "/revoke",
        data={"token_type_hint": "access_token"},
        headers={"Authorization": demo.basic_auth()},
    )

    assert_token_error(response, "invalid_request")


# --- metadata, pages, settings, logs ------------------------------------------


def test_metadata_document(demo: Demo) -> None:
    response = demo.http.get(demo.auth_url + "/.well-known/oauth-authorization-server")
    metadata = response.json()

    assert response.status_code == 200
    assert metadata["issuer"] == "http://localhost:9001"
    assert metadata["authorization_endpoint"] == "http://localhost:9001/authorize"
    assert metadata["token_endpoint"] == "http://localhost:9001/token"
    assert metadata["revocation_endpoint"] == "http://localhost:9001/revoke"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["grant_types_supported"] == [
        "authorization_code",
        "refresh_token",
    ]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert metadata["scopes_supported"] == ["foo", "bar"]
    assert metadata["authorization_response_iss_parameter_supported"] is True


def test_metadata_follows_settings(start_demo: Callable[..., Demo]) -> None:
    demo = start_demo(issuer="https://as.example.test/", send_iss=False)

    metadata = demo.http.get(
        demo.auth_url + "/.well-known/oauth-authorization-server"
    ).json()

    assert metadata["token_endpoint"] == "https://as.example.test/token"
    assert metadata["authorization_response_iss_parameter_supported"] is False


def test_index_pages(demo: Demo) -> None:
    auth_index = demo.http.get(demo.auth_url + "/")
    resource_index = demo.http.get(demo.resource_url + "/")

    assert auth_index.status_code == 200
    assert "oauth-client-1" in auth_index.text
    assert "oauth-client-secret-1" not in auth_index.text
    assert resource_index.status_code == 200
    assert "/resource" in resource_index.text


def test_settings_repr_hides_secret() -> None:
    settings = DemoSettings(client_secret="do-not-print-me")

    assert "do-not-print-me" not in repr(settings)
    assert "oauth-client-1" in repr(settings)


@pytest.mark.parametrize(
    "overrides",
    [
        {"redirect_uris": ("http://localhost:9000/callback#frag",)},
        {"redirect_uris": ("/callback",)},
        {"redirect_uris": ()},
        {"issuer": "localhost:9001"},
        {"access_token_lifetime": 0},
        {"refresh_token_lifetime": -1},
        {"scopes": ("has space",)},
        {"client_secret": ""},
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="DemoSettings"):
        DemoSettings(**overrides)


def test_logs_contain_no_secrets(demo: Demo, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flowengine.demo")
    code, verifier = demo.obtain_code()
    tokens = demo.exchange_code(code, verifier).json()
    demo.call_resource(tokens["access_token"])
    refreshed = demo.refresh(tokens["refresh_token"]).json()
    demo.refresh(tokens["refresh_token"])
    demo.exchange_code(code, verifier)
    demo.revoke(refreshed["refresh_token"])
    demo.approve(demo.reqid_of(demo.authorize()), action="deny")

    secret_values = [
        code,
        verifier,
        demo.state,
        demo.settings.client_secret,
        tokens["access_token"],
        tokens["refresh_token"],
        refreshed["access_token"],
        refreshed["refresh_token"],
    ]
    demo_lines = [r for r in caplog.records if r.name.startswith("flowengine.demo")]
    assert len(demo_lines) >= 8
    for value in secret_values:
        assert value
        assert value not in caplog.text
