"""One flow driven by OAuthClients in several processes through a shared store.

The demo authorization server and resource run under waitress in the test
process. The server rotates refresh tokens and revokes the whole grant when
an old refresh token comes back, so a second refresh of one flow is visible
both in its request counters and as failed resource calls. The workers are
spawned processes that open the store from its URL, as separate hosts would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import requests
from test_stores import SHARED_KINDS, Backend, ClosableStore, backend_for

from flowengine.adapters.stores import open_store
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.engine import replay
from flowengine.errors import TransitionError
from flowengine.oauth.config import ClientConfig
from flowengine.records import AuditEvent, FlowRecord

FLOW_ID = "shared-flow"
PROCESSES = 4
THREADS_PER_PROCESS = 25
RESULT_TIMEOUT = 120


class DeferredApp:
    """A WSGI app that forwards to `target`, set once the server's port is known.

    The demo settings need the issuer URL, which contains the port the
    server binds when it is created.
    """

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


@dataclasses.dataclass
class Demo:
    """Running demo servers, their database and a client configuration."""

    config: ClientConfig
    database: DemoDatabase
    auth_url: str

    def refresh_requests(self) -> dict[str, int]:
        """Return the refresh requests the token endpoint saw, by outcome."""
        return {
            outcome: count
            for (grant_type, outcome), count in self.database.token_requests.items()
            if grant_type == "refresh_token"
        }


@contextlib.contextmanager
def running_demo() -> Iterator[Demo]:
    auth_app, resource_app = DeferredApp(), DeferredApp()
    auth = BackgroundServer(auth_app, threads=16, name="shared-flows authserver")
    resource = BackgroundServer(resource_app, threads=16, name="shared-flows resource")
    settings = DemoSettings(issuer=auth.url)
    database = DemoDatabase()
    auth_app.target = create_authorization_server(settings, database)
    resource_app.target = create_resource_server(settings, database)
    config = ClientConfig(
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        redirect_uri=settings.redirect_uris[0],
        authorization_endpoint=f"{auth.url}/authorize",
        token_endpoint=f"{auth.url}/token",
        resource_url=f"{resource.url}/resource",
        issuer=auth.url,
        connect_timeout=5.0,
        read_timeout=30.0,
        store="memory:",
    )
    with auth, resource:
        yield Demo(config, database, auth.url)


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo() as running:
        yield running


@pytest.fixture(params=SHARED_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, tmp_path) as chosen:
        yield chosen


def approve_in_browser(demo: Demo, authorization_url: str) -> str:
    """Approve the request as the user would and return the callback URL."""
    with requests.Session() as browser:
        browser.trust_env = False  # never send loopback requests to a proxy
        page = browser.get(authorization_url, timeout=10)
        assert page.status_code == 200, page.text
        found = re.search(r'name="reqid" value="([^"]+)"', page.text)
        assert found is not None, page.text
        form = {"reqid": found.group(1), "approve": "approve"}
        form.update(dict.fromkeys(re.findall(r'name="(scope_[^"]+)"', page.text), "on"))
        response = browser.post(
            f"{demo.auth_url}/approve", data=form, allow_redirects=False, timeout=10
        )
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def hold_token(demo: Demo, client: OAuthClient) -> dict[str, Any]:
    """Run the grant for FLOW_ID and return the resource's data."""
    authorization_url = client.start(FLOW_ID)
    client.handle_callback(FLOW_ID, approve_in_browser(demo, authorization_url))
    data: dict[str, Any] = client.fetch_resource(FLOW_ID).json()
    return data


def spawn(target: Any, *args: Any) -> multiprocessing.process.BaseProcess:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


def collect(results: Any, count: int) -> list[Any]:
    return [results.get(timeout=RESULT_TIMEOUT) for _ in range(count)]


def stop(processes: list[multiprocessing.process.BaseProcess]) -> list[int | None]:
    for process in processes:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
    return [process.exitcode for process in processes]


def assert_audit_trail_replays(client: OAuthClient) -> None:
    events = client.events(FLOW_ID)
    assert replay(client.definition, events) == client.store.load(FLOW_ID).state
    assert [event.sequence for event in events] == list(range(len(events)))


