"""Loopback servers for the benchmarks, each group in its own process.

The demo authorization server and resource run in one child process and the
client web application in another, so that the code under test does not
share an interpreter lock with the servers it talks to. The parent talks to
a child over a pipe. It reads the servers' URLs, requests the demo servers'
request counters and stops the child.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import secrets
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import WarningCounter

START_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0
# The benchmarks never send the browser to the redirect URI of the grant
# benchmarks: approve() returns the redirect instead of following it.
UNUSED_REDIRECT_URI = "http://127.0.0.1:9/callback"


class ChildError(RuntimeError):
    """A server process failed to start or to respond to a command."""


class ServerProcess:
    """A child process that runs servers and responds to commands over a pipe.

    Args:
        target: the child's main function, called with its end of the pipe
            and `options`.
        options: JSON-like settings for the child.
    """

    def __init__(self, target: Any, options: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=target, args=(child_conn, options), daemon=True
        )
        self._process.start()
        child_conn.close()
        self.info: dict[str, Any] = self._receive(START_TIMEOUT)

    def call(self, command: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Send `command` and return the child's reply.

        Raises:
            ChildError: the child reported an error or did not respond in time.
        """
        self._conn.send((command, args))
        return self._receive(timeout)

    def stop(self) -> None:
        """Ask the child to stop its servers, then end it if it does not exit."""
        if self._process.is_alive():
            with contextlib.suppress(ChildError, OSError, EOFError):
                self.call("stop", timeout=15.0)
        self._process.join(15.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
        self._conn.close()

    def _receive(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise ChildError(
                f"server process did not respond within {timeout:g} s; see its "
                "output on stderr"
            )
        status, value = self._conn.recv()
        if status != "ok":
            raise ChildError(f"server process failed: {value}")
        return value

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _LateApp:
    """A WSGI app that forwards to `target`, set once the server's port is known."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


def _quiet_logging() -> WarningCounter:
    counter = WarningCounter()
    root = logging.getLogger()
    root.handlers = [counter]
    root.setLevel(logging.WARNING)
    return counter


# --- the demo authorization server and resource ------------------------------


def start_demo(
    redirect_uri: str = UNUSED_REDIRECT_URI, *, threads: int = 8
) -> ServerProcess:
    """Start the demo authorization server and resource in a child process.

    `info` of the returned process has `issuer`, `resource_url`,
    `client_id`, `client_secret` and `redirect_uri`.
    """
    return ServerProcess(_demo_main, {"redirect_uri": redirect_uri, "threads": threads})


def _demo_main(conn: multiprocessing.connection.Connection, options: Any) -> None:
    from flowengine.adapters.wsgi import BackgroundServer
    from flowengine.demo import (
        DemoDatabase,
        DemoSettings,
        create_authorization_server,
        create_resource_server,
    )

    warnings = _quiet_logging()
    try:
        auth_app, resource_app = _LateApp(), _LateApp()
        threads = int(options["threads"])
        auth = BackgroundServer(auth_app, threads=threads, name="bench auth")
        resource = BackgroundServer(resource_app, threads=threads, name="bench res")
        settings = DemoSettings(
            issuer=auth.url,
            client_secret=secrets.token_urlsafe(24),
            redirect_uris=(options["redirect_uri"],),
        )
        database = DemoDatabase()
        auth_app.target = create_authorization_server(settings, database)
        resource_app.target = create_resource_server(settings, database)
        auth.start()
        resource.start()
    except Exception as exc:  # noqa: BLE001 (sent to the parent)
        conn.send(("error", repr(exc)))
        return

    conn.send(
        (
            "ok",
            {
                "issuer": auth.url,
                "resource_url": f"{resource.url}/resource",
                "client_id": settings.client_id,
                "client_secret": settings.client_secret,
                "redirect_uri": options["redirect_uri"],
            },
        )
    )

    def counters() -> dict[str, Any]:
        return {
            "token_requests": {
                f"{grant}/{outcome}": count
                for (grant, outcome), count in database.token_requests.items()
            },
            "resource_requests": dict(database.resource_requests),
            "warnings": warnings.snapshot(),
        }

    commands = {"counters": counters}
    _serve_commands(conn, commands)
    resource.stop()
    auth.stop()


# --- the client web application -------------------------------------------


def start_web_client(*, threads: int = 8) -> ServerProcess:
    """Start the client web application, not yet configured, in a child process.

    The application's URL is known first, so the demo servers can register
    its callback; `configure` then connects it to them. `info` has `url`.
    """
    return ServerProcess(_web_main, {"threads": threads})


def configure_web_client(web: ServerProcess, demo: ServerProcess) -> None:
    """Point the client web application at the demo servers and start it."""
    web.call("configure", demo.info)


def _web_main(conn: multiprocessing.connection.Connection, options: Any) -> None:
    from flowengine.adapters.wsgi import BackgroundServer

    warnings = _quiet_logging()
    app = _LateApp()
    try:
        server = BackgroundServer(app, threads=int(options["threads"]), name="web")
    except OSError as exc:
        conn.send(("error", repr(exc)))
        return
    conn.send(("ok", {"url": server.url}))
    folder = tempfile.TemporaryDirectory(prefix="flowengine-bench-web-")
    client_holder: list[Any] = []

    def configure(demo: dict[str, Any]) -> dict[str, Any]:
        client = _web_client(demo, server.url, Path(folder.name))
        client_holder.append(client)
        from flowengine.web import create_app

        app.target = create_app(client)
        server.start()
        return {"store": "SQLite file"}

    def counters() -> dict[str, Any]:
        return {"warnings": warnings.snapshot()}

    _serve_commands(conn, {"configure": configure, "counters": counters})
    if client_holder:
        server.stop()
        client_holder[0].close()
    folder.cleanup()


def _web_client(demo: dict[str, Any], url: str, folder: Path) -> Any:
    from flowengine.adapters.sqlite import SQLiteStore
    from flowengine.client import OAuthClient
    from flowengine.oauth.config import ClientConfig

    config = ClientConfig(
        client_id=demo["client_id"],
        client_secret=demo["client_secret"],
        redirect_uri=f"{url}/callback",
        authorization_endpoint=f"{demo['issuer']}/authorize",
        token_endpoint=f"{demo['issuer']}/token",
        resource_url=demo["resource_url"],
        issuer=demo["issuer"],
        store=str(folder / "flows.sqlite3"),
    )
    return OAuthClient(config, store=SQLiteStore(folder / "flows.sqlite3"))


def _serve_commands(
    conn: multiprocessing.connection.Connection, commands: dict[str, Any]
) -> None:
    """Respond to commands until "stop" arrives or the parent goes away."""
    while True:
        try:
            command, args = conn.recv()
        except (EOFError, OSError):
            return
        if command == "stop":
            conn.send(("ok", None))
            return
        handler = commands.get(command)
        if handler is None:
            conn.send(("error", f"unknown command {command!r}"))
            continue
        try:
            conn.send(("ok", handler(*args)))
        except Exception as exc:  # noqa: BLE001 (sent to the parent)
            conn.send(("error", repr(exc)))
