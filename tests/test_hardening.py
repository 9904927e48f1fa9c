"""Tests of limits against misbehaving servers and malformed input.

HTTP cases run HttpClient against scripted loopback servers from hostile.py
and a real waitress server. The others feed the parsers, the configuration
loader and the definition loader values a careless or hostile source could
send: trickled headers, huge lifetimes, control characters, NaN, redirects.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from hostile import Exchange, ScriptedServer, refused_port, response_bytes
from test_security import TLSScriptedServer, write_self_signed_certificate

from flowengine.adapters.http import HttpClient
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.definition import parse_definition
from flowengine.errors import (
    ConfigError,
    DefinitionError,
    ProtocolError,
    TransportError,
)
from flowengine.oauth.config import ClientConfig, load_config
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.oauth.protocol import (
    MAX_TOKEN_LIFETIME,
    TokenSet,
    parse_callback,
    parse_expires_in,
    parse_token_response,
)

REQUESTED_AT = 1_700_000_000.0
CLIENT_SECRET = "hardening-secret-8c1f2e"

# A generous bound that only a client which ignores its deadline exceeds.
HANG_LIMIT_SECONDS = 10.0

# Every byte of a trickled response arrives well within this read timeout.
READ_TIMEOUT = 0.5
TRICKLE_INTERVAL = 0.2


# --- scripted peers ----------------------------------------------------------


def trickle(exchange: Exchange, data: bytes) -> None:
    """Send `data` one byte every TRICKLE_INTERVAL until the server stops."""
    for byte in data:
        exchange.send(bytes([byte]))
        if exchange.stopped.wait(TRICKLE_INTERVAL):
            return


# Sent whole, this head is a valid 200 response. Trickled, it takes about
# 25 s, far longer than the 1 s deadline of an exchange under test.
TRICKLED_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + b"X-Padding: "
    + b"y" * 40
    + b"\r\nContent-Length: 2\r\n\r\n{}"
)


def trickle_headers(exchange: Exchange) -> None:
    trickle(exchange, TRICKLED_HEAD)


def reset_connection(exchange: Exchange) -> None:
    """Read the request, then reset the connection (RST instead of FIN)."""
    linger = struct.pack("ii", 1, 0)
    exchange.conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    exchange.conn.close()


def close_without_response(exchange: Exchange) -> None:
    """Read the request and close the connection without a byte."""


def send_bytes(data: bytes) -> Callable[[Exchange], None]:
    def script(exchange: Exchange) -> None:
        exchange.send(data)

    return script


def read_next_request(conn: socket.socket) -> bytes:
    """Read one more request head (bodyless) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def remote_port_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Reply with the client's source port, which names its TCP connection."""
    body = json.dumps({"port": environ["REMOTE_PORT"]}).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


# --- one deadline per exchange -----------------------------------------------


def test_trickled_headers_hit_exchange_deadline() -> None:
    with ScriptedServer(trickle_headers) as server:
        http = HttpClient((READ_TIMEOUT, READ_TIMEOUT))

        with pytest.raises(TransportError) as caught:
            http.send(HttpRequest("POST", f"{server.url}/token"))
        hung_up = server.hung_up.wait(HANG_LIMIT_SECONDS)
        http.close()

    assert "timed out after 1 s" in str(caught.value)
    assert caught.value.url == f"{server.url}/token"
    assert hung_up, "the client kept reading the trickled headers"


def test_trickled_headers_over_tls_hit_exchange_deadline(tmp_path: Path) -> None:
    # Each trickled byte goes out as a TLS record of its own.
    certificate, key = write_self_signed_certificate(tmp_path)
    with TLSScriptedServer(trickle_headers, certificate, key) as server:
        session = requests.Session()
        session.verify = str(certificate)
        http = HttpClient((READ_TIMEOUT, READ_TIMEOUT), session=session)

        with pytest.raises(TransportError) as caught:
            http.send(HttpRequest("GET", f"{server.url}/resource"))
        hung_up = server.hung_up.wait(HANG_LIMIT_SECONDS)
        http.close()

    assert "timed out after 1 s" in str(caught.value)
    assert hung_up, "the client kept reading the trickled headers"