class InterleavingStore:
    """A real store that lets another caller write at one chosen moment.

    `action` runs once: right after the first load that returns a flow in
    `after_load_in`, or right before the first commit of an event whose
    trigger is `before_commit_of`. That puts a second caller's write into
    the window between two steps of the first, where processes race.
    """

    def __init__(
        self,
        store: ClosableStore,
        action: Any,
        *,
        after_load_in: str | None = None,
        before_commit_of: str | None = None,
    ) -> None:
        self.store = store
        self.action = action
        self.after_load_in = after_load_in
        self.before_commit_of = before_commit_of
        self.ran = False

    def _run_once(self) -> None:
        if not self.ran:
            self.ran = True
            self.action()

    def create(self, record: FlowRecord, event: AuditEvent) -> None:
        self.store.create(record, event)

    def load(self, flow_id: str) -> FlowRecord:
        record = self.store.load(flow_id)
        if record.state == self.after_load_in:
            self._run_once()
        return record

    def commit(self, record: FlowRecord, event: AuditEvent) -> None:
        if event.trigger == self.before_commit_of:
            self._run_once()
        self.store.commit(record, event)

    def events(self, flow_id: str) -> list[AuditEvent]:
        return self.store.events(flow_id)

    def flows(self) -> list[FlowRecord]:
        return self.store.flows()

    def close(self) -> None:
        self.store.close()


# --- workers, run in spawned processes ---------------------------------------


