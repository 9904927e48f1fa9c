"""The client web application against the demo servers, over loopback HTTP.

Each test starts the demo authorization server, the demo resource and the
client application under waitress on free ports. It then drives the client
like a browser does: a `requests.Session` keeps the cookies, follows
redirects and submits the forms it finds in the HTML.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import secrets
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import requests

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.engine import Store
from flowengine.oauth.config import ClientConfig
from flowengine.web import create_app
from flowengine.web.app import MAX_PENDING_FLOWS

TIMEOUT = 10


# --- servers -----------------------------------------------------------------


class LateApp:
    """A WSGI app that forwards to `target`, set once the server's port is known.

    The demo settings need the client's redirect URI and the issuer URL, and
    both contain ports that exist only after the servers have bound them.
    """

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


@dataclasses.dataclass
class Demo:
    """A running client application with its demo servers."""

    client_url: str
    client: OAuthClient
    config: ClientConfig
    database: DemoDatabase
    auth_server_stopper: contextlib.ExitStack

    def stop_authorization_server(self) -> None:
        # Closing the stack stops the server once; teardown closes it again,
        # which then does nothing.
        self.auth_server_stopper.close()

    def flow_data(self, flow_id: str) -> dict[str, Any]:
        return dict(self.client.store.load(flow_id).data)


@contextlib.contextmanager
def running_demo(store: Store, **settings_changes: Any) -> Iterator[Demo]:
    auth_app, resource_app, client_app = LateApp(), LateApp(), LateApp()
    auth = BackgroundServer(auth_app, name="test authorization server")
    resource = BackgroundServer(resource_app, name="test resource")
    web = BackgroundServer(client_app, name="test client")

    redirect_uri = f"{web.url}/callback"
    client_secret = secrets.token_urlsafe(24)
    settings = DemoSettings(
        issuer=auth.url,
        client_secret=client_secret,
        redirect_uris=(redirect_uri,),
        **settings_changes,
    )
    database = DemoDatabase()
    auth_app.target = create_authorization_server(settings, database)
    resource_app.target = create_resource_server(settings, database)
    config = ClientConfig(
        client_id=settings.client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        authorization_endpoint=f"{auth.url}/authorize",
        token_endpoint=f"{auth.url}/token",
        resource_url=f"{resource.url}/resource",
        issuer=auth.url,
        connect_timeout=2.0,
        read_timeout=5.0,
    )
    client = OAuthClient(config, store=store)
    client_app.target = create_app(client)

    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        for server in (resource, web):
            server.start()
            stack.callback(server.stop)
        auth.start()
        auth_stopper = stack.enter_context(contextlib.ExitStack())
        auth_stopper.callback(auth.stop)
        yield Demo(web.url, client, config, database, auth_stopper)


@pytest.fixture
def make_demo() -> Iterator[Callable[..., Demo]]:
    """Start a demo setup with a memory store and the given DemoSettings changes."""
    with contextlib.ExitStack() as stack:

        def make(store: Store | None = None, **settings_changes: Any) -> Demo:
            chosen = store if store is not None else MemoryStore()
            return stack.enter_context(running_demo(chosen, **settings_changes))

        yield make


@pytest.fixture
def demo(make_demo: Callable[..., Demo]) -> Demo:
    return make_demo()


# --- HTML -------------------------------------------------------------------


@dataclasses.dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    buttons: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    disabled: bool = False


class PageParser(HTMLParser):
    """Collect the forms of a page and the text of every element with an id."""

    _VOID = frozenset({"input", "br", "meta", "link", "img", "hr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.texts: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(Form(values.get("action", ""), values.get("method", "")))
        elif tag == "input" and self.forms:
            self._add_input(values)
        elif tag == "button" and self.forms:
            self.forms[-1].buttons.append(
                (values.get("name", ""), values.get("value", ""))
            )
            self.forms[-1].disabled = "disabled" in values
        if tag not in self._VOID:
            element_id = values.get("id")
            self._open.append((tag, element_id))
            if element_id:
                self.texts[element_id] = ""

    def _add_input(self, values: dict[str, str]) -> None:
        kind = values.get("type", "text")
        if kind == "checkbox" and "checked" not in values:
            return
        default = "on" if kind == "checkbox" else ""
        self.forms[-1].fields.append(
            (values.get("name", ""), values.get("value", default))
        )

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.texts[element_id] += data


@dataclasses.dataclass
class Page:
    url: str
    status: int
    html: str
    forms: list[Form]
    texts: dict[str, str]

    def text(self, element_id: str) -> str:
        return " ".join(self.texts.get(element_id, "").split())

    def form(self, action: str) -> Form:
        for form in self.forms:
            if form.action.endswith(action):
                return form
        raise AssertionError(f"no form posting to {action} on {self.url}")


def parse_page(response: requests.Response) -> Page:
    parser = PageParser()
    parser.feed(response.text)
    parser.close()
    return Page(
        response.url, response.status_code, response.text, parser.forms, parser.texts
    )


# --- browser ------------------------------------------------------------------


class Browser:
    """A cookie-keeping HTTP client that records what the client app showed it.

    `client_pages` contains the body of every client application response,
    redirects included. `codes` contains every authorization code seen in a
    redirect.
    """

    def __init__(self, demo: Demo) -> None:
        self.demo = demo
        self.session = requests.Session()
        self.session.trust_env = False
        self.client_pages: list[str] = []
        self.codes: list[str] = []

    def get(self, path_or_url: str, **options: Any) -> Page:
        response = self.session.get(self._url(path_or_url), timeout=TIMEOUT, **options)
        return self._record(response)

    def post(self, path_or_url: str, data: Any, **options: Any) -> Page:
        response = self.session.post(
            self._url(path_or_url), data=data, timeout=TIMEOUT, **options
        )
        return self._record(response)

    def submit(self, path: str) -> Page:
        """Submit the client page's form that posts to `path`."""
        form = self.get("/").form(path)
        return self.post(path, form.fields)

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self.demo.client_url + path_or_url
        return path_or_url

    def _record(self, response: requests.Response) -> Page:
        for hop in [*response.history, response]:
            if hop.url.startswith(self.demo.client_url):
                self.client_pages.append(hop.text)
            location = hop.headers.get("Location", "")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
            self.codes.extend(query.get("code", []))
        return parse_page(response)


