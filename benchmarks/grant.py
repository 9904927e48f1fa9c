"""Whole grants per second against the demo servers on loopback.

One grant builds the authorization request and approves it on the demo
authorization server's form, with a GET and a POST by a separate browser
session. It then applies the callback, exchanges the code at the token
endpoint and calls the protected resource once. The approval step is the same
`flowengine.autopilot.approve` for every client, so the clients differ only
in their own work. Each client keeps one HTTP session across its grants.
The demo servers run in a child process.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import (
    FLOOR,
    INFO,
    PEER,
    SUBJECT,
    Scale,
    add_ratios,
    not_measured,
    row,
    section,
)
from benchmarks.common import target as make_target
from benchmarks.servers import ServerProcess, start_demo
from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.engine import Store
from flowengine.oauth.config import ClientConfig

TIMEOUT = 10.0
SCOPE = "foo bar"
WARM_UP_GRANTS = 3

# One grant, given the browser session that approves it. Raises on failure.
Grant = Callable[[requests.Session], None]


def client_config(demo: dict[str, Any]) -> ClientConfig:
    """Return a flowengine configuration for the demo servers in `demo`."""
    return ClientConfig(
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        redirect_uri=demo["redirect_uri"],
        authorization_endpoint=f"{demo['issuer']}/authorize",
        token_endpoint=f"{demo['issuer']}/token",
        resource_url=demo["resource_url"],
        issuer=demo["issuer"],
        scope=SCOPE,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
    )


def browser_session() -> requests.Session:
    """Return a session that plays the user's browser on the approval form."""
    session = requests.Session()
    session.trust_env = False
    return session


# --- the three clients -------------------------------------------------------


def flowengine_grant(client: OAuthClient) -> Grant:
    def grant(browser: requests.Session) -> None:
        flow_id = client.create_flow()
        url = client.start(flow_id)
        callback = approve(browser, url, timeout=TIMEOUT)
        client.handle_callback(flow_id, callback)
        result = client.fetch_resource(flow_id)
        if result.status != 200:
            raise RuntimeError(f"resource returned HTTP {result.status}")

    return grant


def authlib_grant(demo: dict[str, Any]) -> tuple[Grant, Callable[[], None]]:
    """Return a grant made with Authlib's requests OAuth2Session, and its closer."""
    from authlib.common.security import generate_token  # type: ignore[import-untyped]
    from authlib.integrations.requests_client import (  # type: ignore[import-untyped]
        OAuth2Session,
    )

    session = OAuth2Session(
        demo["client_id"],
        demo["client_secret"],
        scope=SCOPE,
        redirect_uri=demo["redirect_uri"],
        code_challenge_method="S256",
        default_timeout=TIMEOUT,
    )
    session.trust_env = False
    authorization_endpoint = f"{demo['issuer']}/authorize"
    token_endpoint = f"{demo['issuer']}/token"

    def grant(browser: requests.Session) -> None:
        verifier = generate_token(48)
        url, state = session.create_authorization_url(
            authorization_endpoint, code_verifier=verifier
        )
        callback = approve(browser, url, timeout=TIMEOUT)
        session.fetch_token(
            token_endpoint,
            authorization_response=callback,
            code_verifier=verifier,
            state=state,
        )
        response = session.post(demo["resource_url"])
        response.raise_for_status()

    return grant, session.close


def bare_requests_grant(demo: dict[str, Any]) -> tuple[Grant, Callable[[], None]]:
    """Return the same grant written directly with requests: the floor.

    It does what the protocol needs and nothing more: state and PKCE S256,
    the state check, client_secret_basic and a bearer header.
    """
    session = requests.Session()
    session.trust_env = False
    issuer = demo["issuer"]
    credentials = (demo["client_id"], demo["client_secret"])

    def grant(browser: requests.Session) -> None:
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(64)
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": demo["client_id"],
                "redirect_uri": demo["redirect_uri"],
                "scope": SCOPE,
                "state": state,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        callback = approve(browser, f"{issuer}/authorize?{query}", timeout=TIMEOUT)

        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))
        if not hmac.compare_digest(params.get("state", ""), state):
            raise RuntimeError("callback state does not match")

        token = session.post(
            f"{issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": params["code"],
                "redirect_uri": demo["redirect_uri"],
                "code_verifier": verifier,
            },
            auth=credentials,
            timeout=TIMEOUT,
        )
        token.raise_for_status()
        access_token = token.json()["access_token"]

        response = session.post(
            demo["resource_url"],
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=TIMEOUT,
        )
        response.raise_for_status()

    return grant, session.close


# --- measuring ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Grants per second of one run, with the client's CPU time per grant."""

    rate: float
    cpu_ms_per_grant: float
    done: int
    errors: int


