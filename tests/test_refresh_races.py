"""Callers with stale reads must not undo another caller's refresh."""

from __future__ import annotations

import json
import urllib.parse

from flowengine.adapters.memory import MemoryStore
from flowengine.client import OAuthClient
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpResponse
from flowengine.testing import FakeClock, ScriptedHttp

CONFIG = ClientConfig(store="memory:")
TOKEN_URL = CONFIG.endpoint("token_endpoint")


def token_reply(access_token: str) -> HttpResponse:
    body = {
        "access_token": access_token,
        "token_type": "Bearer",
        "refresh_token": f"refresh-{access_token}",
        "expires_in": 3600,
    }
    return HttpResponse(
        200, {"Content-Type": "application/json"}, json.dumps(body).encode()
    )


def test_stale_expire_keeps_newer_token() -> None:
    clock = FakeClock()
    http = ScriptedHttp(clock=clock)
    store = MemoryStore()
    first = OAuthClient(CONFIG, store=store, http=http, clock=clock, sleep=clock.sleep)
    second = OAuthClient(CONFIG, store=store, http=http, clock=clock, sleep=clock.sleep)
    flow_id = first.create_flow()
    url = first.start(flow_id)
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0]
    http.queue(TOKEN_URL, token_reply("token-one-0123456789"))
    first.handle_callback(flow_id, f"{CONFIG.redirect_uri}?code=c0de&state={state}")

    stale = first.engine.load(flow_id)
    http.queue(TOKEN_URL, token_reply("token-two-0123456789"))
    second.refresh(flow_id)

    first._expire(flow_id, stale, "stale read of the first token")

    assert first.status(flow_id).state == "token_held"
    assert first.access_token(flow_id) == "token-two-0123456789"
    assert http.queued(TOKEN_URL) == 0