def open_approval_page(browser: Browser) -> Page:
    page = browser.get("/authorize")
    assert page.url.startswith(browser.demo.config.authorization_endpoint)
    return page


def decide(browser: Browser, approval: Page, decision: str, **options: Any) -> Page:
    form = approval.form("/approve")
    target = urllib.parse.urljoin(approval.url, form.action)
    return browser.post(target, [*form.fields, (decision, decision)], **options)


def get_token(browser: Browser) -> Page:
    """Run the grant from the client page through approval back to the page."""
    return decide(browser, open_approval_page(browser), "approve")


def authorization_state(browser: Browser) -> str:
    """Start a grant without following the redirect; return its state value."""
    response = browser.session.get(
        browser.demo.client_url + "/authorize", allow_redirects=False, timeout=TIMEOUT
    )
    assert response.status_code == 302
    query = urllib.parse.parse_qs(
        urllib.parse.urlsplit(response.headers["Location"]).query
    )
    return query["state"][0]


def assert_readable_error(page: Page, status: int) -> None:
    assert page.status == status
    assert "Traceback" not in page.html
    assert 'File "' not in page.html
    assert page.text("error-message")


# --- the grant ------------------------------------------------------------------


def test_whole_grant_with_resource_and_refresh(
    make_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    demo = make_demo(SQLiteStore(tmp_path / "flows.sqlite3"))
    browser = Browser(demo)

    home = browser.get("/")
    assert home.status == 200
    assert home.text("no-flow").startswith("No flow yet")

    page = get_token(browser)
    assert page.status == 200
    assert page.url == demo.client_url + "/"
    assert "Access token received." in page.html
    flow_id = page.text("flow-id")
    status = demo.client.status(flow_id)
    assert status.state == "token_held"
    assert page.text("flow-state") == "token_held"
    assert page.text("access-token") == status.access_token
    assert page.text("scope") == "foo bar"
    assert page.text("refresh-token") == "held"
    assert page.text("expiry").endswith("s left)")
    assert page.text("last-error") == "none"
    first_token = demo.flow_data(flow_id)["access_token"]

    resource = browser.submit("/fetch_resource")
    assert resource.status == 200
    data = json.loads(resource.texts["resource-data"])
    assert data["name"] == "Protected Resource"
    assert data["scope"] == "foo bar"

    refreshed = browser.submit("/refresh")
    assert refreshed.status == 200
    assert "Access token refreshed." in refreshed.html
    second_token = demo.flow_data(flow_id)["access_token"]
    assert second_token != first_token
    assert refreshed.text("access-token") == demo.client.status(flow_id).access_token

    again = browser.submit("/fetch_resource")
    assert again.status == 200
    assert json.loads(again.texts["resource-data"])["name"] == "Protected Resource"
    assert demo.database.resource_requests["ok"] == 2

    triggers = [event.trigger for event in demo.client.events(flow_id)]
    assert triggers == [
        "create",
        "start",
        "receive_code",
        "receive_token",
        "expire",
        "refresh",
        "receive_token",
    ]
    audit_rows = again.html.count('<tr class="ok">')
    assert audit_rows == len(triggers)
    assert "refreshing → token_held" in again.html


def test_authorize_redirects_only_to_authorization_endpoint(demo: Demo) -> None:
    browser = Browser(demo)
    response = browser.session.get(
        demo.client_url + "/authorize", allow_redirects=False, timeout=TIMEOUT
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(demo.config.authorization_endpoint + "?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["redirect_uri"] == [demo.config.redirect_uri]
    assert query["code_challenge_method"] == ["S256"]


def test_callback_success_redirects_to_root(demo: Demo) -> None:
    browser = Browser(demo)
    approval = open_approval_page(browser)
    form = approval.form("/approve")
    to_client = browser.session.post(
        urllib.parse.urljoin(approval.url, form.action),
        data=[*form.fields, ("approve", "approve")],
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert to_client.headers["Location"].startswith(demo.config.redirect_uri + "?")
    back = browser.session.get(
        to_client.headers["Location"], allow_redirects=False, timeout=TIMEOUT
    )
    assert back.status_code == 302
    assert back.headers["Location"] == "/"


def test_get_token_while_token_held_starts_new_flow(demo: Demo) -> None:
    browser = Browser(demo)
    first = get_token(browser)
    old_flow = first.text("flow-id")

    second = get_token(browser)
    new_flow = second.text("flow-id")
    assert new_flow != old_flow
    assert second.text("flow-state") == "token_held"
    assert demo.client.status(old_flow).state == "token_held"


def test_unknown_lifetime_is_shown(make_demo: Callable[..., Demo]) -> None:
    demo = make_demo(send_expires_in=False)
    page = get_token(Browser(demo))
    assert page.text("flow-state") == "token_held"
    assert page.text("expiry") == "unknown lifetime"


def test_logout_keeps_flow_and_drops_token(demo: Demo) -> None:
    browser = Browser(demo)
    flow_id = get_token(browser).text("flow-id")

    page = browser.submit("/logout")
    assert page.status == 200
    assert "Logged out" in page.html
    assert page.text("flow-id") == flow_id
    assert page.text("flow-state") == "unauthorized"
    assert page.text("access-token") == "none"
    assert "access_token" not in demo.flow_data(flow_id)


# --- sessions -------------------------------------------------------------------


def test_sessions_get_separate_flows_and_tokens(demo: Demo) -> None:
    browsers = [Browser(demo), Browser(demo)]
    pages: dict[int, Page] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(browsers))

    def run(index: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            get_token(browsers[index])
            pages[index] = browsers[index].submit("/fetch_resource")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert errors == []
    assert sorted(pages) == [0, 1]

    flow_ids = [pages[i].text("flow-id") for i in range(2)]
    tokens = [pages[i].text("access-token") for i in range(2)]
    assert flow_ids[0] != flow_ids[1]
    for index in range(2):
        other = 1 - index
        status = demo.client.status(flow_ids[index])
        assert status.state == "token_held"
        assert tokens[index] == status.access_token
        assert flow_ids[other] not in pages[index].html
        assert tokens[other] not in pages[index].html
    full_tokens = {demo.flow_data(flow_id)["access_token"] for flow_id in flow_ids}
    assert len(full_tokens) == 2


def test_session_cookie_is_httponly_and_samesite(demo: Demo) -> None:
    response = requests.get(demo.client_url + "/", timeout=TIMEOUT)
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("flowengine_client_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" not in cookie


def test_session_cookie_is_secure_over_https(demo: Demo) -> None:
    # No TLS server runs here, so the request goes through Flask's test
    # client, which runs the same application with an https URL scheme.
    app = create_app(demo.client)
    response = app.test_client().get("/", base_url="https://localhost")
    cookie = response.headers["Set-Cookie"]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie


def test_security_headers_on_page(demo: Demo) -> None:
    response = requests.get(demo.client_url + "/", timeout=TIMEOUT)
    assert "script-src" not in response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


# --- CSRF -------------------------------------------------------------------------


def test_post_without_csrf_token_is_rejected(demo: Demo) -> None:
    browser = Browser(demo)
    flow_id = get_token(browser).text("flow-id")

    missing = browser.post("/logout", data={})
    assert_readable_error(missing, 400)
    assert "CSRF token" in missing.text("error-message")

    wrong = browser.post("/logout", data={"csrf_token": "not-the-token"})
    assert_readable_error(wrong, 400)

    stranger = Browser(demo)
    foreign = stranger.get("/").form("/logout").fields
    crossed = browser.post("/logout", data=foreign)
    assert_readable_error(crossed, 400)

    assert demo.client.status(flow_id).state == "token_held"
    accepted = browser.submit("/logout")
    assert accepted.status == 200
    assert demo.client.status(flow_id).state == "unauthorized"


# --- errors -------------------------------------------------------------------------


def test_deny_shows_access_denied(demo: Demo) -> None:
    browser = Browser(demo)
    page = decide(browser, open_approval_page(browser), "deny")

    assert_readable_error(page, 403)
    assert page.url.startswith(demo.config.redirect_uri)
    assert page.text("oauth-error") == "access_denied"
    assert (
        page.text("oauth-error-description") == "the resource owner denied the request"
    )

    home = browser.get("/")
    assert home.text("flow-state") == "unauthorized"
    assert home.text("last-error") == "access_denied"


def test_callback_with_wrong_state_leaves_flow_unchanged(demo: Demo) -> None:
    browser = Browser(demo)
    approval = open_approval_page(browser)
    flow_id = browser.get("/").text("flow-id")
    before = demo.flow_data(flow_id)

    forged = browser.get("/callback?code=forged-code&state=forged-state")
    assert_readable_error(forged, 400)
    assert "does not match" in forged.html
    assert demo.client.status(flow_id).state == "awaiting_callback"
    assert demo.flow_data(flow_id) == before
    assert "state_mismatch" in browser.get("/").html

    # The real authorization response still completes the grant.
    page = decide(browser, approval, "approve")
    assert page.status == 200
    assert page.text("flow-state") == "token_held"


def test_error_callback_with_wrong_state_is_ignored(demo: Demo) -> None:
    browser = Browser(demo)
    state = authorization_state(browser)
    flow_id = browser.get("/").text("flow-id")
    query = urllib.parse.urlencode(
        {
            "error": "access_denied",
            "error_description": "forged description",
            "state": "x" + state,
        }
    )

    page = browser.get(f"/callback?{query}")
    assert_readable_error(page, 400)
    assert "does not match" in page.text("error-message")
    assert "forged description" not in page.html
    assert demo.client.status(flow_id).state == "awaiting_callback"


def test_callback_while_token_held_is_rejected(demo: Demo) -> None:
    browser = Browser(demo)
    flow_id = get_token(browser).text("flow-id")

    replayed = browser.get("/callback?code=late-code&state=late-state")
    assert_readable_error(replayed, 400)
    assert "token_held" in replayed.text("error-message")
    assert demo.client.status(flow_id).state == "token_held"

    late_error = browser.get("/callback?error=access_denied&state=late-state")
    assert_readable_error(late_error, 400)
    assert "expects no callback" in late_error.text("error-message")
    assert demo.client.status(flow_id).state == "token_held"


def test_callback_without_flow_is_rejected(demo: Demo) -> None:
    page = Browser(demo).get("/callback?code=some-code&state=some-state")
    assert_readable_error(page, 400)
    assert "no authorization request in progress" in page.text("error-message")


def test_malformed_callback_is_rejected(demo: Demo) -> None:
    browser = Browser(demo)
    authorization_state(browser)
    page = browser.get("/callback?nothing=here")
    assert_readable_error(page, 400)
    assert "neither 'code' nor 'error'" in page.text("error-message")


def test_error_description_is_escaped(demo: Demo) -> None:
    browser = Browser(demo)
    state = authorization_state(browser)
    script = "<script>alert(1)</script>"
    query = urllib.parse.urlencode(
        {
            "error": "access_denied",
            "error_description": script,
            "state": state,
            "iss": demo.config.issuer,
        }
    )
    page = browser.get(f"/callback?{query}")

    assert_readable_error(page, 403)
    assert page.text("oauth-error-description") == script
    assert script not in page.html
    assert "&lt;script&gt;" in page.html

    home = browser.get("/")
    assert home.text("last-error") == "access_denied"
    assert script not in home.html
    assert "&lt;script&gt;" in home.html


def test_authorization_server_down_during_exchange(demo: Demo) -> None:
    browser = Browser(demo)
    approval = open_approval_page(browser)
    flow_id = browser.get("/").text("flow-id")
    form = approval.form("/approve")
    to_client = browser.session.post(
        urllib.parse.urljoin(approval.url, form.action),
        data=[*form.fields, ("approve", "approve")],
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    callback_url = to_client.headers["Location"]
    demo.stop_authorization_server()

    page = browser.get(callback_url)
    assert_readable_error(page, 502)
    assert "could not be reached" in page.html
    assert demo.client.status(flow_id).state == "code_received"
    assert demo.client.status(flow_id).last_error == "transport_error"


def test_refresh_with_authorization_server_down(demo: Demo) -> None:
    browser = Browser(demo)
    flow_id = get_token(browser).text("flow-id")
    demo.stop_authorization_server()

    page = browser.submit("/refresh")
    assert_readable_error(page, 502)
    status = demo.client.status(flow_id)
    assert status.state == "expired"
    assert status.has_refresh_token

    home = browser.get("/")
    assert home.text("flow-state") == "expired"
    assert home.text("last-error") == "transport_error"


def test_fetch_without_token_is_conflict(demo: Demo) -> None:
    browser = Browser(demo)
    get_token(browser)
    browser.submit("/logout")

    form = browser.get("/").form("/fetch_resource")
    assert form.disabled
    page = browser.post("/fetch_resource", form.fields)
    assert_readable_error(page, 409)
    assert "start a new grant" in page.text("error-message")


def test_action_without_flow_is_rejected(demo: Demo) -> None:
    browser = Browser(demo)
    page = browser.submit("/refresh")
    assert_readable_error(page, 400)
    assert "no flow yet" in page.text("error-message")


def test_unknown_path_shows_404_page(demo: Demo) -> None:
    page = Browser(demo).get("/no-such-page")
    assert_readable_error(page, 404)


def test_broken_store_shows_plain_503(
    make_demo: Callable[..., Demo],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = tmp_path / "flows.sqlite3"
    demo = make_demo(SQLiteStore(database))
    browser = Browser(demo)
    get_token(browser)
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TABLE audit_events")

    with caplog.at_level(logging.ERROR, logger="flowengine.web"):
        page = browser.get("/")
    assert_readable_error(page, 503)
    assert "cannot read or save flows" in page.text("error-message")
    assert "audit_events" not in page.html
    assert str(tmp_path) not in page.html
    logged = [r for r in caplog.records if r.name.startswith("flowengine.web")]
    assert any("audit_events" in record.getMessage() for record in logged)


# --- secrets ------------------------------------------------------------------------


def test_secrets_never_in_pages_or_logs(
    demo: Demo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    browser = Browser(demo)
    browser_thread = threading.get_ident()
    issued: set[str] = set()

    flow_id = get_token(browser).text("flow-id")
    issued.update(_tokens(demo, flow_id))
    browser.submit("/fetch_resource")
    browser.submit("/refresh")
    issued.update(_tokens(demo, flow_id))
    browser.submit("/fetch_resource")
    browser.get("/callback?code=forged-code&state=forged-state")
    browser.submit("/logout")
    decide(browser, open_approval_page(browser), "deny")
    browser.get("/")

    secrets_seen = {*issued, *browser.codes, demo.config.client_secret}
    assert len(issued) >= 3  # two access tokens and at least one refresh token
    assert len(browser.codes) == 1
    # The test's own HTTP client logs the URLs it fetches (codes in callback
    # URLs); only what the servers log is checked.
    logged = [
        logging.Formatter("%(name)s %(message)s").format(record)
        for record in caplog.records
        if not (record.thread == browser_thread and record.name.startswith("urllib3"))
    ]
    assert logged
    for secret in secrets_seen:
        for html in browser.client_pages:
            assert secret not in html
        for line in logged:
            assert secret not in line


def _tokens(demo: Demo, flow_id: str) -> set[str]:
    data = demo.flow_data(flow_id)
    return {data["access_token"], data["refresh_token"]}


def test_two_tabs_each_finish_their_grant(demo: Demo) -> None:
    """Two tabs of one browser start grants; both callbacks succeed."""
    browser = Browser(demo)
    first_tab = open_approval_page(browser)
    first_flow = browser.get("/").text("flow-id")
    second_tab = open_approval_page(browser)
    second_flow = browser.get("/").text("flow-id")
    assert first_flow != second_flow

    page = decide(browser, first_tab, "approve")
    assert page.text("flow-state") == "token_held"
    assert page.text("flow-id") == first_flow

    page = decide(browser, second_tab, "approve")
    assert page.text("flow-state") == "token_held"
    assert page.text("flow-id") == second_flow
    assert demo.client.status(first_flow).state == "token_held"


def test_pending_grants_per_session_are_capped(demo: Demo) -> None:
    """Starting more grants than the cap drops the oldest from the session."""
    browser = Browser(demo)
    tabs = [open_approval_page(browser) for _ in range(MAX_PENDING_FLOWS + 1)]

    oldest = decide(browser, tabs[0], "approve")
    assert oldest.status == 400
    newest = decide(browser, tabs[-1], "approve")
    assert newest.text("flow-state") == "token_held"
