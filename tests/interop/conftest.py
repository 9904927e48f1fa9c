"""Fixtures that run the two independently written authorization servers.

Each server starts once per test session on a free loopback port and stops
at the end. Each test gets its own `OAuthClient` with a SQLite store in its
temporary folder.

- Authlib: the Flask application of `authlib_server.py`, under waitress.
- oidc-provider: `oidc_provider/server.mjs` under node. When its
  `node_modules` folder is missing, `npm ci` installs the locked versions
  first. The tests are skipped only when `node` itself is not installed.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from interop_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    RunningServer,
    UserAgent,
)

from flowengine.adapters.wsgi import BackgroundServer
from flowengine.client import OAuthClient
from flowengine.oauth.config import ClientConfig

NODE_PROJECT = Path(__file__).parent / "oidc_provider"
NPM_CI_TIMEOUT = 300.0
NODE_START_TIMEOUT = 30.0
NODE_STOP_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def authlib_server() -> Iterator[RunningServer]:
    # Imported here so that the oidc-provider tests run without Authlib.
    from authlib_server import ServerSettings, create_app

    settings = ServerSettings(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
    app = create_app(settings)
    server = BackgroundServer(app, name="authlib")
    app.config["ISSUER"] = server.url
    issuer = server.url
    config = ClientConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        issuer=issuer,
        authorization_endpoint=f"{issuer}/authorize",
        token_endpoint=f"{issuer}/token",
        revocation_endpoint=f"{issuer}/revoke",
        resource_url=f"{issuer}/resource",
        resource_method="POST",
        scope="foo bar",
        token_auth_method="client_secret_basic",
        store="memory:",
    )
    with server:
        yield RunningServer("authlib", issuer, config)


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the oidc-provider tests need Node.js")
    _install_node_modules()
    log = tmp_path_factory.mktemp("oidc-provider") / "server.log"
    with log.open("w") as log_file:
        process = _start_node(node, log_file)
        try:
            issuer = _read_issuer(process, log)
            yield RunningServer("oidc-provider", issuer, _oidc_config(issuer))
        finally:
            _stop(process)


def _oidc_config(issuer: str) -> ClientConfig:
    # OpenID Connect Core §11: the provider keeps offline_access, and so
    # issues a refresh token, only when the request carries prompt=consent.
    return ClientConfig(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        issuer=issuer,
        authorization_endpoint=f"{issuer}/auth?prompt=consent",
        token_endpoint=f"{issuer}/token",
        revocation_endpoint=f"{issuer}/token/revocation",
        resource_url=f"{issuer}/me",
        resource_method="GET",
        scope="openid offline_access",
        token_auth_method="client_secret_basic",
        store="memory:",
    )


def _install_node_modules() -> None:
    if (NODE_PROJECT / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            f"{NODE_PROJECT}/node_modules is missing and npm is not installed; "
            f"install npm or run `npm ci --prefix {NODE_PROJECT}`"
        )
    command = [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_PROJECT)]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(command)}` timed out after {NPM_CI_TIMEOUT:.0f} s")
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
            f"{result.stderr[-2000:]}"
        )


def _start_node(node: str, log_file: IO[str]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "FLOWENGINE_CLIENT_ID": CLIENT_ID,
        "FLOWENGINE_CLIENT_SECRET": CLIENT_SECRET,
        "FLOWENGINE_REDIRECT_URI": REDIRECT_URI,
    }
    return subprocess.Popen(
        [node, str(NODE_PROJECT / "server.mjs")],
        cwd=NODE_PROJECT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )


def _read_issuer(process: subprocess.Popen[str], log: Path) -> str:
    """Wait for the JSON line that server.mjs prints once it listens."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = process.stdout
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=NODE_START_TIMEOUT)
    except queue.Empty:
        line = ""
    if not line:
        _stop(process)
        pytest.fail(
            f"oidc-provider did not start within {NODE_START_TIMEOUT:.0f} s "
            f"(exit code {process.returncode}); its output:\n{log.read_text()}"
        )
    issuer = json.loads(line)["issuer"]
    assert isinstance(issuer, str)
    return issuer


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(NODE_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(NODE_STOP_TIMEOUT)
    if process.stdout is not None:
        process.stdout.close()


# --- per-test clients ----------------------------------------------------------


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., OAuthClient]]:
    """Return a function that builds a client for a server, with overrides."""
    clients: list[OAuthClient] = []

    def make(server: RunningServer, **overrides: object) -> OAuthClient:
        store = f"sqlite:///{tmp_path / 'flows.sqlite3'}"
        client = OAuthClient(server.config.replace(store=store, **overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def make_agent() -> Iterator[Callable[[], UserAgent]]:
    """Return a function that opens a fresh browser session."""
    agents: list[UserAgent] = []

    def make() -> UserAgent:
        agent = UserAgent()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.close()
