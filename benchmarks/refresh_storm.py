"""Refresh storm: N threads need a token at the moment it has expired.

flowengine: one OAuthClient and one store shared by N threads, each calling
`access_token(flow_id)` on a flow whose token has expired. Only the thread
that wins `expired -> refreshing` calls the token endpoint. The others poll
the store until the flow is back in token_held with the new token.

Authlib: N OAuth2Session objects with a copy of the same expired token, each
calling `ensure_active_token()`, so each sends its own refresh request. The
demo server rotates refresh tokens and treats a second use of one as a sign
of theft, so it rejects every request but the first and revokes the grant,
including the token that the first request received.

Both start from a fresh grant at each run. The threads start together at a
barrier; the time runs from the barrier to the last thread's return.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import (
    INFO,
    PEER,
    SUBJECT,
    Scale,
    add_ratios,
    not_measured,
    section,
)
from benchmarks.common import row as make_row
from benchmarks.common import target as make_target
from benchmarks.grant import TIMEOUT, browser_session, client_config
from benchmarks.servers import ServerProcess, start_demo
from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.engine import Store

# The demo server's default access token lifetime is 3600 s; moving the
# client's clock this far ahead makes the token expired in the client's eyes.
CLOCK_JUMP = 2 * 3600.0
REFRESH_LEASE = 10.0
THREAD_STACK_BYTES = 512 * 1024


class ShiftedClock:
    """The system clock plus an offset that a benchmark can change."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


@dataclasses.dataclass
class StormResult:
    """The outcome of one storm of N callers."""

    seconds: float
    token_calls: int
    with_token: int
    working_tokens: int
    errors: dict[str, int]
    unfinished: int


@dataclasses.dataclass(frozen=True)
class Failure:
    """A caller that raised: only the exception's type name is kept.

    Keeping the exception itself would keep its traceback, whose frames hold
    the HTTP response and with it a pooled connection, open.
    """

    error: str


# A caller's token, its failure, or None if it had not returned in time.
Outcome = str | Failure | None


def _storm(
    callers: list[Callable[[], str]], time_limit: float
) -> tuple[float, list[Outcome]]:
    """Run every caller in its own thread, started together at a barrier.

    Returns the seconds from the barrier to the last return and each
    caller's outcome.
    """
    outcomes: list[Outcome] = [None] * len(callers)
    finished = [0.0] * len(callers)
    barrier = threading.Barrier(len(callers) + 1, timeout=time_limit)

    def work(index: int, call: Callable[[], str]) -> None:
        try:
            barrier.wait()
            outcomes[index] = call()
        except Exception as exc:  # noqa: BLE001 (kept as the outcome)
            outcomes[index] = Failure(type(exc).__name__)
        finished[index] = time.perf_counter()

    previous_stack = threading.stack_size(THREAD_STACK_BYTES)
    try:
        threads = [
            threading.Thread(target=work, args=(index, call), daemon=True)
            for index, call in enumerate(callers)
        ]
        for thread in threads:
            thread.start()
    finally:
        threading.stack_size(previous_stack)
    barrier.wait()
    started = time.perf_counter()
    deadline = started + time_limit
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    last = max((f for f in finished if f), default=started)
    return last - started, outcomes


def _refresh_calls(demo: ServerProcess) -> int:
    counts = demo.call("counters")["token_requests"]
    return sum(n for key, n in counts.items() if key.startswith("refresh_token/"))


def _working(tokens: set[str], resource_url: str) -> int:
    """Return how many of `tokens` the resource accepts now."""
    accepted = 0
    with requests.Session() as session:
        session.trust_env = False
        for token in tokens:
            response = session.post(
                resource_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=TIMEOUT,
            )
            accepted += response.status_code == 200
    return accepted


