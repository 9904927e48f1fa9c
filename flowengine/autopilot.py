"""Drive one whole grant against the demo servers, as a user would.

Used by `flowengine demo --auto`: the approval form is fetched and submitted
over HTTP, and the redirect back is handed to the client unchanged.
"""

from __future__ import annotations

import html.parser
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests

from flowengine.client import OAuthClient
from flowengine.errors import ProtocolError

logger = logging.getLogger(__name__)


class _FormParser(html.parser.HTMLParser):
    """Collect the action and the hidden and checkbox fields of the first form."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and not self._done:
            self._in_form = True
            self.action = values.get("action", "")
        elif tag == "input" and self._in_form:
            kind = values.get("type", "text").lower()
            name = values.get("name")
            if name and kind == "hidden":
                self.fields[name] = values.get("value", "")
            elif name and kind == "checkbox" and "checked" in values:
                self.fields[name] = values.get("value", "on")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


def approve(
    session: requests.Session, authorization_url: str, *, timeout: float = 10.0
) -> str:
    """Open the approval page, approve every scope and return the redirect URL.

    Raises:
        ProtocolError: the page has no form, or the server did not redirect.
    """
    page = session.get(authorization_url, timeout=timeout, allow_redirects=False)
    if page.status_code in (301, 302, 303, 307, 308):
        return str(page.headers["Location"])
    parser = _FormParser()
    parser.feed(page.text)
    if parser.action is None:
        raise ProtocolError(
            "approval page has no form",
            status=page.status_code,
            excerpt=page.text[:200],
        )
    form_url = urllib.parse.urljoin(page.url, parser.action)
    answer = session.post(
        form_url,
        data={**parser.fields, "approve": "Approve"},
        timeout=timeout,
        allow_redirects=False,
    )
    location = answer.headers.get("Location")
    if answer.status_code not in (302, 303) or not location:
        raise ProtocolError(
            "approval did not redirect back to the client", status=answer.status_code
        )
    return location


def run_grant(
    client: OAuthClient,
    expire_on_server: Callable[[], Any],
    say: Callable[[str], None],
) -> str:
    """Run a grant, fetch the resource, expire the token, refresh, fetch again.

    Args:
        client: the client, configured for the demo servers.
        expire_on_server: makes the authorization server treat every access
            token as expired, so the resource returns 401.
        say: prints one line of progress.

    Returns:
        The id of the flow that was driven.
    """
    flow_id = client.create_flow()
    say(f"flow {flow_id} created")
    url = client.start(flow_id)
    say("opening the authorization page and approving, as the user would")
    say(f"waiting for the callback to {client.config.redirect_uri}…")
    with requests.Session() as browser:
        browser.trust_env = False
        callback_url = approve(browser, url)

    say("callback received; exchanging the code for a token")
    client.handle_callback(flow_id, callback_url)
    say(f"calling the protected resource at {client.config.resource_url}…")
    data = client.fetch_resource(flow_id).json()
    say(f"resource data: {data}")

    say("expiring the access token on the authorization server")
    expire_on_server()
    say("calling the resource again; its 401 makes the client refresh…")
    data = client.fetch_resource(flow_id).json()
    say(f"resource data after the refresh: {data}")
    return flow_id
