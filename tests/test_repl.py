"""The `flowengine repl` shell and the `Flow` handle.

The scripted sessions run `python -m flowengine.cli repl` as a subprocess,
with commands on standard input, against the demo authorization server and
resource served from this test process on free loopback ports. The flows
live in a SQLite file, so a second process picks up the flow of the first.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowengine.adapters.wsgi import BackgroundServer
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.errors import FlowNotFoundError
from flowengine.flow import Flow, open_flow
from flowengine.oauth.config import ClientConfig
from flowengine.repl import FlowShell

REDIRECT_URI = "http://localhost:9000/callback"
TIMEOUT = 120


# --- servers -----------------------------------------------------------------


class LateApp:
    """A WSGI app that forwards to `target`, set once the server's port is known."""

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.target(environ, start_response)


class TokenRecorder(LateApp):
    """Forwards to the authorization server and keeps every token it issues.

    The tests then check that none of those tokens appears in the shell's
    output, including tokens that a refresh already replaced in the store.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = b"".join(self.target(environ, start_response))
        if environ.get("PATH_INFO") == "/token":
            answer = json.loads(body or b"{}")
            for key in ("access_token", "refresh_token"):
                if key in answer:
                    self.tokens.append(answer[key])
        return [body]


@dataclasses.dataclass
class Servers:
    """The running demo servers and the settings a client needs for them."""

    auth_url: str
    resource_url: str
    client_secret: str
    recorder: TokenRecorder

    def config(self, store: Path) -> ClientConfig:
        return ClientConfig(
            client_secret=self.client_secret,
            redirect_uri=REDIRECT_URI,
            authorization_endpoint=f"{self.auth_url}/authorize",
            token_endpoint=f"{self.auth_url}/token",
            resource_url=f"{self.resource_url}/resource",
            issuer=self.auth_url,
            store=str(store),
        )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    recorder, resource_app = TokenRecorder(), LateApp()
    auth = BackgroundServer(recorder, name="test authorization server")
    resource = BackgroundServer(resource_app, name="test resource")
    client_secret = secrets.token_urlsafe(24)
    settings = DemoSettings(
        issuer=auth.url, client_secret=client_secret, redirect_uris=(REDIRECT_URI,)
    )
    database = DemoDatabase()
    recorder.target = create_authorization_server(settings, database)
    resource_app.target = create_resource_server(settings, database)
    with auth, resource:
        yield Servers(auth.url, resource.url, client_secret, recorder)


# --- running the shell ---------------------------------------------------------


@dataclasses.dataclass
class Session:
    """One finished `flowengine repl` process."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_repl(
    script: str,
    *options: str,
    env: dict[str, str] | None = None,
) -> Session:
    result = subprocess.run(
        [sys.executable, "-m", "flowengine.cli", "repl", *options],
        input=textwrap.dedent(script),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env=env,
    )
    return Session(result.returncode, result.stdout, result.stderr)


def server_options(servers: Servers, tmp_path: Path) -> list[str]:
    """Return the command-line options of a shell that talks to `servers`.

    The client secret and the issuer come from a configuration file and the
    rest from options, so both ways of configuring the shell are used.
    """
    config = tmp_path / "client.yaml"
    config.write_text(
        f"client_secret: {servers.client_secret}\n"
        f"issuer: {servers.auth_url}\n"
        f"redirect_uri: {REDIRECT_URI}\n",
        encoding="utf-8",
    )
    return [
        "--config",
        str(config),
        "--store",
        str(tmp_path / "flows.sqlite3"),
        "--authorization-endpoint",
        f"{servers.auth_url}/authorize",
        "--token-endpoint",
        f"{servers.auth_url}/token",
        "--resource-url",
        f"{servers.resource_url}/resource",
    ]


def local_shell(tmp_path: Path) -> tuple[FlowShell, io.StringIO, io.StringIO]:
    """Return a shell in this process over a SQLite store, and its outputs.

    Without servers, it can run every command that sends no request.
    """
    client = OAuthClient(ClientConfig(store=str(tmp_path / "local.sqlite3")))
    stdout, stderr = io.StringIO(), io.StringIO()
    shell = FlowShell(client, stdin=io.StringIO(""), stdout=stdout, stderr=stderr)
    return shell, stdout, stderr