def _summarize(
    demo: ServerProcess,
    calls_before: int,
    seconds: float,
    outcomes: list[Outcome],
) -> StormResult:
    tokens = {outcome for outcome in outcomes if isinstance(outcome, str)}
    errors = Counter(
        outcome.error for outcome in outcomes if isinstance(outcome, Failure)
    )
    return StormResult(
        seconds=seconds,
        token_calls=_refresh_calls(demo) - calls_before,
        with_token=sum(isinstance(outcome, str) for outcome in outcomes),
        working_tokens=_working(tokens, demo.info["resource_url"]),
        errors=dict(errors),
        unfinished=sum(outcome is None for outcome in outcomes),
    )


# --- flowengine ------------------------------------------------------------


def flowengine_storm(
    demo: ServerProcess, store: Store, size: int, time_limit: float
) -> StormResult:
    clock = ShiftedClock()
    config = client_config(demo.info).replace(refresh_lease=REFRESH_LEASE)
    client = OAuthClient(config, store=store, clock=clock)
    try:
        flow_id = client.create_flow()
        with browser_session() as browser:
            callback = approve(browser, client.start(flow_id), timeout=TIMEOUT)
        client.handle_callback(flow_id, callback)
        clock.offset = CLOCK_JUMP
        calls_before = _refresh_calls(demo)
        seconds, outcomes = _storm(
            [lambda: client.access_token(flow_id)] * size, time_limit
        )
        return _summarize(demo, calls_before, seconds, outcomes)
    finally:
        client.close()


# --- Authlib -----------------------------------------------------------------


def authlib_storm(demo: ServerProcess, size: int, time_limit: float) -> StormResult:
    from authlib.common.security import generate_token  # type: ignore[import-untyped]
    from authlib.integrations.requests_client import (  # type: ignore[import-untyped]
        OAuth2Session,
    )

    info = demo.info
    token_endpoint = f"{info['issuer']}/token"

    def new_session(token: dict[str, Any] | None = None) -> Any:
        session = OAuth2Session(
            info["client_id"],
            info["client_secret"],
            scope="foo bar",
            redirect_uri=info["redirect_uri"],
            code_challenge_method="S256",
            token=token,
            token_endpoint=token_endpoint,
            default_timeout=TIMEOUT,
        )
        session.trust_env = False
        return session

    with new_session() as first, browser_session() as browser:
        verifier = generate_token(48)
        url, state = first.create_authorization_url(
            f"{info['issuer']}/authorize", code_verifier=verifier
        )
        callback = approve(browser, url, timeout=TIMEOUT)
        token = dict(
            first.fetch_token(
                token_endpoint,
                authorization_response=callback,
                code_verifier=verifier,
                state=state,
            )
        )
    token["expires_at"] = int(time.time()) - 10
    sessions = [new_session(dict(token)) for _ in range(size)]

    def caller(session: Any) -> Callable[[], str]:
        # Each caller closes its session when done, as a per-request session
        # would. Otherwise every idle keep-alive connection stays open until
        # the storm ends, and waitress (100 connections at most by default)
        # stops accepting the rest.
        def call() -> str:
            with session:
                session.ensure_active_token()
                fresh = str(session.token["access_token"])
            if fresh == token["access_token"]:
                raise RuntimeError("the session kept the expired token")
            return fresh

        return call

    calls_before = _refresh_calls(demo)
    seconds, outcomes = _storm([caller(s) for s in sessions], time_limit)
    return _summarize(demo, calls_before, seconds, outcomes)


# --- the section ---------------------------------------------------------------


def _row(
    label: str, role: str, size: int, results: list[StormResult]
) -> dict[str, Any]:
    """Build a row whose counts are those of the worst run, not the median."""
    errors: Counter[str] = Counter()
    for result in results:
        errors.update(result.errors)
    return make_row(
        label,
        role,
        [result.seconds * 1000 for result in results],
        callers=size,
        group=f"N={size}",
        token_calls=max(result.token_calls for result in results),
        with_token=min(result.with_token for result in results),
        working_tokens=min(result.working_tokens for result in results),
        errors=dict(errors) or None,
        unfinished=sum(result.unfinished for result in results),
    )


