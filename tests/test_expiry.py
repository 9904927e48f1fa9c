"""Expiry of abandoned grants and retention of flows and their audit trails.

Each test runs an OAuthClient with a FakeClock and a ScriptedHttp token
endpoint on every store kind of test_stores.py: memory, SQLite, and Redis and
PostgreSQL when their test servers can be reached.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_stores import ClosableStore, backend_for

from flowengine.adapters.sqlite import SQLiteStore
from flowengine.client import OAuthClient
from flowengine.errors import (
    ConfigError,
    FlowNotFoundError,
    InvalidTriggerError,
    StateMismatchError,
    TransitionError,
    TransportError,
)
from flowengine.oauth.config import ClientConfig
from flowengine.records import AuditEvent, FlowRecord
from flowengine.testing import (
    FakeClock,
    ScriptedHttp,
    json_response,
    scripted_timeout,
)

LIFETIME = 600.0
DAY = 86_400.0
RETENTION = 7 * DAY
CONFIG = ClientConfig(
    store="memory:", pending_lifetime=LIFETIME, audit_retention=RETENTION
)
TOKEN_URL = CONFIG.endpoint("token_endpoint")
SECRET_KEYS = ("state", "code_verifier", "code")


# --- setup -------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClosableStore]:
    with backend_for(request.param, tmp_path) as backend:
        opened = backend.open()
        yield opened
        opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def http(clock: FakeClock) -> ScriptedHttp:
    return ScriptedHttp(clock=clock)


def make_client(
    store: ClosableStore, clock: FakeClock, http: ScriptedHttp, **changes: Any
) -> OAuthClient:
    return OAuthClient(
        CONFIG.replace(**changes),
        store=store,
        http=http,
        clock=clock,
        sleep=clock.sleep,
    )


@pytest.fixture
def client(store: ClosableStore, clock: FakeClock, http: ScriptedHttp) -> OAuthClient:
    return make_client(store, clock, http)


def start_grant(client: OAuthClient, flow_id: str = "grant") -> str:
    """Start a grant and return the state value of its authorization request."""
    url = client.start(flow_id)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    return query["state"]


def callback_url(state: str, code: str = "code-1") -> str:
    query = urllib.parse.urlencode({"code": code, "state": state})
    return f"{CONFIG.redirect_uri}?{query}"


def receive_code_without_token(
    client: OAuthClient, http: ScriptedHttp, flow_id: str = "grant"
) -> None:
    """Deliver a code whose exchange times out, leaving it in code_received."""
    state = start_grant(client, flow_id)
    http.queue(TOKEN_URL, scripted_timeout(TOKEN_URL))
    with pytest.raises(TransportError):
        client.handle_callback(flow_id, callback_url(state))
    assert client.status(flow_id).state == "code_received"


def obtain_token(
    client: OAuthClient, http: ScriptedHttp, flow_id: str = "grant"
) -> None:
    state = start_grant(client, flow_id)
    token = {
        "access_token": "at-1",
        "token_type": "Bearer",
        "refresh_token": "rt-1",
        "expires_in": 3600,
    }
    http.queue(TOKEN_URL, json_response(token))
    client.handle_callback(flow_id, callback_url(state))
    assert client.status(flow_id).state == "token_held"


def secret_values(record: FlowRecord) -> list[str]:
    return [str(record.data[key]) for key in SECRET_KEYS if key in record.data]


def stored_text(client: OAuthClient, flow_id: str) -> str:
    """Return the flow's data and audit trail as one JSON text."""
    record = client.store.load(flow_id)
    events = [event.to_dict() for event in client.events(flow_id)]
    return json.dumps({"data": dict(record.data), "events": events})


def last_event(client: OAuthClient, flow_id: str) -> AuditEvent:
    return client.events(flow_id)[-1]


# --- abandon -----------------------------------------------------------------


def test_expired_request_is_abandoned(client: OAuthClient, clock: FakeClock) -> None:
    start_grant(client)
    secrets_before = secret_values(client.store.load("grant"))
    clock.advance(LIFETIME)

    abandoned = client.expire_abandoned()

    assert abandoned == ["grant"]
    record = client.store.load("grant")
    assert record.state == "unauthorized"
    for key in SECRET_KEYS:
        assert key not in record.data, key
    assert "pending_expires_at" not in record.data
    assert len(secrets_before) == 2
    text = stored_text(client, "grant")
    for value in secrets_before:
        assert value not in text