def lines_after(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def flat(text: str) -> str:
    """Return `text` with every run of whitespace made one space."""
    return " ".join(text.split())


# --- a whole grant across two processes ------------------------------------------


@dataclasses.dataclass
class Grant:
    """The two sessions of a scripted grant and the values they handled."""

    first: Session
    second: Session
    flow_id: str
    authorization_url: str
    callback_url: str
    options: list[str]
    tokens: list[str]


@pytest.fixture(scope="module")
def grant(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Grant:
    options = server_options(servers, tmp_path_factory.mktemp("grant"))
    issued_before = len(servers.recorder.tokens)
    first = run_repl(
        """\
        # A comment line and a blank line are skipped.

        new
        authorize
        show
        quit
        """,
        *options,
    )
    assert first.returncode == 0, first.stderr
    (created,) = lines_after(first.stdout, "created flow ")
    flow_id = created.split()[2].rstrip(";")
    (url,) = lines_after(first.stdout, servers.auth_url)

    with requests.Session() as browser:
        browser.trust_env = False
        callback_url = approve(browser, url)

    second = run_repl(
        f"""\
        use {flow_id}
        callback {callback_url}
        fetch
        refresh
        fetch
        history
        quit
        """,
        *options,
    )
    tokens = servers.recorder.tokens[issued_before:]
    return Grant(first, second, flow_id, url, callback_url, options, tokens)


def test_first_session_prints_authorization_url(grant: Grant, servers: Servers) -> None:
    parts = urllib.parse.urlsplit(grant.authorization_url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == servers.auth_url
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["code_challenge_method"] == "S256"


def test_first_session_shows_guards_of_valid_triggers(grant: Grant) -> None:
    assert "state          awaiting_callback" in grant.first.stdout
    assert (
        "receive_code → code_received  if callback_state_matches and "
        "callback_has_code" in grant.first.stdout
    )


def test_second_session_exits_zero(grant: Grant) -> None:
    assert grant.second.returncode == 0, grant.second.stderr
    assert grant.second.stderr == ""


def test_second_session_fetches_resource_twice(grant: Grant) -> None:
    assert grant.second.stdout.count('"name": "Protected Resource"') == 2


def test_second_session_prints_each_transition(grant: Grant) -> None:
    transitions = [
        line.strip()
        for line in grant.second.stdout.splitlines()
        if line.startswith("  ") and "→" in line and line.endswith(")")
    ]
    assert transitions == [
        "awaiting_callback → code_received  (receive_code)",
        "code_received → token_held  (receive_token)",
        "token_held → expired  (expire)",
        "expired → refreshing  (refresh)",
        "refreshing → token_held  (receive_token)",
    ]


def test_history_lists_both_sessions(grant: Grant) -> None:
    table = grant.second.stdout.split(" seq  time (UTC)", 1)[1]
    rows = [line.split() for line in table.splitlines()[1:]]
    triggers = [row[3] for row in rows]
    assert triggers == [
        "create",
        "start",
        "receive_code",
        "receive_token",
        "expire",
        "refresh",
        "receive_token",
    ]


def test_flow_survives_in_sqlite(grant: Grant) -> None:
    third = run_repl(f"use {grant.flow_id[:10]}\nshow\n", *grant.options)
    assert third.returncode == 0, third.stderr
    assert "state          token_held" in third.stdout
    assert "refresh token  held" in third.stdout


def test_output_holds_no_token(grant: Grant) -> None:
    # Two token responses, each with both tokens: the code exchange and the
    # refresh.
    assert len(grant.tokens) == 4
    for session in (grant.first, grant.second):
        for token in grant.tokens:
            assert token not in session.output


def test_output_holds_no_code_or_client_secret(grant: Grant, servers: Servers) -> None:
    query = urllib.parse.urlsplit(grant.callback_url).query
    code = dict(urllib.parse.parse_qsl(query))["code"]
    for session in (grant.first, grant.second):
        assert code not in session.output
        assert servers.client_secret not in session.output


def test_callback_session_does_not_echo_state(grant: Grant) -> None:
    query = urllib.parse.urlsplit(grant.callback_url).query
    state = dict(urllib.parse.parse_qsl(query))["state"]
    assert state not in grant.second.output


def test_token_is_shown_abbreviated(grant: Grant) -> None:
    last_access_token = grant.tokens[2]
    assert f"access token {last_access_token[:4]}…" in grant.second.stdout


# --- failing commands ----------------------------------------------------------


def test_invalid_trigger_lists_valid_ones(tmp_path: Path) -> None:
    session = run_repl(
        "new\nfire receive_token\nshow\n", "--store", str(tmp_path / "f.sqlite3")
    )
    assert session.returncode == 1
    assert "cannot fire 'receive_token'" in session.stderr
    assert "in state 'unauthorized'; valid triggers there: start" in session.stderr
    assert "Traceback" not in session.output


def test_failed_command_does_not_stop_script(tmp_path: Path) -> None:
    session = run_repl(
        "new\nfire receive_token\nshow\n", "--store", str(tmp_path / "f.sqlite3")
    )
    assert "state          unauthorized" in session.stdout


def test_exit_on_error_stops_script(tmp_path: Path) -> None:
    session = run_repl(
        "new\nfire expire\nshow\n",
        "--exit-on-error",
        "--store",
        str(tmp_path / "f.sqlite3"),
    )
    assert session.returncode == 1
    assert "state          " not in session.stdout


def test_unknown_command_is_readable_error(tmp_path: Path) -> None:
    session = run_repl("frobnicate now\n", "--store", str(tmp_path / "f.sqlite3"))
    assert session.returncode == 1
    assert session.stderr == (
        "error: unknown command 'frobnicate'; type help to list commands\n"
    )


def test_pasted_callback_url_is_not_echoed(tmp_path: Path) -> None:
    code = secrets.token_urlsafe(16)
    session = run_repl(
        f"{REDIRECT_URI}?code={code}&state=x\nnew\nfire receive_code {code}\n",
        "--store",
        str(tmp_path / "f.sqlite3"),
    )
    assert session.returncode == 1
    assert "type: callback URL" in session.stderr
    assert "is not of the form key=value" in session.stderr
    assert code not in session.output


def test_wrong_callback_state_names_flow_state(
    servers: Servers, tmp_path: Path
) -> None:
    code = secrets.token_urlsafe(16)
    session = run_repl(
        f"new\nauthorize\ncallback {REDIRECT_URI}?code={code}&state=forged\n",
        *server_options(servers, tmp_path),
    )
    assert session.returncode == 1
    (error,) = session.stderr.splitlines()
    assert "does not match" in error
    assert "is in state 'awaiting_callback'; valid triggers: start" in error
    assert code not in session.output


def test_command_without_flow_says_how_to_get_one(tmp_path: Path) -> None:
    session = run_repl("fetch\n", "--store", str(tmp_path / "f.sqlite3"))
    assert session.returncode == 1
    assert "no current flow; create one with: new" in session.stderr


def test_use_of_unknown_flow_fails(tmp_path: Path) -> None:
    session = run_repl("use nosuchflow\n", "--store", str(tmp_path / "f.sqlite3"))
    assert session.returncode == 1
    assert "flow 'nosuchflow' not found" in session.stderr


def test_script_without_failure_exits_zero(tmp_path: Path) -> None:
    session = run_repl(
        "new one\nfire start scope=foo\nfire logout\nflows\nhistory\n",
        "--store",
        str(tmp_path / "f.sqlite3"),
    )
    assert session.returncode == 0, session.stderr
    assert "* one  unauthorized" in session.stdout


def test_script_prints_no_prompt(tmp_path: Path) -> None:
    session = run_repl("flows\n", "--store", str(tmp_path / "f.sqlite3"))
    assert session.stdout == "no flows stored; create one with: new\n"


def test_cli_help_lists_repl() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowengine.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert "repl" in result.stdout


# --- opening a browser -----------------------------------------------------------


def browser_env(tmp_path: Path, exit_status: int) -> tuple[dict[str, str], Path]:
    """Return an environment whose only web browser is a script, and its log.

    The script writes the URL it is given to the log and exits with
    `exit_status`.
    """
    log = tmp_path / "opened.txt"
    script = tmp_path / "browser.py"
    script.write_text(
        "import sys\n"
        f"open({str(log)!r}, 'w').write(sys.argv[1])\n"
        f"sys.exit({exit_status})\n",
        encoding="utf-8",
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DISPLAY", "WAYLAND_DISPLAY", "TERM")
    }
    env["BROWSER"] = f"{sys.executable} {script} %s"
    return env, log


def test_authorize_open_starts_browser(tmp_path: Path) -> None:
    env, log = browser_env(tmp_path, exit_status=0)
    session = run_repl(
        "authorize --open\n", "--store", str(tmp_path / "f.sqlite3"), env=env
    )
    assert session.returncode == 0, session.stderr
    (url,) = lines_after(session.stdout, "http://localhost:9001/authorize?")
    assert log.read_text(encoding="utf-8") == url


def test_authorize_open_without_browser_fails(tmp_path: Path) -> None:
    env, _ = browser_env(tmp_path, exit_status=1)
    session = run_repl(
        "authorize --open\n", "--store", str(tmp_path / "f.sqlite3"), env=env
    )
    assert session.returncode == 1
    assert "no web browser could be started" in session.stderr


# --- at a terminal -----------------------------------------------------------------


def read_until(fd: int, marker: bytes, limit: float = 60.0) -> bytes:
    """Read from `fd` until `marker` arrives; fail after `limit` seconds."""
    received = b""
    while marker not in received:
        ready, _, _ = select.select([fd], [], [], limit)
        assert ready, f"no {marker!r} from the shell; it wrote {received!r}"
        received += os.read(fd, 4096)
    return received


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_terminal_session_completes_with_tab(tmp_path: Path) -> None:
    pytest.importorskip("readline")
    controller, terminal = pty.openpty()
    shell = subprocess.Popen(
        [sys.executable, "-m", "flowengine.cli", "repl"]
        + ["--store", str(tmp_path / "f.sqlite3")],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    try:
        read_until(controller, b"flowengine> ")
        os.write(controller, b"ne\t\r")
        created = read_until(controller, b"unauthorized]> ")
        os.write(controller, b"fire s\t\r")
        fired = read_until(controller, b"awaiting_callback]> ")
        os.write(controller, b"quit\r")
        status = shell.wait(TIMEOUT)
    finally:
        shell.kill()
        os.close(controller)
    assert b"created flow " in created
    assert b"unauthorized \xe2\x86\x92 awaiting_callback  (start)" in fired
    assert status == 0


# --- completion and help, in this process ------------------------------------------


def test_complete_fire_offers_valid_triggers(tmp_path: Path) -> None:
    shell, _, _ = local_shell(tmp_path)
    shell.onecmd("new")
    assert shell.complete_fire("", "fire ", 5, 5) == ["start"]
    shell.onecmd("fire start")
    assert shell.complete_fire("re", "fire re", 5, 7) == [
        "receive_code",
        "receive_error",
    ]


def test_complete_fire_only_first_argument(tmp_path: Path) -> None:
    shell, _, _ = local_shell(tmp_path)
    shell.onecmd("new")
    assert shell.complete_fire("s", "fire start s", 11, 12) == []


def test_complete_fire_without_flow_offers_all(tmp_path: Path) -> None:
    shell, _, _ = local_shell(tmp_path)
    offered = shell.complete_fire("", "fire ", 5, 5)
    assert offered == list(shell.client.definition.triggers)


def test_complete_use_offers_flow_ids(tmp_path: Path) -> None:
    shell, _, _ = local_shell(tmp_path)
    for flow_id in ("alpha1", "alpha2", "beta"):
        shell.onecmd(f"new {flow_id}")
    assert sorted(shell.complete_use("al", "use al", 4, 6)) == ["alpha1", "alpha2"]


def test_use_accepts_unique_prefix(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    for flow_id in ("alpha1", "alpha2", "beta"):
        shell.onecmd(f"new {flow_id}")
    shell.onecmd("use be")
    assert shell.flow is not None
    assert shell.flow.flow_id == "beta"


def test_use_rejects_ambiguous_prefix(tmp_path: Path) -> None:
    shell, _, stderr = local_shell(tmp_path)
    for flow_id in ("alpha1", "alpha2"):
        shell.onecmd(f"new {flow_id}")
    shell.onecmd("use al")
    assert "2 flow ids start with 'al'" in stderr.getvalue()
    assert shell.failures == 1


def test_command_completion_hides_eof(tmp_path: Path) -> None:
    shell, _, _ = local_shell(tmp_path)
    names = shell.completenames("")
    assert "EOF" not in names
    assert {"fire", "callback", "status", "quit"} <= set(names)


def test_help_of_trigger_reads_definition(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    shell.onecmd("help receive_code")
    (spec,) = [
        t for t in shell.client.definition.transitions if t.trigger == "receive_code"
    ]
    assert flat(spec.description) in flat(stdout.getvalue())
    assert "guards:  callback_state_matches, callback_has_code" in stdout.getvalue()


def test_help_overview_lists_commands(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    shell.onecmd("help")
    for usage in ("fire TRIGGER [key=value ...]", "callback URL", "use FLOW_ID"):
        assert f"  {usage}" in stdout.getvalue()


def test_triggers_show_descriptions(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    shell.onecmd("triggers token_held")
    (spec,) = [t for t in shell.client.definition.transitions if t.trigger == "expire"]
    assert "  expire → expired" in stdout.getvalue()
    assert flat(spec.description) in flat(stdout.getvalue())


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    shell.onecmd("new '\x1b[2Jred'")
    assert "\x1b" not in stdout.getvalue()
    assert "created flow \\x1b[2Jred" in stdout.getvalue()


def test_diagram_marks_current_state(tmp_path: Path) -> None:
    shell, stdout, _ = local_shell(tmp_path)
    shell.onecmd("new")
    shell.onecmd("fire start")
    shell.onecmd("diagram")
    assert "Class awaiting_callback s_active" in stdout.getvalue()


# --- the Flow handle ----------------------------------------------------------------


def secrets_of(client: OAuthClient, flow_id: str) -> Iterable[str]:
    data = client.store.load(flow_id).data
    keys = ("state", "code_verifier", "code", "access_token", "refresh_token")
    return [str(data[key]) for key in keys if data.get(key)]


def test_flow_repr_shows_state_without_secret(servers: Servers, tmp_path: Path) -> None:
    client = OAuthClient(servers.config(tmp_path / "flows.sqlite3"))
    flow = Flow.create(client)
    url = flow.start()
    pending_repr = repr(flow)
    pending_secrets = list(secrets_of(client, flow.flow_id))
    with requests.Session() as browser:
        browser.trust_env = False
        flow.callback(approve(browser, url))
    held_repr = repr(flow)
    held_secrets = list(secrets_of(client, flow.flow_id))
    client.close()

    assert pending_repr == (
        f"Flow(id={flow.flow_id!r}, state='awaiting_callback', valid_triggers="
        "('start', 'receive_code', 'receive_error', 'abandon', 'logout'))"
    )
    assert held_repr == (
        f"Flow(id={flow.flow_id!r}, state='token_held', "
        "valid_triggers=('expire', 'logout'))"
    )
    assert len(pending_secrets) == 2
    assert len(held_secrets) == 2
    for secret in pending_secrets + held_secrets:
        assert secret not in pending_repr
        assert secret not in held_repr


def test_flow_fetch_returns_resource(servers: Servers, tmp_path: Path) -> None:
    client = OAuthClient(servers.config(tmp_path / "flows.sqlite3"))
    flow = Flow.create(client)
    with requests.Session() as browser:
        browser.trust_env = False
        flow.callback(approve(browser, flow.start()))
    data = flow.fetch().json()
    flow.refresh()
    triggers = [event.trigger for event in flow.events()]
    client.close()
    assert data["name"] == "Protected Resource"
    assert triggers[-3:] == ["expire", "refresh", "receive_token"]


def test_flow_repr_of_missing_flow(tmp_path: Path) -> None:
    client = OAuthClient(ClientConfig(store=str(tmp_path / "f.sqlite3")))
    assert repr(Flow(client, "gone")) == (
        "Flow(id='gone', state=<unreadable: FlowNotFoundError>)"
    )


def test_open_flow_of_unknown_id_raises(tmp_path: Path) -> None:
    client = OAuthClient(ClientConfig(store=str(tmp_path / "f.sqlite3")))
    with pytest.raises(FlowNotFoundError):
        open_flow(client, "gone")


def test_open_flow_returns_equal_handle(tmp_path: Path) -> None:
    client = OAuthClient(ClientConfig(store=str(tmp_path / "f.sqlite3")))
    flow = Flow.create(client, "mine")
    assert open_flow(client, "mine") == flow
    assert open_flow(client, "mine").state == "unauthorized"
