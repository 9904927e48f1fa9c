"""Authorization server metadata discovery (RFC 8414), without I/O."""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any

from flowengine.errors import ProtocolError
from flowengine.oauth.config import ClientConfig, check_url
from flowengine.oauth.http import HttpRequest, HttpResponse

OAUTH_SUFFIX = "oauth-authorization-server"
OPENID_SUFFIX = "openid-configuration"

# Metadata fields that fill in endpoints of the configuration.
_ENDPOINT_FIELDS = ("authorization_endpoint", "token_endpoint", "revocation_endpoint")


@dataclasses.dataclass(frozen=True)
class ServerMetadata:
    """The fields of an authorization server's metadata that the client uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    revocation_endpoint: str | None = None
    iss_parameter_supported: bool = False
    code_challenge_methods: tuple[str, ...] = ()
    token_auth_methods: tuple[str, ...] = ()


def metadata_requests(issuer: str) -> list[HttpRequest]:
    """Return the metadata requests to try for `issuer`, in order.

    The first follows RFC 8414 §3.1, which puts the well-known segment
    between the host and the issuer's path. The second follows OpenID
    Connect Discovery 1.0 §4, which appends it to the issuer.
    """
    parts = urllib.parse.urlsplit(issuer)
    path = parts.path.rstrip("/")
    oauth_path = f"/.well-known/{OAUTH_SUFFIX}{path}"
    openid_path = f"{path}/.well-known/{OPENID_SUFFIX}"
    headers = {"Accept": "application/json"}
    return [
        HttpRequest("GET", urllib.parse.urlunsplit(parts._replace(path=p)), headers)
        for p in (oauth_path, openid_path)
    ]


def parse_metadata(
    response: HttpResponse, expected_issuer: str, *, allow_insecure_http: bool
) -> ServerMetadata:
    """Validate a metadata document (RFC 8414 §3.2 and §3.3).

    Raises:
        ProtocolError: the status is not 200, the body is not a JSON
            object, its `issuer` differs from `expected_issuer` (which could
            be a mix-up or impersonation), an endpoint is missing or
            invalid, or the server lists code challenge methods without S256.
    """
    if response.status != 200:
        raise ProtocolError("metadata request failed", status=response.status)
    try:
        body = json.loads(response.body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("metadata is not JSON", status=response.status) from exc
    if not isinstance(body, dict):
        raise ProtocolError("metadata is not a JSON object", status=response.status)

    issuer = body.get("issuer")
    if issuer != expected_issuer:
        shown = issuer[:200] if isinstance(issuer, str) else type(issuer).__name__
        raise ProtocolError(
            f"metadata names issuer {shown!r} but the configured issuer is "
            f"{expected_issuer!r}; they must be identical (RFC 8414 §3.3)"
        )
    endpoints = {
        name: _endpoint(body, name, allow_insecure_http) for name in _ENDPOINT_FIELDS
    }
    methods = _string_list(body, "code_challenge_methods_supported")
    if methods and "S256" not in methods:
        raise ProtocolError(
            f"authorization server {issuer} does not support PKCE S256 "
            f"(it lists {', '.join(methods)[:100]})"
        )
    if endpoints["authorization_endpoint"] is None:
        raise ProtocolError(f"metadata of {issuer} lacks authorization_endpoint")
    if endpoints["token_endpoint"] is None:
        raise ProtocolError(f"metadata of {issuer} lacks token_endpoint")
    return ServerMetadata(
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        revocation_endpoint=endpoints["revocation_endpoint"],
        iss_parameter_supported=(
            body.get("authorization_response_iss_parameter_supported") is True
        ),
        code_challenge_methods=tuple(methods),
        token_auth_methods=tuple(
            _string_list(body, "token_endpoint_auth_methods_supported")
        ),
    )


def _endpoint(body: dict[str, Any], name: str, allow_insecure_http: bool) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return check_url(name, value, allow_insecure_http=allow_insecure_http)
    except Exception as exc:
        raise ProtocolError(f"metadata has an invalid {name}: {exc}") from exc


def _string_list(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def apply_metadata(config: ClientConfig, metadata: ServerMetadata) -> ClientConfig:
    """Return `config` with the endpoints it lacks taken from `metadata`.

    Endpoints set explicitly in the configuration win.
    """
    changes = {
        name: getattr(metadata, name)
        for name in _ENDPOINT_FIELDS
        if getattr(config, name) is None and getattr(metadata, name) is not None
    }
    return config.replace(**changes)
