"""Secrets echoed by servers, and stores that are locked or damaged."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.client import OAuthClient
from flowengine.errors import OAuthError, ResourceError, StoreUnavailableError
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpResponse
from flowengine.testing import FakeClock, ScriptedHttp

SECRET = "oauth-client-secret-echoed"
CONFIG = ClientConfig(client_secret=SECRET, store="memory:")
TOKEN_URL = CONFIG.endpoint("token_endpoint")
RESOURCE_URL = CONFIG.resource_url
ACCESS_TOKEN = "access-token-0123456789abcdef"
REFRESH_TOKEN = "refresh-token-0123456789abcdef"
CODE = "authorization-code-0123456789"


def json_response(body: object, status: int = 200) -> HttpResponse:
    headers = {"Content-Type": "application/json"}
    return HttpResponse(status, headers, json.dumps(body).encode())


def started(
    store: object | None = None,
) -> tuple[OAuthClient, ScriptedHttp, str, str]:
    """Return a client, its HTTP script, a flow id and the flow's callback URL."""
    clock = FakeClock()
    http = ScriptedHttp(clock=clock)
    client = OAuthClient(
        CONFIG,
        store=store if store is not None else MemoryStore(),  # type: ignore[arg-type]
        http=http,
        clock=clock,
        sleep=clock.sleep,
    )
    flow_id = client.create_flow()
    url = client.start(flow_id)
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["state"][0]
    query = urllib.parse.urlencode({"code": CODE, "state": state})
    return client, http, flow_id, f"{CONFIG.redirect_uri}?{query}"


def holding_token() -> tuple[OAuthClient, ScriptedHttp, str]:
    client, http, flow_id, callback = started()
    http.queue(
        TOKEN_URL,
        json_response(
            {
                "access_token": ACCESS_TOKEN,
                "token_type": "Bearer",
                "refresh_token": REFRESH_TOKEN,
            }
        ),
    )
    client.handle_callback(flow_id, callback)
    return client, http, flow_id


def visible_text(client: OAuthClient, flow_id: str, error: BaseException) -> str:
    audit = json.dumps([event.to_dict() for event in client.events(flow_id)])
    return " ".join([str(error), repr(error), audit, str(vars(error))])


def test_echoed_client_secret_is_masked() -> None:
    client, http, flow_id, callback = started()
    description = f"client_secret {SECRET} does not match code {CODE}"
    reply = {"error": "invalid_client", "error_description": description}
    http.queue(TOKEN_URL, json_response(reply, 401))

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback)

    text = visible_text(client, flow_id, caught.value)
    assert SECRET not in text
    assert CODE not in text
    assert "does not match" in text


def test_echoed_refresh_token_is_masked() -> None:
    client, http, flow_id = holding_token()
    encoded = urllib.parse.quote_plus(REFRESH_TOKEN)
    reply = {"error": "invalid_grant", "error_description": f"bad token {encoded}"}
    http.queue(TOKEN_URL, json_response(reply, 400))

    with pytest.raises(OAuthError) as caught:
        client.refresh(flow_id)

    text = visible_text(client, flow_id, caught.value)
    assert REFRESH_TOKEN not in text
    assert encoded not in text


def test_echoed_access_token_in_resource_error_is_masked() -> None:
    client, http, flow_id = holding_token()
    page = f"<html>your token {ACCESS_TOKEN} is bad</html>".encode()
    http.queue(RESOURCE_URL, HttpResponse(500, {"Content-Type": "text/html"}, page))

    with pytest.raises(ResourceError) as caught:
        client.fetch_resource(flow_id)

    assert ACCESS_TOKEN not in str(caught.value)
    assert "is bad" in str(caught.value)


class LockedStore(SQLiteStore):
    """A SQLite store whose file another connection locks on demand."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, timeout=0.05)
        self.locker = sqlite3.connect(
            path, timeout=0.05, isolation_level=None, check_same_thread=False
        )
        self.locked = False

    def lock(self) -> None:
        self.locker.execute("BEGIN EXCLUSIVE")
        self.locked = True

    def unlock(self) -> None:
        if self.locked:
            self.locker.execute("ROLLBACK")
            self.locked = False


def test_locked_store_is_unavailable_error(tmp_path: Path) -> None:
    store = LockedStore(tmp_path / "flows.sqlite3")
    client, _, flow_id, _ = started(store)
    store.lock()
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            client.logout(flow_id)
    finally:
        store.unlock()
    assert str(tmp_path) in str(caught.value)
    assert "locked" in str(caught.value)


def test_tokens_saved_once_store_lock_ends(tmp_path: Path) -> None:
    """The code is spent once the server responds, so the save is retried."""
    store = LockedStore(tmp_path / "flows.sqlite3")
    client, http, flow_id, callback = started(store)
    reply = {"access_token": ACCESS_TOKEN, "token_type": "Bearer"}
    original_send = http.send

    def send_then_lock(request: object) -> HttpResponse:
        response = original_send(request)  # type: ignore[arg-type]
        if request.url == TOKEN_URL:  # type: ignore[attr-defined]
            store.lock()
            threading.Timer(0.3, store.unlock).start()
        return response

    http.send = send_then_lock  # type: ignore[method-assign]
    http.queue(TOKEN_URL, json_response(reply))
    # Real sleeps, so the retries outlast the lock held by the timer.
    client._sleep = time.sleep

    client.handle_callback(flow_id, callback)

    assert client.status(flow_id).state == "token_held"
    assert client.access_token(flow_id) == ACCESS_TOKEN


def test_new_store_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "flows.sqlite3"
    SQLiteStore(path).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_damaged_store_file_is_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite3"
    path.write_bytes(b"not a database " * 100)
    with pytest.raises(StoreUnavailableError) as caught:
        SQLiteStore(path)
    assert "damaged" in str(caught.value)
    assert str(path) in str(caught.value)


def test_hand_edited_row_is_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite3"
    client, _, flow_id, _ = started(SQLiteStore(path))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE flows SET data = '{broken' WHERE id = ?", (flow_id,))
    with pytest.raises(StoreUnavailableError, match="damaged"):
        client.status(flow_id)


def test_cli_on_damaged_store_shows_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite3"
    path.write_bytes(b"not a database " * 100)
    result = subprocess.run(
        [sys.executable, "-m", "flowengine.cli", "flows", "--store", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "damaged" in result.stderr