def test_kept_alive_connection_is_reused() -> None:
    server = BackgroundServer(remote_port_app, name="keep-alive").start()
    try:
        http = HttpClient((2.0, 5.0))
        first = http.send(HttpRequest("GET", f"{server.url}/a"))
        second = http.send(HttpRequest("GET", f"{server.url}/b"))
        http.close()
    finally:
        server.stop()

    assert first.status == 200
    assert second.status == 200
    assert json.loads(first.body)["port"] == json.loads(second.body)["port"]


def test_deadline_covers_reused_connection() -> None:
    second_requests: list[bytes] = []

    def keep_alive_then_trickle(exchange: Exchange) -> None:
        body = b'{"n": 1}'
        exchange.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        second_requests.append(read_next_request(exchange.conn))
        trickle(exchange, TRICKLED_HEAD)

    with ScriptedServer(keep_alive_then_trickle) as server:
        http = HttpClient((READ_TIMEOUT, READ_TIMEOUT))
        first = http.send(HttpRequest("GET", f"{server.url}/first"))

        with pytest.raises(TransportError) as caught:
            http.send(HttpRequest("GET", f"{server.url}/second"))
        hung_up = server.hung_up.wait(HANG_LIMIT_SECONDS)
        http.close()
        connections = len(server.requests)

    assert first.body == b'{"n": 1}'
    assert connections == 1
    assert second_requests[0].startswith(b"GET /second ")
    assert "timed out after 1 s" in str(caught.value)
    assert hung_up, "the client kept reading the trickled headers"


def test_connection_cut_by_deadline_is_not_reused() -> None:
    connections: list[int] = []

    def trickle_first_connection(exchange: Exchange) -> None:
        connections.append(1)
        if len(connections) == 1:
            trickle(exchange, TRICKLED_HEAD)
        else:
            exchange.send(response_bytes(200, b'{"ok": true}'))

    with ScriptedServer(trickle_first_connection) as server:
        http = HttpClient((READ_TIMEOUT, READ_TIMEOUT))
        with pytest.raises(TransportError):
            http.send(HttpRequest("GET", f"{server.url}/slow"))
        answer = http.send(HttpRequest("GET", f"{server.url}/again"))
        http.close()

    assert answer.status == 200
    assert answer.body == b'{"ok": true}'
    assert len(connections) == 2


@pytest.mark.parametrize(
    "timeout",
    [(float("nan"), 1.0), (1.0, float("inf")), (0.0, 1.0), (1.0, 1e300), (10**400, 1)],
    ids=["nan", "inf", "zero", "beyond_platform_wait", "huge_integer"],
)
def test_http_client_rejects_unusable_timeouts(timeout: tuple[float, float]) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        HttpClient(timeout)


# --- transport errors name their cause ---------------------------------------

TRANSPORT_FAILURES: dict[str, tuple[Callable[[Exchange], None], str]] = {
    "reset": (reset_connection, "connection reset"),
    "closed": (
        close_without_response,
        "the server closed the connection without a response",
    ),
    "not_http": (
        send_bytes(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        "invalid response: the status line is not HTTP",
    ),
    "header_line_too_long": (
        send_bytes(b"HTTP/1.1 200 OK\r\nX: " + b"y" * (2 << 20) + b"\r\n\r\n"),
        "invalid response: a line of the response is too long",
    ),
    "too_many_headers": (
        send_bytes(
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200))
            + b"\r\n"
        ),
        "invalid response: too many header lines",
    ),
}