def run(scale: Scale) -> dict[str, Any]:
    """Run the storm for each size with flowengine and with Authlib."""
    rows: list[dict[str, Any]] = []
    try:
        import authlib  # type: ignore[import-untyped]  # noqa: F401

        authlib_missing = None
    except ImportError as exc:
        authlib_missing = f"authlib is not installed ({exc})"
    with start_demo(threads=8) as demo, tempfile.TemporaryDirectory() as folder:
        for size in scale.storm_sizes:
            sqlite_results, memory_results, authlib_results = [], [], []
            for repeat in range(scale.storm_repeats):
                store = SQLiteStore(Path(folder) / f"storm-{size}-{repeat}.sqlite3")
                sqlite_results.append(
                    flowengine_storm(demo, store, size, scale.run_time_limit)
                )
                memory_results.append(
                    flowengine_storm(demo, MemoryStore(), size, scale.run_time_limit)
                )
                if authlib_missing is None:
                    authlib_results.append(
                        authlib_storm(demo, size, scale.run_time_limit)
                    )
            rows.append(_row("flowengine, SQLiteStore", SUBJECT, size, sqlite_results))
            rows.append(_row("flowengine, MemoryStore", INFO, size, memory_results))
            if authlib_missing is None:
                rows.append(
                    _row("Authlib OAuth2Session each", PEER, size, authlib_results)
                )
            else:
                rows.append(
                    not_measured("Authlib OAuth2Session each", PEER, authlib_missing)
                )
        warnings = demo.call("counters")["warnings"]
    add_ratios(rows, group="group")
    return _section(scale, rows, warnings)


def _section(
    scale: Scale, rows: list[dict[str, Any]], warnings: dict[str, int]
) -> dict[str, Any]:
    subject_rows = [item for item in rows if item["role"] == SUBJECT]
    single_flight = all(
        item["extra"]["token_calls"] == 1
        and item["extra"]["with_token"] == item["extra"]["callers"]
        and not item["extra"]["errors"]
        for item in subject_rows
    )
    detail = "; ".join(
        f"N={item['extra']['callers']}: {item['extra']['token_calls']} token call(s), "
        f"{item['extra']['with_token']} of {item['extra']['callers']} callers with a "
        f"token after {item['median']:.0f} ms"
        for item in subject_rows
    )
    return section(
        "storm",
        "Refresh storm",
        unit="ms until every caller returned",
        higher_is_better=False,
        rows=rows,
        target=make_target(
            "one token endpoint call per storm, and every caller gets the token",
            single_flight,
            detail,
        ),
        setup={
            "callers": ", ".join(str(size) for size in scale.storm_sizes),
            "runs": scale.storm_repeats,
            "refresh_lease": f"{REFRESH_LEASE:g} s",
            "time_limit": f"{scale.run_time_limit:g} s per storm",
            "servers": "demo servers, waitress with 8 threads, in a child process",
        },
        notes=[
            "token calls is the number of refresh requests the token endpoint "
            "received, the most of any run. with token counts the callers that "
            "returned a new access token, and working counts the distinct "
            "returned tokens that the resource still accepts after the storm. "
            "Both are the fewest of any run. errors and unfinished are summed "
            "over the runs.",
            "flowengine's waiting callers poll the store with a back-off that "
            "doubles from 10 ms up to 0.5 s, so a caller returns up to one "
            "back-off step after the winner has saved the token.",
            "The Authlib sessions are independent, as in separate processes or "
            "per-request sessions; Authlib has no shared refresh.",
            f"Demo server log warnings: {warnings or 'none'}.",
        ],
        extra_columns=[
            ("callers", "callers"),
            ("token_calls", "token calls"),
            ("with_token", "with token"),
            ("working_tokens", "working"),
            ("errors", "errors"),
            ("unfinished", "unfinished"),
        ],
    )
