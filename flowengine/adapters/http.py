"""HTTP adapter: sends HttpRequest values with one requests.Session."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import requests
import urllib3

from flowengine.errors import ConfigError, ProtocolError, TransportError
from flowengine.oauth.http import HttpRequest, HttpResponse
from flowengine.redaction import redact_url

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
_CHUNK_BYTES = 16 << 10


class HttpClient:
    """Send requests with connect and read timeouts, and a body size cap.

    Args:
        timeout: (connect, read) timeouts in seconds. The read timeout also
            bounds the whole body: a server that sends a trickle of bytes is
            cut off once the read timeout has passed since the headers.
        max_body: responses larger than this many bytes are rejected.
        session: a requests.Session to reuse; one is created if omitted. Its
            `verify` may name a CA bundle but must not be False.

    Raises:
        ConfigError: `session` has TLS certificate verification turned off.
    """

    def __init__(
        self,
        timeout: tuple[float, float] = (3.05, 10.0),
        *,
        max_body: int = MAX_BODY_BYTES,
        session: requests.Session | None = None,
    ) -> None:
        self.timeout = timeout
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

    def send(self, request: HttpRequest) -> HttpResponse:
        """Send `request` and return the whole response.

        Redirects are not followed: a token endpoint or resource that
        redirects is answered as it is.

        Raises:
            TransportError: connection failure, timeout or reset.
            ProtocolError: the body is larger than `max_body`.
        """
        url = redact_url(request.url)
        started = time.monotonic()
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
        except requests.Timeout as exc:
            raise TransportError(
                f"{request.method} {url} timed out after {self._describe_timeout()}",
                url=url,
            ) from exc
        except requests.RequestException as exc:
            raise TransportError(
                f"{request.method} {url} failed: {type(exc).__name__}", url=url
            ) from exc

        with response:
            body = self._read_body(response, url, started)
        logger.info(
            "%s %s -> %s (%.0f ms)",
            request.method,
            url,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return HttpResponse(response.status_code, dict(response.headers), body)

    def _read_body(
        self, response: requests.Response, url: str, started: float
    ) -> bytes:
        deadline = started + self.timeout[0] + self.timeout[1]
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
                if time.monotonic() > deadline:
                    raise TransportError(
                        f"response body from {url} did not finish within "
                        f"{self._describe_timeout()}",
                        url=url,
                    )
        except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
            raise TransportError(
                f"reading the response from {url} timed out after "
                f"{self._describe_timeout()}",
                url=url,
            ) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TransportError(
                f"reading the response from {url} failed: {type(exc).__name__}",
                url=url,
            ) from exc
        return b"".join(chunks)

    def _describe_timeout(self) -> str:
        connect, read = self.timeout
        return f"{connect:g} s to connect and {read:g} s to read"

    def close(self) -> None:
        self.session.close()


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """Yield the decoded body in pieces as they arrive.

    `iter_content` returns only once a whole chunk is filled, so a server that
    sends one byte at a time would hold it until the body ends, far past the
    deadline. urllib3 2's `read1` returns what a single receive brought.
    """
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        # NOTE: urllib3 1.x has no read1; there a trickling server is cut off
        # only when a chunk fills or the body ends.
        yield from response.iter_content(_CHUNK_BYTES)
        return
    while chunk := read1(_CHUNK_BYTES, decode_content=True):
        yield chunk