@pytest.mark.parametrize("case", sorted(TRANSPORT_FAILURES))
def test_transport_error_names_cause(case: str) -> None:
    script, cause = TRANSPORT_FAILURES[case]
    with ScriptedServer(script) as server:
        http = HttpClient((2.0, 2.0))
        url = f"{server.url}/token?client_secret={CLIENT_SECRET}"

        with pytest.raises(TransportError) as caught:
            http.send(HttpRequest("POST", url))
        http.close()

    message = str(caught.value)
    assert cause in message
    assert CLIENT_SECRET not in message


def test_refused_connection_is_named() -> None:
    with refused_port() as port:
        http = HttpClient((2.0, 2.0))
        url = f"http://127.0.0.1:{port}/token?client_secret={CLIENT_SECRET}"

        with pytest.raises(TransportError) as caught:
            http.send(HttpRequest("POST", url))
        http.close()

    message = str(caught.value)
    assert "failed: connection refused" in message
    assert CLIENT_SECRET not in message
    assert CLIENT_SECRET not in caught.value.url


# --- token responses ---------------------------------------------------------


def token_response(fields: dict[str, object], status: int = 200) -> HttpResponse:
    body = json.dumps(fields).encode()
    return HttpResponse(status, {"Content-Type": "application/json"}, body)


def bearer(**extra: object) -> dict[str, object]:
    return {"access_token": "at-0123456789abcdef", "token_type": "Bearer", **extra}


@pytest.mark.parametrize(
    "value",
    [1e308, MAX_TOKEN_LIFETIME + 1, "1e308", 10**15],
    ids=["1e308", "ten_years_and_a_second", "string_1e308", "10**15"],
)
def test_expires_in_beyond_ten_years_is_unknown(value: object) -> None:
    assert parse_expires_in(value) is None


def test_expires_in_of_ten_years_is_kept() -> None:
    assert parse_expires_in(MAX_TOKEN_LIFETIME) == MAX_TOKEN_LIFETIME


def test_token_with_huge_expires_in_has_no_expiry() -> None:
    token = parse_token_response(token_response(bearer(expires_in=1e308)), 0.0)

    assert token.expires_at is None


@pytest.mark.parametrize(
    "refresh_token",
    ["rt-line\r\nX-Injected: 1", "rt-\n", "rt-\x00nul", "rt-\x1b[31m", "rt-é"],
    ids=["crlf", "lf", "nul", "esc", "non_ascii"],
)
def test_refresh_token_outside_printable_ascii_is_rejected(
    refresh_token: str,
) -> None:
    response = token_response(bearer(refresh_token=refresh_token))

    with pytest.raises(ProtocolError, match="refresh_token") as caught:
        parse_token_response(response, REQUESTED_AT)

    assert refresh_token not in str(caught.value)


def test_refresh_token_of_printable_ascii_is_kept() -> None:
    # RFC 6749 §A.17 allows a space in a refresh token.
    value = "rt with ~printable! ASCII"

    token = parse_token_response(token_response(bearer(refresh_token=value)), 0.0)

    assert token.refresh_token == value


@pytest.mark.parametrize(
    "scope",
    ["read\x1b[2Jwrite", "read\r\nwrite", "read\x00", 'say "hi"', "back\\slash"],
    ids=["esc", "crlf", "nul", "quote", "backslash"],
)
def test_scope_outside_rfc_characters_is_rejected(scope: str) -> None:
    response = token_response(bearer(scope=scope))

    with pytest.raises(ProtocolError, match="scope") as caught:
        parse_token_response(response, REQUESTED_AT)

    message = str(caught.value)
    assert "\x1b" not in message
    assert "\r" not in message
    assert "\x00" not in message