def _rate(grant: Grant, count: int, time_limit: float) -> RunResult:
    """Run up to `count` grants, one after the other.

    The CPU time is this process's, which runs only the client and the
    browser's approval requests; the servers run in a child process.
    """
    browser = browser_session()
    done = errors = 0
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + time_limit
    try:
        for _ in range(count):
            try:
                grant(browser)
                done += 1
            except Exception:  # noqa: BLE001 (counted and reported)
                errors += 1
            if time.perf_counter() > deadline:
                break
    finally:
        browser.close()
    elapsed = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu_started) * 1000
    return RunResult(done / elapsed, cpu_ms / max(done, 1), done, errors)


def _flowengine_client(demo: dict[str, Any], store: Store) -> OAuthClient:
    return OAuthClient(client_config(demo), store=store)


def run(scale: Scale) -> dict[str, Any]:
    """Measure grants per second for flowengine, Authlib and bare requests."""
    with start_demo() as demo, tempfile.TemporaryDirectory() as folder:
        return _measure(scale, demo, Path(folder))


def _measure(scale: Scale, demo: ServerProcess, folder: Path) -> dict[str, Any]:
    info = demo.info
    closers: list[Callable[[], None]] = []
    memory_client = _flowengine_client(info, MemoryStore())
    sqlite_client = _flowengine_client(info, SQLiteStore(folder / "flows.sqlite3"))
    closers += [memory_client.close, sqlite_client.close]
    contenders: dict[str, tuple[str, Grant | None, str]] = {
        "flowengine": (SUBJECT, flowengine_grant(memory_client), ""),
        "flowengine_sqlite": (INFO, flowengine_grant(sqlite_client), ""),
    }
    try:
        grant, close = authlib_grant(info)
        contenders["authlib"] = (PEER, grant, "")
        closers.append(close)
    except ImportError as exc:
        contenders["authlib"] = (PEER, None, f"authlib is not installed ({exc})")
    grant, close = bare_requests_grant(info)
    contenders["requests"] = (FLOOR, grant, "")
    closers.append(close)

    results: dict[str, list[RunResult]] = {name: [] for name in contenders}
    try:
        for _, grant_once, _ in contenders.values():
            if grant_once is not None:
                _rate(grant_once, WARM_UP_GRANTS, scale.run_time_limit)
        # Interleave the clients, so drift in the machine's speed spreads
        # over all of them.
        for _ in range(scale.grant_repeats):
            for name, (_, grant_once, _) in contenders.items():
                if grant_once is None:
                    continue
                results[name].append(
                    _rate(grant_once, scale.grant_count, scale.run_time_limit)
                )
        server_counters = demo.call("counters")
    finally:
        for close in closers:
            close()
    return _section(scale, contenders, results, server_counters)


LABELS = {
    "flowengine": "flowengine OAuthClient, MemoryStore",
    "flowengine_sqlite": "flowengine OAuthClient, SQLiteStore",
    "authlib": "Authlib requests OAuth2Session (S256)",
    "requests": "bare requests calls (floor)",
}


def _section(
    scale: Scale,
    contenders: dict[str, tuple[str, Grant | None, str]],
    results: dict[str, list[RunResult]],
    server_counters: dict[str, Any],
) -> dict[str, Any]:
    rows = []
    for name, (role, grant_once, reason) in contenders.items():
        if grant_once is None:
            rows.append(not_measured(LABELS[name], role, reason))
            continue
        runs = results[name]
        cpu = [result.cpu_ms_per_grant for result in runs]
        rows.append(
            row(
                LABELS[name],
                role,
                [result.rate for result in runs],
                cpu_ms=statistics.median(cpu),
                errors=sum(result.errors for result in runs),
            )
        )
    add_ratios(rows)
    subject = rows[0]
    to_peer, to_floor = subject.get("ratio_to_peer"), subject.get("ratio_to_floor")
    met = None
    if to_peer is not None and to_floor is not None:
        met = to_peer >= 1.0 and to_floor >= 0.8
    detail = (
        f"{_times(to_peer)} Authlib's rate, {_percent(to_floor)} of the floor"
        if to_floor is not None
        else "not measured"
    )
    return section(
        "grant",
        "Whole grant",
        unit="grants per second",
        higher_is_better=True,
        rows=rows,
        target=make_target(
            "at least Authlib's rate and at least 80% of the floor", met, detail
        ),
        setup={
            "grants_per_run": scale.grant_count,
            "runs": scale.grant_repeats,
            "warm_up_grants": WARM_UP_GRANTS,
            "callers": "one, sequential",
            "servers": "demo authorization server and resource, waitress "
            "(8 threads each) in a child process",
        },
        notes=[
            "A grant is four HTTP exchanges: the approval page (GET) and the "
            "approval form (POST), sent by the same browser code for every "
            "client, then the client's token request and resource request.",
            "client CPU: the median CPU time per grant of the benchmark "
            "process, which runs the client and the browser's two approval "
            "requests but not the servers.",
            "The demo server's log warnings during the run: "
            f"{server_counters.get('warnings') or 'none'}.",
        ],
        extra_columns=[("cpu_ms", "client CPU (ms/grant)"), ("errors", "errors")],
    )


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"
