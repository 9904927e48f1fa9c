"""HTTP adapter: sends HttpRequest values with one requests.Session."""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from flowengine.errors import ConfigError, ProtocolError, TransportError
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.redaction import redact_url

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
_CHUNK_BYTES = 16 << 10


class HttpClient:
    """Send requests with connect and read timeouts, and a body size cap.

    Args:
        timeout: (connect, read) timeouts in seconds. Besides bounding each
            connect and each receive, their sum bounds the whole exchange:
            a server that sends its status line, headers or body a trickle
            of bytes at a time is cut off once that sum has passed.
        max_body: responses larger than this many bytes are rejected.
        session: a requests.Session to reuse; one is created if omitted. Its
            `verify` may name a CA bundle but must not be False. The client
            mounts its own adapter on it for http:// and https:// URLs.

    Raises:
        ConfigError: a timeout is not a finite number above 0, or `session`
            has TLS certificate verification turned off.
    """

    def __init__(
        self,
        timeout: tuple[float, float] = (3.05, 10.0),
        *,
        max_body: int = MAX_BODY_BYTES,
        session: requests.Session | None = None,
    ) -> None:
        self.timeout = timeout
        self.deadline_seconds = _check_timeout(timeout)
        self.max_body = max_body
        self.session = session or requests.Session()
        if self.session.verify is False:
            raise ConfigError(
                "the HTTP session has TLS certificate verification turned off "
                "(verify=False); leave it on, or set verify to the path of a CA "
                "bundle that signs the servers' certificates"
            )
        # Authorization servers and resources are configured explicitly. With
        # trust_env on, a proxy from the environment would see every token, and
        # REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE could change which certificates
        # are trusted.
        self.session.trust_env = False
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, request: HttpRequest) -> HttpResponse:
        """Send `request` and return the whole response.

        Redirects are not followed: a token endpoint or resource that
        redirects gets its redirect response back unchanged.

        Raises:
            TransportError: connection failure, timeout, reset or a response
                that is not valid HTTP.
            ProtocolError: the body is larger than `max_body`.
        """
        url = redact_url(request.url)
        subject = f"{request.method} {url}"
        started = time.monotonic()
        with _Deadline(self.deadline_seconds).running() as deadline:
            try:
                response = self.session.request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    data=request.body,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise self._failure(subject, url, exc, deadline) from exc
            with response:
                body = self._read_body(response, url, deadline)
        if deadline.expired:
            # The deadline passed after the last byte arrived, or a shut down
            # socket looked like the end of the headers or the body.
            raise self._timed_out(subject, url)
        logger.info(
            "%s %s -> %s (%.0f ms)",
            request.method,
            url,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return HttpResponse(response.status_code, dict(response.headers), body)

    def _read_body(
        self,
        response: requests.Response,
        url: str,
        deadline: _Deadline,
    ) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in _body_chunks(response):
                size += len(chunk)
                if size > self.max_body:
                    raise ProtocolError(
                        f"response from {url} is larger than {self.max_body} bytes",
                        status=response.status_code,
                    )
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            subject = f"reading the response from {url}"
            raise self._failure(subject, url, exc, deadline) from exc
        return b"".join(chunks)

    def _failure(
        self, subject: str, url: str, exc: Exception, deadline: _Deadline
    ) -> TransportError:
        """Build the TransportError for `exc`, raised while `subject` ran."""
        if deadline.expired:
            return self._timed_out(subject, url)
        connect, read = self.timeout
        if isinstance(exc, requests.ConnectTimeout):
            return TransportError(
                f"{subject} timed out after {connect:g} s while connecting; check "
                "that the server is running and reachable",
                url=url,
            )
        if isinstance(exc, requests.Timeout | urllib3.exceptions.ReadTimeoutError):
            return TransportError(
                f"{subject} timed out after {read:g} s without receiving data",
                url=url,
            )
        return TransportError(
            f"{subject} failed: {_describe_failure(exc)} ({type(exc).__name__})",
            url=url,
        )

    def _timed_out(self, subject: str, url: str) -> TransportError:
        connect, read = self.timeout
        return TransportError(
            f"{subject} timed out after {self.deadline_seconds:g} s, the limit "
            f"for a whole exchange ({connect:g} s connect timeout plus {read:g} s "
            "read timeout)",
            url=url,
        )

    def close(self) -> None:
        self.session.close()


def _check_timeout(timeout: tuple[float, float]) -> float:
    """Return the deadline of a whole exchange, the sum of both timeouts."""
    for name, value in zip(("connect_timeout", "read_timeout"), timeout, strict=True):
        # The chained comparison is false for NaN and infinity, and compares
        # a huge integer without converting it to float.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
        if not 0 < value < math.inf:
            raise ConfigError(
                f"{name} must be a finite number of seconds above 0, not {value!r}"
            )
    total = timeout[0] + timeout[1]
    if total > threading.TIMEOUT_MAX:
        raise ConfigError(
            f"connect_timeout and read_timeout add up to more than this platform "
            f"can wait ({threading.TIMEOUT_MAX:g} s); lower them"
        )
    return float(total)


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """Yield the decoded body in pieces as they arrive.

    `iter_content` returns only once a whole chunk is filled, so the size cap
    would be checked late. urllib3 2's `read1` returns what a single receive
    brought.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        yield from response.iter_content(_CHUNK_BYTES)
        return
    while chunk := read1(_CHUNK_BYTES, decode_content=True):
        yield chunk


# --- failure causes ----------------------------------------------------------

# The first row whose types match an exception in the chain names the cause.
# The text is fixed: the libraries' own messages contain full URLs, which may
# carry secrets, and bytes the server sent.
_CAUSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((ConnectionRefusedError,), "connection refused"),
    (
        (http.client.RemoteDisconnected,),
        "the server closed the connection without a response",
    ),
    (
        (ConnectionResetError, ConnectionAbortedError, BrokenPipeError),
        "connection reset",
    ),
    (
        (urllib3.exceptions.NameResolutionError, socket.gaierror),
        "the host name cannot be resolved",
    ),
    ((ssl.SSLCertVerificationError,), "TLS certificate verification failed"),
    (
        (ssl.SSLError, requests.exceptions.SSLError, urllib3.exceptions.SSLError),
        "TLS handshake failed",
    ),
    (
        (http.client.LineTooLong,),
        "invalid response: a line of the response is too long",
    ),
    (
        (http.client.BadStatusLine,),
        "invalid response: the status line is not HTTP",
    ),
    (
        (
            urllib3.exceptions.InvalidChunkLength,
            requests.exceptions.ChunkedEncodingError,
        ),
        "invalid response: broken chunked encoding",
    ),
    (
        (http.client.IncompleteRead,),
        "the connection closed before the body ended",
    ),
    (
        (urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError),
        "invalid response: the body does not match its Content-Encoding",
    ),
    (
        (requests.exceptions.InvalidURL, urllib3.exceptions.LocationValueError),
        "invalid URL",
    ),
    ((requests.exceptions.InvalidHeader,), "invalid request header"),
)


def _describe_failure(exc: BaseException) -> str:
    """Name the cause of a failed exchange: refused, reset, invalid response.

    requests and urllib3 wrap the socket or http.client error that caused a
    failure, so the whole chain of wrapped errors is searched.
    """
    chain = list(_exception_chain(exc))
    for types, cause in _CAUSES:
        if any(isinstance(link, types) for link in chain):
            return cause
    if any(_is_too_many_headers(link) for link in chain):
        return "invalid response: too many header lines"
    if any(isinstance(link, http.client.HTTPException) for link in chain):
        return "invalid response"
    return "network error"


def _is_too_many_headers(exc: BaseException) -> bool:
    # http.client raises a bare HTTPException with this fixed text when a
    # response has more header lines than its limit (100 in Python 3.11).
    return type(exc) is http.client.HTTPException and str(exc).startswith(
        "got more than"
    )


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yield `exc` and every exception it wraps, outermost first."""
    pending = [exc]
    seen: set[int] = set()
    # requests and urllib3 wrap at most a few levels deep; the bound only
    # guards against an exception that wraps itself through another.
    while pending and len(seen) < 20:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
        ]
        wrapped.extend(current.args)
        pending.extend(item for item in wrapped if isinstance(item, BaseException))