def fetch_in_threads(
    location: str, config: ClientConfig, barrier: Any, results: Any
) -> None:
    """Call the resource from many threads, each with its own OAuthClient.

    The threads share one store, as the threads of a web server process do.
    A store per thread would open 100 PostgreSQL connections, the default
    max_connections of a whole server.
    """
    store = cast(ClosableStore, open_store(location))

    def fetch() -> None:
        client = OAuthClient(config, store=store)
        try:
            barrier.wait(timeout=60)
            results.put(("ok", client.fetch_resource(FLOW_ID).json()))
        except BaseException as exc:  # reported to the parent's assert
            results.put(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            client.http.close()

    threads = [threading.Thread(target=fetch) for _ in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()


def take_lease_and_hang(location: str, config: ClientConfig, leased: Any) -> None:
    """Take the refresh lease of FLOW_ID, then block until killed."""
    client = OAuthClient(config, store=open_store(location))
    client.engine.fire(FLOW_ID, "expire", reason="lease holder test")
    client.engine.fire(FLOW_ID, "refresh")
    leased.set()
    time.sleep(RESULT_TIMEOUT)


def call_client(
    location: str,
    config: ClientConfig,
    method: str,
    args: tuple[Any, ...],
    results: Any,
) -> None:
    """Call one OAuthClient method and report its result."""
    client = OAuthClient(config, store=open_store(location))
    try:
        value = getattr(client, method)(*args)
        if isinstance(value, FlowRecord):
            value = value.state
        results.put(("ok", value))
    except BaseException as exc:  # reported to the parent's assert
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


# --- tests -------------------------------------------------------------------


def test_refresh_runs_once_across_processes(demo: Demo, backend: Backend) -> None:
    # A refresh whose result is lost holds the flow for one lease, so the
    # lease is short, but still far above the time one refresh takes here.
    config = demo.config.replace(refresh_lease=5.0)
    client = OAuthClient(config, store=open_store(backend.location))
    expected = hold_token(demo, client)
    demo.database.expire_access_tokens()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES * THREADS_PER_PROCESS)
    results = context.Queue()

    processes = [
        spawn(fetch_in_threads, backend.location, config, barrier, results)
        for _ in range(PROCESSES)
    ]
    outcomes = collect(results, PROCESSES * THREADS_PER_PROCESS)

    assert stop(processes) == [0] * PROCESSES
    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert errors == []
    assert [detail for _, detail in outcomes] == [expected] * len(outcomes)
    assert demo.refresh_requests() == {"ok": 1}
    assert client.status(FLOW_ID).state == "token_held"
    assert_audit_trail_replays(client)
    client.close()


def test_refresh_after_losing_lease_race_waits(demo: Demo, backend: Backend) -> None:
    holder = OAuthClient(
        demo.config.replace(refresh_lease=1.0), store=open_store(backend.location)
    )
    expected = hold_token(demo, holder)
    demo.database.expire_access_tokens()
    # The holder takes the lease right after the waiter has read `expired`,
    # so the waiter's own attempt at the lease comes too late. The holder
    # never finishes, and the waiter takes over when the 1 s lease ends.
    store = InterleavingStore(
        backend.open(),
        lambda: holder.engine.fire(FLOW_ID, "refresh"),
        after_load_in="expired",
    )
    waiter = OAuthClient(demo.config, store=store)

    data = waiter.fetch_resource(FLOW_ID).json()

    assert store.ran
    assert data == expected
    assert demo.refresh_requests() == {"ok": 1}
    assert waiter.status(FLOW_ID).state == "token_held"
    assert_audit_trail_replays(waiter)
    waiter.close()
    holder.close()


def test_refresh_saved_despite_rejected_attempt(demo: Demo, backend: Backend) -> None:
    other = OAuthClient(demo.config, store=open_store(backend.location))
    expected = hold_token(demo, other)
    demo.database.expire_access_tokens()
    rejected: list[str] = []

    def attempt_refresh() -> None:
        try:
            other.engine.fire(FLOW_ID, "refresh")
        except TransitionError as exc:
            rejected.append(exc.code)

    # Another caller's rejected attempt at the lease is audited between the
    # holder's load and its save of the refreshed tokens.
    store = InterleavingStore(
        backend.open(), attempt_refresh, before_commit_of="receive_token"
    )
    holder = OAuthClient(demo.config, store=store)

    data = holder.fetch_resource(FLOW_ID).json()

    assert rejected == ["transition_rejected"]
    assert data == expected
    assert demo.refresh_requests() == {"ok": 1}
    assert holder.status(FLOW_ID).state == "token_held"
    assert_audit_trail_replays(holder)
    holder.close()
    other.close()


def test_killed_lease_holder_is_taken_over(demo: Demo, backend: Backend) -> None:
    client = OAuthClient(demo.config, store=open_store(backend.location))
    expected = hold_token(demo, client)
    leased = multiprocessing.get_context("spawn").Event()
    short_lease = demo.config.replace(refresh_lease=1.0)

    holder = spawn(take_lease_and_hang, backend.location, short_lease, leased)
    assert leased.wait(timeout=RESULT_TIMEOUT)
    holder.kill()
    holder.join()

    assert holder.exitcode == -signal.SIGKILL
    assert client.status(FLOW_ID).state == "refreshing"
    assert client.fetch_resource(FLOW_ID).json() == expected
    triggers = [event.trigger for event in client.events(FLOW_ID)]
    assert triggers[-4:] == ["expire", "refresh", "refresh", "receive_token"]
    assert demo.refresh_requests() == {"ok": 1}
    # The rotated refresh token was kept: the server accepts it once more.
    client.refresh(FLOW_ID)
    assert client.fetch_resource(FLOW_ID).json() == expected
    assert demo.refresh_requests() == {"ok": 2}
    assert_audit_trail_replays(client)
    client.close()


def test_callback_handled_by_another_process(demo: Demo, backend: Backend) -> None:
    results = multiprocessing.get_context("spawn").Queue()

    starter = spawn(
        call_client, backend.location, demo.config, "start", (FLOW_ID,), results
    )
    started = results.get(timeout=RESULT_TIMEOUT)
    assert stop([starter]) == [0]
    assert started[0] == "ok", started
    callback_url = approve_in_browser(demo, started[1])
    receiver = spawn(
        call_client,
        backend.location,
        demo.config,
        "handle_callback",
        (FLOW_ID, callback_url),
        results,
    )
    received = results.get(timeout=RESULT_TIMEOUT)

    assert stop([receiver]) == [0]
    assert received == ("ok", "token_held")
    client = OAuthClient(demo.config, store=open_store(backend.location))
    assert client.fetch_resource(FLOW_ID).json()["name"] == "Protected Resource"
    triggers = [event.trigger for event in client.events(FLOW_ID)]
    assert triggers == ["create", "start", "receive_code", "receive_token"]
    assert demo.database.token_requests == {("authorization_code", "ok"): 1}
    client.close()