def test_refresh_with_invalid_scope_is_rejected() -> None:
    previous = TokenSet("old-at", "Bearer", None, "old-rt", "read write")
    response = token_response(bearer(scope="read\nwrite"))

    with pytest.raises(ProtocolError, match="scope"):
        parse_token_response(response, REQUESTED_AT, previous)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_token_endpoint_redirect_names_location(status: int) -> None:
    location = f"https://as.example.com/oauth/token?client_secret={CLIENT_SECRET}"
    response = HttpResponse(
        status, {"Location": location, "Content-Type": "text/html"}, b"<a>moved</a>"
    )

    with pytest.raises(ProtocolError) as caught:
        parse_token_response(response, REQUESTED_AT)

    message = str(caught.value)
    assert f"token endpoint redirected (HTTP {status}) to" in message
    assert "https://as.example.com/oauth/token" in message
    assert "configure the final token endpoint URL" in message
    assert CLIENT_SECRET not in message
    assert caught.value.status == status


def test_token_endpoint_redirect_without_location() -> None:
    response = HttpResponse(302, {}, b"")

    with pytest.raises(ProtocolError, match="no Location header"):
        parse_token_response(response, REQUESTED_AT)


# --- callbacks ---------------------------------------------------------------


def test_callback_with_51_parameters_is_rejected() -> None:
    extra = "&".join(f"p{i}=v" for i in range(49))

    with pytest.raises(ProtocolError, match="more than 50 parameters"):
        parse_callback(f"code=c&state=s&{extra}")


def test_callback_with_50_parameters_is_parsed() -> None:
    extra = "&".join(f"p{i}=v" for i in range(48))

    callback = parse_callback(f"code=c&state=s&{extra}")

    assert (callback.code, callback.state) == ("c", "s")


def test_callback_with_non_utf8_escape_says_so() -> None:
    with pytest.raises(ProtocolError, match="percent-escape that is not UTF-8"):
        parse_callback("code=%FF&state=s")


# --- configuration -----------------------------------------------------------

NUMERIC_FIELDS = (
    "connect_timeout",
    "read_timeout",
    "expiry_leeway",
    "pending_lifetime",
    "refresh_lease",
    "audit_retention",
)


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_number_in_yaml_is_rejected(
    tmp_path: Path, field: str, value: str
) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(f"store: 'memory:'\n{field}: {value}\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    message = str(caught.value)
    assert field in message
    assert "finite number of seconds" in message


def test_integer_too_large_for_float_is_rejected() -> None:
    with pytest.raises(ConfigError, match="read_timeout must be a finite number"):
        ClientConfig(store="memory:", read_timeout=10**400)


def test_numeric_client_id_in_yaml_says_text(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("store: 'memory:'\nclient_id: 123\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="client_id must be text, not 123"):
        load_config(path)


def test_numeric_client_secret_is_not_shown(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("store: 'memory:'\nclient_secret: 987654321\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="client_secret must be text") as caught:
        load_config(path)

    assert "987654321" not in str(caught.value)


# --- flow definitions --------------------------------------------------------

DEFINITION = """\
name: door
initial: closed
states:
  closed: {}
  open: {}
transitions:
  - trigger: open
    source: SOURCES
    dest: open
"""


@pytest.mark.parametrize(
    "text",
    [
        "? [a, b]\n: 1\n",
        DEFINITION.replace("states:\n", "states:\n  ? {x: 1}\n  : {}\n"),
        DEFINITION.replace("dest: open\n", "dest: open\n    ? [a]\n    : b\n"),
        "? !!set {a, b}\n: 1\n",
    ],
    ids=["top_level_list_key", "mapping_key_in_states", "list_key_in_row", "set_key"],
)
def test_collection_as_mapping_key_is_definition_error(text: str) -> None:
    with pytest.raises(DefinitionError, match="used as a key"):
        parse_definition(text.replace("SOURCES", "closed"))


def test_long_source_list_with_duplicate_is_rejected_quickly() -> None:
    # Counting each name by scanning the list took minutes for this list.
    names = ", ".join(["closed", *(f"s{i}" for i in range(100_000)), "closed"])
    started = time.monotonic()

    with pytest.raises(DefinitionError, match="closed listed twice"):
        parse_definition(DEFINITION.replace("SOURCES", f"[{names}]"))

    assert time.monotonic() - started < 30.0
