"""Scripted HTTP peers on loopback that misbehave on purpose.

`ScriptedServer` accepts TCP connections on 127.0.0.1 and hands each one to
a script, a function that reads the request and writes whatever bytes it
likes: a malformed response, half a body, or nothing at all. The tests use
it where a well-behaved WSGI server cannot misbehave in the required way.

Every wait inside a script ends when the server stops, so no test leaves a
thread or a socket behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping

# Bounds every wait of a script, so that a test whose client never hangs up
# still finishes.
MAX_STALL_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class ReceivedRequest:
    """One request as the scripted server read it off the wire."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class Exchange:
    """One accepted connection, handed to a script.

    `request` is read before the script runs. `stopped` is set when the
    server stops; scripts wait on it instead of sleeping.
    """

    def __init__(
        self, conn: socket.socket, request: ReceivedRequest, stopped: threading.Event
    ) -> None:
        self.conn = conn
        self.request = request
        self.stopped = stopped

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def stall(self, seconds: float = MAX_STALL_SECONDS) -> None:
        """Wait without sending anything until the server stops or `seconds` pass."""
        self.stopped.wait(seconds)


Script = Callable[[Exchange], None]


class ScriptedServer:
    """A TCP server on a free loopback port that runs `script` per connection.

    Use it as a context manager. `requests` lists what every connection sent.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[ReceivedRequest] = []
        # Set when a client closed its connection while a script still wrote.
        self.hung_up = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ScriptedServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for thread in threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._connections.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(MAX_STALL_SECONDS)
        try:
            request = _read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            self.script(Exchange(conn, request, self._stopped))
        except OSError:
            # The client hung up first, which several tests provoke.
            self.hung_up.set()
            return
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)


def _read_request(conn: socket.socket) -> ReceivedRequest | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    method, path, _ = request_line.split(" ", 2)
    return ReceivedRequest(method, path, headers, body)


def response_bytes(
    status: int,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
    content_length: int | None = None,
) -> bytes:
    """Return a complete HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} Scripted", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    length = len(body) if content_length is None else content_length
    lines.append(f"Content-Length: {length}")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


# --- scripts -----------------------------------------------------------------


def reply(
    status: int,
    body: bytes | str | Mapping[str, object] = b"",
    *,
    content_type: str | None = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Script:
    """Reply to every request with one fixed response."""
    if isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode()
    else:
        payload = json.dumps(dict(body)).encode()

    def script(exchange: Exchange) -> None:
        exchange.send(
            response_bytes(status, payload, content_type=content_type, headers=headers)
        )

    return script


def echo_request(status: int, template: str, *, content_type: str) -> Script:
    """Reply with `template`, filled in from the request it replies to.

    `{body}` is replaced by the request body and `{headers}` by the request
    headers, one `name: value` per line. Imitates debug error pages that
    show the request they failed on.
    """

    def script(exchange: Exchange) -> None:
        request = exchange.request
        headers = "\n".join(f"{k}: {v}" for k, v in request.headers.items())
        text = template.replace("{body}", request.body.decode("latin-1"))
        text = text.replace("{headers}", headers)
        exchange.send(response_bytes(status, text.encode(), content_type=content_type))

    return script


def never_answer(exchange: Exchange) -> None:
    """Read the request, then send nothing until the server stops."""
    exchange.stall()


def stall_mid_body(exchange: Exchange) -> None:
    """Send headers promising 1000 bytes and the first 20, then stall."""
    head = response_bytes(200, b"", content_length=1000)
    exchange.send(head + b'{"access_token": "ab')
    exchange.stall()


def trickle_body(exchange: Exchange) -> None:
    """Send a valid header, then one body byte every 0.1 s for up to 30 s.

    Each byte arrives well within a read timeout of 0.5 s, so only a bound
    on the whole body stops the client from reading for the full 30 s.
    """
    exchange.send(response_bytes(200, b"", content_length=300))
    for _ in range(300):
        exchange.send(b" ")
        if exchange.stopped.wait(0.1):
            return


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """Yield a loopback port that is bound but not listening.

    A connection to it is refused at once, and no other process can take the
    port while the test runs.
    """
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]
    finally:
        holder.close()


def free_port() -> int:
    """Return a loopback port that was free a moment ago.

    For servers that must know their own port before they start, such as a
    demo whose issuer URL names it. Another process could take the port in
    between, which is unlikely on a test machine.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
