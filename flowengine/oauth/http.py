"""HTTP request and response descriptions exchanged with the I/O adapter.

The protocol code builds `HttpRequest` values and reads `HttpResponse`
values; only the adapter in flowengine.adapters.http sends anything.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping

from flowengine.redaction import MASK, redact_query, redact_url

_SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie"})


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    """A request to send: method, URL, headers and form-encoded body.

    The repr masks the Authorization header and secret form fields.
    """

    method: str
    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    form: Mapping[str, str] | None = None

    @property
    def body(self) -> bytes | None:
        if self.form is None:
            return None
        return urllib.parse.urlencode(self.form).encode("ascii")

    def __repr__(self) -> str:
        headers = {
            k: (MASK if k.lower() in _SECRET_HEADERS else v)
            for k, v in self.headers.items()
        }
        form = None
        if self.form is not None:
            form = redact_query(urllib.parse.urlencode(self.form))
        return (
            f"HttpRequest(method={self.method!r}, url={redact_url(self.url)!r}, "
            f"headers={headers!r}, form={form!r})"
        )


@dataclasses.dataclass(frozen=True)
class HttpResponse:
    """A received response. Header names are stored in lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __post_init__(self) -> None:
        lowered = {k.lower(): v for k, v in self.headers.items()}
        object.__setattr__(self, "headers", lowered)

    def header(self, name: str) -> str | None:
        """Return the value of header `name`, matched case-insensitively."""
        return self.headers.get(name.lower())

    @property
    def media_type(self) -> str:
        """The media type of Content-Type, lower case, without parameters."""
        content_type = self.header("content-type") or ""
        return content_type.split(";", 1)[0].strip().lower()

    def __repr__(self) -> str:
        return (
            f"HttpResponse(status={self.status}, media_type={self.media_type!r}, "
            f"length={len(self.body)})"
        )