# --- the deadline of one exchange ----------------------------------------------

# Guards every _Deadline and the `deadline` attribute of watched connections.
_WATCH_LOCK = threading.Lock()
_current = threading.local()


class _Deadline:
    """The overall deadline of one HTTP exchange, enforced by a timer thread.

    A per-receive read timeout does not bound a server that sends one byte
    at a time. When the deadline passes, the timer shuts down the sockets the
    exchange uses, so a receive blocked anywhere (TLS handshake, status line,
    headers, body) returns at once. It also sets `expired`, so the requesting
    thread reports a timeout rather than a reset connection.

    Each watched socket is a duplicate descriptor of the connection's socket.
    Shutting it down ends the TCP connection without touching the socket
    object, or its TLS state, that the requesting thread is using.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._finished = False
        self._watched: list[tuple[_WatchedConnection, socket.socket]] = []
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    @contextlib.contextmanager
    def running(self) -> Iterator[_Deadline]:
        """Run the timer and mark this deadline as the thread's current one."""
        _current.deadline = self
        self._timer.start()
        try:
            yield self
        finally:
            _current.deadline = None
            self._finish()

    def watch(self, connection: _WatchedConnection, sock: socket.socket) -> None:
        """Shut `sock` down when the deadline passes, while `connection` is ours."""
        duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        with _WATCH_LOCK:
            if self._finished:
                duplicate.close()
                return
            connection.deadline = self
            self._watched.append((connection, duplicate))
            if self.expired:
                _shut_down(duplicate)

    def _expire(self) -> None:
        with _WATCH_LOCK:
            if self._finished:
                return
            self.expired = True
            for connection, duplicate in self._watched:
                # A connection back in the pool may already serve another
                # exchange, which then owns it.
                if connection.deadline is self:
                    _shut_down(duplicate)

    def _finish(self) -> None:
        self._timer.cancel()
        with _WATCH_LOCK:
            self._finished = True
            watched, self._watched = self._watched, []
        for _, duplicate in watched:
            duplicate.close()


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _current_deadline() -> _Deadline | None:
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    return deadline


class _WatchedConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection whose socket the current exchange's deadline watches.

    A new socket is watched as soon as it is connected, before any TLS
    handshake. A kept-alive socket is watched when the next request on it
    starts.
    """

    deadline: _Deadline | None = None

    def _new_conn(self) -> socket.socket:
        # NOTE: the name lookup and the TCP connect run before the socket can
        # be watched. The connect timeout bounds each connect attempt, one per
        # address of the host, and nothing here bounds the name lookup.
        sock = super()._new_conn()
        deadline = _current_deadline()
        if deadline is not None:
            deadline.watch(self, sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = _current_deadline()
        if (
            deadline is not None
            and self.sock is not None
            and self.deadline is not deadline
        ):
            deadline.watch(self, self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose connections a `_Deadline` can watch."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool,
            "https": _WatchedHTTPSConnectionPool,
        }
