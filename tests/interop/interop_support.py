"""Helpers shared by the interoperability tests.

A user agent drives a server's login and consent pages over HTTP with
`requests` and `html.parser`, as a browser would, and returns the redirect
back to the client. Store helpers rewrite a flow's data through the store,
to set up what an attacker or a restored backup would leave behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import html.parser
import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests

from flowengine.client import OAuthClient
from flowengine.oauth.config import ClientConfig
from flowengine.records import AuditEvent, FlowRecord

REDIRECT_URI = "http://127.0.0.1:9000/callback"
CLIENT_ID = "oauth-client-1"
CLIENT_SECRET = "oauth-client-secret-1"
HTTP_TIMEOUT = 10.0
MAX_REDIRECTS = 10


@dataclasses.dataclass(frozen=True)
class RunningServer:
    """A started authorization server and the client settings that fit it."""

    name: str
    issuer: str
    config: ClientConfig


@dataclasses.dataclass
class Form:
    """An HTML form with its target and the fields that a browser would send."""

    action: str
    method: str
    fields: dict[str, str] = dataclasses.field(default_factory=dict)
    text_inputs: list[str] = dataclasses.field(default_factory=list)
    buttons: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class PageParser(html.parser.HTMLParser):
    """Collect the forms and links of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self.links: list[str] = []
        self._form: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = Form(values.get("action", ""), values.get("method", "get"))
            self.forms.append(self._form)
        elif tag == "a" and values.get("href"):
            self.links.append(values["href"])
        elif self._form is not None:
            self._add_field(self._form, tag, values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None

    @staticmethod
    def _add_field(form: Form, tag: str, values: dict[str, str]) -> None:
        name = values.get("name")
        if not name:
            return
        kind = values.get("type", "submit" if tag == "button" else "text").lower()
        if tag == "button" or kind == "submit":
            form.buttons.append((name, values.get("value", "")))
        elif kind == "hidden":
            form.fields[name] = values.get("value", "")
        elif tag == "input" and kind in ("text", "password", "email"):
            form.text_inputs.append(name)


@dataclasses.dataclass
class Page:
    """An HTML page that a server showed instead of redirecting."""

    url: str
    status: int
    forms: list[Form]
    links: list[str]
    text: str

    @classmethod
    def of(cls, response: requests.Response) -> Page:
        parser = PageParser()
        parser.feed(response.text)
        return cls(
            response.url,
            response.status_code,
            parser.forms,
            parser.links,
            response.text,
        )

    def form(self) -> Form:
        assert self.forms, f"page {self.url} (HTTP {self.status}) has no form"
        return self.forms[0]

    def link_ending_with(self, suffix: str) -> str:
        for link in self.links:
            if urllib.parse.urlsplit(link).path.endswith(suffix):
                return urllib.parse.urljoin(self.url, link)
        raise AssertionError(f"page {self.url} has no link ending with {suffix!r}")


class UserAgent:
    """A browser stand-in that stops at the redirect to the client.

    Every method returns either the callback URL, once a response redirects
    to `redirect_uri`, or the next HTML page to act on.
    """

    def __init__(self, redirect_uri: str = REDIRECT_URI) -> None:
        self.redirect_uri = redirect_uri
        self.session = requests.Session()
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def open(self, url: str) -> str | Page:
        return self._follow(self.session.get(url, **_NO_REDIRECTS))

    def submit(
        self,
        page: Page,
        text: Mapping[str, str] | None = None,
        button: tuple[str, str] | None = None,
    ) -> str | Page:
        """Submit the page's first form with its hidden fields and `text`.

        Every text input of the form must be filled from `text`.
        """
        form = page.form()
        data = dict(form.fields)
        for name in form.text_inputs:
            assert text and name in text, f"form on {page.url} needs {name!r}"
            data[name] = text[name]
        if button is not None:
            data[button[0]] = button[1]
        url = urllib.parse.urljoin(page.url, form.action)
        if form.method.lower() == "post":
            response = self.session.post(url, data=data, **_NO_REDIRECTS)
        else:
            response = self.session.get(url, params=data, **_NO_REDIRECTS)
        return self._follow(response)

    def _follow(self, response: requests.Response) -> str | Page:
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in (301, 302, 303, 307, 308):
                return Page.of(response)
            location = urllib.parse.urljoin(response.url, response.headers["Location"])
            if location.startswith(self.redirect_uri + "?"):
                return location
            response = self.session.get(location, **_NO_REDIRECTS)
        raise AssertionError(f"more than {MAX_REDIRECTS} redirects from the server")


_NO_REDIRECTS: dict[str, Any] = {"allow_redirects": False, "timeout": HTTP_TIMEOUT}


def expect_callback(result: str | Page) -> str:
    """Return the callback URL, or fail with the page the server showed."""
    if isinstance(result, Page):
        raise AssertionError(
            f"expected a redirect to the client, got HTTP {result.status} page "
            f"{result.url}: {' '.join(result.text.split())[:300]}"
        )
    return result


def expect_page(result: str | Page) -> Page:
    """Return the page, or fail if the server redirected to the client."""
    if not isinstance(result, Page):
        query = urllib.parse.urlsplit(result).query
        names = sorted(urllib.parse.parse_qs(query))
        raise AssertionError(f"expected a page, got a callback with {names}")
    return result


def callback_params(callback_url: str) -> dict[str, str]:
    """Return the query parameters of a callback URL."""
    query = urllib.parse.urlsplit(callback_url).query
    return dict(urllib.parse.parse_qsl(query, keep_blank_values=True))


def with_param(url: str, name: str, value: str | None) -> str:
    """Return `url` with query parameter `name` replaced, or removed if None."""
    parts = urllib.parse.urlsplit(url)
    pairs = [
        (key, item)
        for key, item in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if key != name
    ]
    if value is not None:
        pairs.append((name, value))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(pairs)))


# --- store helpers -------------------------------------------------------------


def rewrite_data(
    client: OAuthClient, flow_id: str, reason: str, **changes: Any
) -> FlowRecord:
    """Change a flow's data in the store, keeping its state.

    The change is committed like a transition, with an audit event whose
    trigger is `test_tamper`, so the store's version check still applies.
    """
    record = client.store.load(flow_id)
    data = {**record.data, **changes}
    return _commit(client, record, record.state, data, reason)


def replace_flow(
    client: OAuthClient, flow_id: str, source: FlowRecord, reason: str
) -> FlowRecord:
    """Give flow `flow_id` the state and data of `source`."""
    record = client.store.load(flow_id)
    return _commit(client, record, source.state, dict(source.data), reason)


def _commit(
    client: OAuthClient,
    record: FlowRecord,
    state: str,
    data: dict[str, Any],
    reason: str,
) -> FlowRecord:
    now = client.clock.now()
    updated = dataclasses.replace(
        record, state=state, version=record.version + 1, updated_at=now, data=data
    )
    event = AuditEvent(
        flow_id=record.id,
        sequence=updated.version,
        time=_utc(now),
        trigger="test_tamper",
        source=record.state,
        destination=state,
        outcome="ok",
        details={"reason": reason},
    )
    client.store.commit(updated, event)
    return updated


def _utc(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