def test_abandon_is_audited(client: OAuthClient, clock: FakeClock) -> None:
    start_grant(client)
    clock.advance(LIFETIME + 1)

    client.expire_abandoned()

    event = last_event(client, "grant")
    assert event.trigger == "abandon"
    assert event.source == "awaiting_callback"
    assert event.destination == "unauthorized"
    assert event.outcome == "ok"
    assert client.engine.replay("grant") == "unauthorized"


def test_late_callback_after_abandon_is_rejected(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    state = start_grant(client)
    clock.advance(LIFETIME)
    client.expire_abandoned()
    trail = client.events("grant")

    with pytest.raises(StateMismatchError):
        client.handle_callback("grant", callback_url(state))

    assert http.sent == []
    assert client.status("grant").state == "unauthorized"
    assert client.events("grant") == trail


def test_request_before_expiry_is_untouched(
    client: OAuthClient, clock: FakeClock
) -> None:
    start_grant(client)
    before = client.store.load("grant")
    trail = client.events("grant")
    clock.advance(LIFETIME - 0.5)

    abandoned = client.expire_abandoned()

    assert abandoned == []
    assert client.store.load("grant") == before
    assert client.events("grant") == trail


def test_received_code_gets_own_lifetime(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    start_grant(client, "grant")
    clock.advance(LIFETIME - 100)
    http.queue(TOKEN_URL, scripted_timeout(TOKEN_URL))
    state = client.store.load("grant").data["state"]
    with pytest.raises(TransportError):
        client.handle_callback("grant", callback_url(state))
    code_arrived = clock.now()

    clock.advance(200)
    assert client.expire_abandoned() == []
    assert client.store.load("grant").data["code"] == "code-1"

    clock.set(code_arrived + LIFETIME)
    assert client.expire_abandoned() == ["grant"]


def test_code_received_flow_is_abandoned(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    receive_code_without_token(client, http)
    verifier = client.store.load("grant").data["code_verifier"]
    clock.advance(LIFETIME)

    abandoned = client.expire_abandoned()

    assert abandoned == ["grant"]
    record = client.store.load("grant")
    assert record.state == "unauthorized"
    for key in SECRET_KEYS:
        assert key not in record.data, key
    text = stored_text(client, "grant")
    assert "code-1" not in text
    assert verifier not in text
    event = last_event(client, "grant")
    assert (event.trigger, event.source) == ("abandon", "code_received")


def test_exchange_after_abandon_sends_nothing(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    receive_code_without_token(client, http)
    sent = len(http.sent)
    clock.advance(LIFETIME)
    client.expire_abandoned()

    with pytest.raises(InvalidTriggerError):
        client.exchange_code("grant")

    assert len(http.sent) == sent


def test_abandon_fired_early_is_rejected(client: OAuthClient, clock: FakeClock) -> None:
    start_grant(client)
    before = client.store.load("grant")
    clock.advance(LIFETIME / 2)

    with pytest.raises(TransitionError) as caught:
        client.engine.fire("grant", "abandon")

    assert caught.value.code == "pending_request_live"
    assert "expires in 300 s" in str(caught.value)
    after = client.store.load("grant")
    assert after.state == "awaiting_callback"
    assert after.data == before.data
    assert last_event(client, "grant").outcome == "pending_request_live"


def test_token_held_flow_is_untouched(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    obtain_token(client, http)
    before = client.store.load("grant")
    trail = client.events("grant")
    clock.advance(100 * DAY)

    assert client.expire_abandoned() == []
    assert client.purge(1.0) == []
    assert client.store.load("grant") == before
    assert client.events("grant") == trail


def test_expire_abandoned_handles_many_flows(
    client: OAuthClient, clock: FakeClock, http: ScriptedHttp
) -> None:
    start_grant(client, "early")
    receive_code_without_token(client, http, "coded")
    clock.advance(LIFETIME / 2)
    start_grant(client, "late")
    client.create_flow("idle")
    clock.advance(LIFETIME / 2)

    abandoned = client.expire_abandoned()

    assert sorted(abandoned) == ["coded", "early"]
    assert client.status("late").state == "awaiting_callback"
    assert client.status("idle").state == "unauthorized"
    assert len(client.events("idle")) == 1


# --- concurrent callers ------------------------------------------------------


class ListingRaceStore:
    """A store that runs `action` once, right after `flows()` lists the flows.

    That puts another caller's write between the listing and the write that
    expire_abandoned or purge decides from it.
    """

    def __init__(self, inner: ClosableStore, action: Callable[[], object]) -> None:
        self.inner = inner
        self.action = action
        self.ran = False

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        self.inner.create(record, event)

    def load(self, flow_id: str) -> FlowRecord:
        return self.inner.load(flow_id)

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        self.inner.commit(record, event)

    def events(self, flow_id: str) -> list[AuditEvent]:
        return self.inner.events(flow_id)

    def flows(self) -> list[FlowRecord]:
        listed = self.inner.flows()
        if not self.ran:
            self.ran = True
            self.action()
        return listed

    def delete(self, flow_id: str, *, expected_version: int | None = None) -> None:
        self.inner.delete(flow_id, expected_version=expected_version)

    def close(self) -> None:
        self.inner.close()


def test_flow_restarted_meanwhile_is_not_abandoned(
    store: ClosableStore, clock: FakeClock, http: ScriptedHttp
) -> None:
    other = make_client(store, clock, http)
    start_grant(other)
    clock.advance(LIFETIME)
    racing = make_client(
        ListingRaceStore(store, lambda: other.start("grant")), clock, http
    )

    abandoned = racing.expire_abandoned()

    assert abandoned == []
    assert other.status("grant").state == "awaiting_callback"
    assert "state" in store.load("grant").data
    triggers = [event.trigger for event in other.events("grant")]
    assert triggers == ["create", "start", "start"]


def test_flow_restarted_meanwhile_is_not_purged(
    store: ClosableStore, clock: FakeClock, http: ScriptedHttp
) -> None:
    other = make_client(store, clock, http)
    other.create_flow("grant")
    clock.advance(RETENTION + 1)
    racing = make_client(
        ListingRaceStore(store, lambda: other.start("grant")), clock, http
    )

    deleted = racing.purge()

    assert deleted == []
    assert other.status("grant").state == "awaiting_callback"


def test_flow_deleted_meanwhile_is_skipped(
    store: ClosableStore, clock: FakeClock, http: ScriptedHttp
) -> None:
    other = make_client(store, clock, http)
    start_grant(other)
    clock.advance(LIFETIME)
    racing = make_client(
        ListingRaceStore(store, lambda: store.delete("grant")), clock, http
    )

    assert racing.expire_abandoned() == []
    assert store.flows() == []


# --- purge -------------------------------------------------------------------


def test_purge_deletes_only_old_unauthorized(
    client: OAuthClient, clock: FakeClock
) -> None:
    client.create_flow("old")
    start_grant(client, "waiting")
    clock.advance(RETENTION + 1)
    client.create_flow("new")
    new_trail = client.events("new")

    deleted = client.purge(RETENTION)

    assert deleted == ["old"]
    with pytest.raises(FlowNotFoundError):
        client.store.load("old")
    with pytest.raises(FlowNotFoundError):
        client.events("old")
    assert client.status("waiting").state == "awaiting_callback"
    assert client.events("new") == new_trail
    assert sorted(record.id for record in client.store.flows()) == ["new", "waiting"]


def test_purge_counts_from_last_change(client: OAuthClient, clock: FakeClock) -> None:
    start_grant(client)
    clock.advance(LIFETIME)
    client.expire_abandoned()
    abandoned_at = clock.now()

    clock.set(abandoned_at + RETENTION)
    assert client.purge(RETENTION) == []
    assert client.status("grant").state == "unauthorized"

    clock.set(abandoned_at + RETENTION + 0.5)
    assert client.purge(RETENTION) == ["grant"]


def test_purge_removes_audit_trail(client: OAuthClient, clock: FakeClock) -> None:
    start_grant(client)
    clock.advance(LIFETIME)
    client.expire_abandoned()
    assert len(client.events("grant")) == 3
    clock.advance(RETENTION + 1)

    client.purge()

    with pytest.raises(FlowNotFoundError):
        client.events("grant")
    client.create_flow("grant")
    assert [event.trigger for event in client.events("grant")] == ["create"]


def test_purge_default_is_configured_retention(
    store: ClosableStore, clock: FakeClock, http: ScriptedHttp
) -> None:
    client = make_client(store, clock, http, audit_retention=100.0)
    client.create_flow("short")
    clock.advance(99)
    assert client.purge() == []

    clock.advance(2)
    assert client.purge() == ["short"]


def test_purge_keeps_other_definitions(client: OAuthClient, clock: FakeClock) -> None:
    foreign = FlowRecord(
        id="door-1",
        definition="door",
        state="unauthorized",
        version=0,
        created_at=clock.now(),
        updated_at=clock.now(),
        data={"pending_expires_at": 0},
    )
    created = AuditEvent(
        flow_id="door-1",
        sequence=0,
        time="2023-11-14T22:13:20.000000Z",
        trigger="create",
        source=None,
        destination="unauthorized",
        outcome="ok",
    )
    client.store.create(foreign, created)
    clock.advance(RETENTION + 1)

    assert client.purge() == []
    assert client.expire_abandoned() == []
    assert client.store.load("door-1") == foreign


@pytest.mark.parametrize("retention", [0, -1.0, math.nan, True, "3600"])
def test_purge_rejects_invalid_retention(client: OAuthClient, retention: Any) -> None:
    client.create_flow("kept")

    with pytest.raises(ConfigError) as caught:
        client.purge(retention)

    assert "retention must be a number of seconds greater than 0" in str(caught.value)
    assert client.status("kept").state == "unauthorized"


@pytest.mark.parametrize("retention", [0, -5, math.nan, "long"])
def test_config_rejects_invalid_audit_retention(retention: Any) -> None:
    with pytest.raises(ConfigError) as caught:
        ClientConfig(store="memory:", audit_retention=retention)

    assert "audit_retention" in str(caught.value)


def test_config_audit_retention_defaults_to_30_days() -> None:
    assert ClientConfig(store="memory:").audit_retention == 30 * DAY


# --- logs --------------------------------------------------------------------


def test_logs_name_ids_and_no_secret(
    client: OAuthClient,
    clock: FakeClock,
    http: ScriptedHttp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receive_code_without_token(client, http)
    secrets_before = secret_values(client.store.load("grant"))
    clock.advance(LIFETIME)
    caplog.set_level(logging.INFO, logger="flowengine")

    client.expire_abandoned()
    clock.advance(RETENTION + 1)
    client.purge()

    messages = [record.getMessage() for record in caplog.records]
    assert "abandoned 1 flow(s) with an expired pending request: grant" in messages
    assert any(m.startswith("purged 1 flow(s) in unauthorized") for m in messages)
    assert any(m.endswith(": grant") and "purged" in m for m in messages)
    assert secrets_before
    for value in secrets_before:
        assert all(value not in message for message in messages)


# --- the purge command -------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def seed_store(path: Path) -> None:
    """Write three flows, dated relative to the wall clock the command reads.

    `old` was logged out 40 days ago, `pending` started a grant an hour ago,
    and `fresh` was created now.
    """
    store = SQLiteStore(path)
    clock = FakeClock(time.time() - 40 * DAY)
    client = OAuthClient(
        ClientConfig(store="memory:"),
        store=store,
        http=ScriptedHttp(clock=clock),
        clock=clock,
    )
    client.create_flow("old")
    clock.set(time.time() - 3600)
    start_grant(client, "pending")
    clock.set(time.time())
    client.create_flow("fresh")
    store.close()


def test_cli_purge_abandons_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite3"
    seed_store(path)

    result = run_cli("purge", "--store", str(path))

    assert result.returncode == 0, result.stderr
    assert "abandoned 1 expired pending flow(s)" in result.stdout
    assert "deleted 1 flow(s) in unauthorized unchanged for 2592000 s" in (
        result.stdout
    )
    store = SQLiteStore(path)
    assert sorted(record.id for record in store.flows()) == ["fresh", "pending"]
    assert store.load("pending").state == "unauthorized"
    assert "state" not in store.load("pending").data
    assert store.events("pending")[-1].trigger == "abandon"
    store.close()


def test_cli_purge_with_longer_retention_keeps_flows(tmp_path: Path) -> None:
    path = tmp_path / "flows.sqlite3"
    seed_store(path)

    result = run_cli("purge", "--retention", str(50 * DAY), "--store", str(path))

    assert result.returncode == 0, result.stderr
    assert "deleted 0 flow(s)" in result.stdout
    store = SQLiteStore(path)
    assert sorted(record.id for record in store.flows()) == [
        "fresh",
        "old",
        "pending",
    ]
    store.close()


@pytest.mark.parametrize("retention", ["0", "-1", "nan"])
def test_cli_purge_rejects_invalid_retention(tmp_path: Path, retention: str) -> None:
    path = tmp_path / "flows.sqlite3"
    seed_store(path)

    result = run_cli("purge", f"--retention={retention}", "--store", str(path))

    assert result.returncode == 1
    assert "--retention must be greater than 0 seconds" in result.stderr
    assert "Traceback" not in result.stderr
    store = SQLiteStore(path)
    assert store.load("pending").state == "awaiting_callback"
    assert len(store.flows()) == 3
    store.close()
