"""Grants per second through the client web application with many users.

The client web application (Flask under waitress, 8 threads, SQLite store)
runs in one child process and the demo authorization server and resource in
another. Each simulated user is a thread with its own `requests.Session`
(cookies, keep-alive) that follows the pages as a browser would:

1. GET /authorize on the client, which redirects to the authorization server;
2. the approval page and form on the authorization server (GET and POST),
   which redirect back to the client's /callback;
3. GET /callback, where the client exchanges the code, then the index page;
4. POST /fetch_resource with the page's CSRF token, where the client calls
   the protected resource; the page must show the resource's data.

A user whose step fails counts one error, starts a new browser session and
goes on with its next grant.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from typing import Any

import requests

from benchmarks.common import INFO, SUBJECT, Scale, percentile, row, section
from benchmarks.common import target as make_target
from benchmarks.servers import configure_web_client, start_demo, start_web_client
from flowengine.autopilot import approve

TIMEOUT = 30.0
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
RESOURCE_MARKER = 'id="resource-data"'


class _User:
    """One simulated browser that runs grants and records what it saw."""

    def __init__(self, web_url: str) -> None:
        self.web_url = web_url
        self.session = self._new_session()
        self.grant_seconds: list[float] = []
        self.web_request_seconds: list[float] = []
        self.errors: dict[str, int] = {}

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        return session

    def run(self, grants: int, deadline: float, start: threading.Barrier) -> None:
        start.wait()
        for _ in range(grants):
            if time.perf_counter() > deadline:
                return
            began = time.perf_counter()
            try:
                self._grant()
            except Exception as exc:  # noqa: BLE001 (counted and reported)
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
                self.session.close()
                self.session = self._new_session()
                continue
            self.grant_seconds.append(time.perf_counter() - began)
        self.session.close()

    def _grant(self) -> None:
        start = self._web("GET", "/authorize", allow_redirects=False)
        if start.status_code != 302:
            raise RuntimeError(f"/authorize returned HTTP {start.status_code}")
        callback = approve(self.session, start.headers["Location"], timeout=TIMEOUT)
        if not callback.startswith(self.web_url):
            raise RuntimeError("the approval redirected elsewhere")
        path = urllib.parse.urlsplit(callback)
        index = self._web("GET", f"{path.path}?{path.query}")
        match = CSRF_FIELD.search(index.text)
        if index.status_code != 200 or match is None:
            raise RuntimeError(f"index page after the callback: {index.status_code}")
        page = self._web("POST", "/fetch_resource", data={"csrf_token": match.group(1)})
        if page.status_code != 200 or RESOURCE_MARKER not in page.text:
            raise RuntimeError(f"resource page: {page.status_code}")

    def _web(self, method: str, path: str, **options: Any) -> requests.Response:
        response = self.session.request(
            method, self.web_url + path, timeout=TIMEOUT, **options
        )
        for answer in (*response.history, response):
            self.web_request_seconds.append(answer.elapsed.total_seconds())
        return response


def _load_run(
    web_url: str, users: int, grants: int, time_limit: float
) -> dict[str, Any]:
    """Run `users` users at once for up to `grants` grants each."""
    people = [_User(web_url) for _ in range(users)]
    start = threading.Barrier(users + 1, timeout=60)
    deadline = time.perf_counter() + time_limit
    threads = [
        threading.Thread(target=user.run, args=(grants, deadline, start), daemon=True)
        for user in people
    ]
    for thread in threads:
        thread.start()

    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, deadline + TIMEOUT - time.perf_counter()))
    elapsed = time.perf_counter() - began

    grant_seconds = [s for user in people for s in user.grant_seconds]
    request_seconds = [s for user in people for s in user.web_request_seconds]
    errors: dict[str, int] = {}
    for user in people:
        for name, count in user.errors.items():
            errors[name] = errors.get(name, 0) + count
    return {
        "rate": len(grant_seconds) / elapsed,
        "grants": len(grant_seconds),
        "errors": errors,
        "still_running": sum(thread.is_alive() for thread in threads),
        "grant_p50_ms": _ms(percentile(grant_seconds, 0.5)),
        "grant_p99_ms": _ms(percentile(grant_seconds, 0.99)),
        "request_p99_ms": _ms(percentile(request_seconds, 0.99)),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def run(scale: Scale) -> dict[str, Any]:
    """Measure grants per second, errors and latency with many users."""
    with start_web_client() as web:
        redirect_uri = f"{web.info['url']}/callback"
        with start_demo(redirect_uri) as demo:
            configure_web_client(web, demo)
            _load_run(web.info["url"], 1, 2, scale.run_time_limit)  # warm-up
            alone = _load_run(
                web.info["url"],
                1,
                scale.web_grants_per_user * 2,
                scale.run_time_limit,
            )
            runs = [
                _load_run(
                    web.info["url"],
                    scale.web_users,
                    scale.web_grants_per_user,
                    scale.run_time_limit,
                )
                for _ in range(scale.web_repeats)
            ]
            warnings = {
                "client application": web.call("counters")["warnings"],
                "demo servers": demo.call("counters")["warnings"],
            }
    return _section(scale, runs, alone, warnings)


def _section(
    scale: Scale,
    runs: list[dict[str, Any]],
    alone: dict[str, Any],
    warnings: dict[str, Any],
) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for result in runs:
        for name, count in result["errors"].items():
            errors[name] = errors.get(name, 0) + count
    rows = [
        row(
            f"client web application, {scale.web_users} users",
            SUBJECT,
            [result["rate"] for result in runs],
            grants=sum(result["grants"] for result in runs),
            errors=errors or None,
            grant_p50_ms=_worst(runs, "grant_p50_ms"),
            grant_p99_ms=_worst(runs, "grant_p99_ms"),
            request_p99_ms=_worst(runs, "request_p99_ms"),
            still_running=sum(result["still_running"] for result in runs),
        ),
        row(
            "client web application, 1 user (no contention)",
            INFO,
            [alone["rate"]],
            grants=alone["grants"],
            errors=alone["errors"] or None,
            grant_p50_ms=alone["grant_p50_ms"],
            grant_p99_ms=alone["grant_p99_ms"],
            request_p99_ms=alone["request_p99_ms"],
            still_running=alone["still_running"],
        ),
    ]
    for item in rows:
        item["ratio_to_peer"] = item["ratio_to_floor"] = None
    total_errors = sum(errors.values())
    return section(
        "web",
        "Web client",
        unit="grants per second",
        higher_is_better=True,
        rows=rows,
        target=make_target(
            "no target; reported: rate, errors and p99 latency",
            None,
            f"{rows[0]['median']:.1f} grants/s, {total_errors} errors, grant p99 "
            f"{_text_ms(rows[0]['extra']['grant_p99_ms'])}, page p99 "
            f"{_text_ms(rows[0]['extra']['request_p99_ms'])}",
        ),
        setup={
            "users": scale.web_users,
            "grants_per_user_per_run": scale.web_grants_per_user,
            "runs": scale.web_repeats,
            "time_limit": f"{scale.run_time_limit:g} s per run",
            "servers": "client application (waitress, 8 threads, SQLite store) "
            "and demo servers (waitress, 8 threads each), one child process each",
        },
        notes=[
            "A grant is six HTTP exchanges: four with the client application "
            "(/authorize, /callback, the index page, /fetch_resource) and two "
            "with the authorization server's approval page and form. The client "
            "application makes two more itself: the token request and the "
            "resource request.",
            "page p99: the 99th percentile of the time to response headers of "
            "the client application's pages; grant p50 and p99: the time of a "
            "whole grant for one user. Each is the worst of the runs.",
            f"Server log warnings: {warnings}.",
        ],
        extra_columns=[
            ("grants", "grants"),
            ("errors", "errors"),
            ("grant_p50_ms", "grant p50 (ms)"),
            ("grant_p99_ms", "grant p99 (ms)"),
            ("request_p99_ms", "page p99 (ms)"),
        ],
    )


def _worst(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [result[key] for result in runs if result[key] is not None]
    return max(values) if values else None


def _text_ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"
