"""Two client web processes sharing one store: a grant may start on one and
its callback land on the other, as behind a load balancer."""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hostile import free_port
from test_stores import SHARED_KINDS, Backend, backend_for

from flowengine.adapters.wsgi import BackgroundServer
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)


@pytest.fixture(params=SHARED_KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with backend_for(request.param, tmp_path) as chosen:
        yield chosen


@contextlib.contextmanager
def client_worker(
    port: int,
    backend: Backend,
    secret_key: str,
    auth_url: str,
    resource_url: str,
    redirect_uri: str,
) -> Iterator[str]:
    """Run `flowengine serve` in its own process and yield its base URL.

    Both workers name the second one's callback, as one public redirect URI
    behind a load balancer would reach either of them.
    """
    command = [
        sys.executable,
        "-m",
        "flowengine.cli",
        "serve",
        "--port",
        str(port),
        "--secret-key",
        secret_key,
        "--store",
        backend.location,
        "--authorization-endpoint",
        f"{auth_url}/authorize",
        "--token-endpoint",
        f"{auth_url}/token",
        "--resource-url",
        resource_url,
        "--redirect-uri",
        redirect_uri,
    ]
    process = subprocess.Popen(  # noqa: S603
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_until_listening(base: str, process: subprocess.Popen[str]) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise AssertionError(f"worker exited: {process.stderr.read()}")  # type: ignore[union-attr]
        with contextlib.suppress(requests.ConnectionError):
            requests.get(f"{base}/", timeout=2)
            return
        time.sleep(0.1)
    raise AssertionError(f"worker at {base} did not start")


def test_callback_lands_on_other_worker(backend: Backend) -> None:
    first_port, second_port, auth_port = free_port(), free_port(), free_port()
    redirect_uri = f"http://127.0.0.1:{second_port}/callback"
    auth_url = f"http://127.0.0.1:{auth_port}"
    database = DemoDatabase()
    settings = DemoSettings(issuer=auth_url, redirect_uris=(redirect_uri,))
    auth = BackgroundServer(
        create_authorization_server(settings, database), port=auth_port
    )
    resource = BackgroundServer(create_resource_server(settings, database))
    key = secrets.token_urlsafe(32)

    with auth, resource, contextlib.ExitStack() as workers:
        options = (backend, key, auth_url, f"{resource.url}/resource", redirect_uri)
        first = workers.enter_context(client_worker(first_port, *options))
        second = workers.enter_context(client_worker(second_port, *options))
        with requests.Session() as browser:
            browser.trust_env = False
            approval = browser.get(f"{first}/authorize", timeout=10)
            reqid = re.search(r'name="reqid" value="([^"]+)"', approval.text)
            assert reqid is not None, approval.text
            form = {"reqid": reqid.group(1), "scope_foo": "on", "approve": "approve"}
            landed = browser.post(f"{auth_url}/approve", data=form, timeout=10)

            assert landed.url.startswith(second)
            assert landed.status_code == 200, landed.text
            assert "token_held" in landed.text
            page = browser.get(f"{first}/", timeout=10)
            assert "token_held" in page.text
