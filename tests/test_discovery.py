"""Metadata discovery (RFC 8414), the issuer check (RFC 9207) and revocation."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from hostile import free_port

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.wsgi import BackgroundServer
from flowengine.autopilot import approve
from flowengine.client import OAuthClient
from flowengine.demo import (
    DemoDatabase,
    DemoSettings,
    create_authorization_server,
    create_resource_server,
)
from flowengine.errors import (
    ConfigError,
    IssuerMismatchError,
    ProtocolError,
    TokenExpiredError,
)
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.http import HttpResponse
from flowengine.oauth.metadata import (
    ServerMetadata,
    apply_metadata,
    metadata_requests,
    parse_metadata,
)

REDIRECT_URI = "http://localhost:9000/callback"


def metadata_response(body: object, status: int = 200) -> HttpResponse:
    raw = json.dumps(body).encode()
    return HttpResponse(status, {"Content-Type": "application/json"}, raw)


def valid_metadata(issuer: str = "https://as.example.test") -> dict[str, object]:
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "revocation_endpoint": f"{issuer}/revoke",
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
    }


# --- sans-IO parsing ---------------------------------------------------------


def test_metadata_urls_without_path() -> None:
    """RFC 8414 §3.1, then OpenID Connect Discovery §4."""
    urls = [r.url for r in metadata_requests("https://as.example.test")]
    assert urls == [
        "https://as.example.test/.well-known/oauth-authorization-server",
        "https://as.example.test/.well-known/openid-configuration",
    ]


def test_metadata_urls_with_issuer_path() -> None:
    """RFC 8414 §3.1: the well-known segment goes before the issuer's path."""
    urls = [r.url for r in metadata_requests("https://as.example.test/tenant/1")]
    assert urls[0] == (
        "https://as.example.test/.well-known/oauth-authorization-server/tenant/1"
    )
    assert urls[1] == (
        "https://as.example.test/tenant/1/.well-known/openid-configuration"
    )


def test_metadata_parses_endpoints() -> None:
    metadata = parse_metadata(
        metadata_response(valid_metadata()),
        "https://as.example.test",
        allow_insecure_http=False,
    )
    assert metadata.token_endpoint == "https://as.example.test/token"
    assert metadata.revocation_endpoint == "https://as.example.test/revoke"
    assert metadata.iss_parameter_supported is True


def test_metadata_with_other_issuer_is_rejected() -> None:
    """RFC 8414 §3.3: the issuer must be identical to the configured one."""
    body = valid_metadata("https://evil.example.test")
    with pytest.raises(ProtocolError, match="identical"):
        parse_metadata(
            metadata_response(body),
            "https://as.example.test",
            allow_insecure_http=False,
        )


def test_metadata_issuer_with_trailing_slash_is_rejected() -> None:
    """RFC 8414 §3.3 compares issuers as strings: no slash is added."""
    body = valid_metadata("https://as.example.test/")
    with pytest.raises(ProtocolError):
        parse_metadata(
            metadata_response(body),
            "https://as.example.test",
            allow_insecure_http=False,
        )


@pytest.mark.parametrize(
    "change",
    [
        {"token_endpoint": None},
        {"authorization_endpoint": None},
        {"token_endpoint": "http://as.example.test/token"},
        {"token_endpoint": 42},
        {"code_challenge_methods_supported": ["plain"]},
    ],
)
def test_metadata_invalid_fields_are_rejected(change: dict[str, object]) -> None:
    body = {**valid_metadata(), **change}
    with pytest.raises(ProtocolError):
        parse_metadata(
            metadata_response(body),
            "https://as.example.test",
            allow_insecure_http=False,
        )


@pytest.mark.parametrize("raw", [b"<html>", b"[]", b"\xff\xfe", b""])
def test_metadata_garbage_is_protocol_error(raw: bytes) -> None:
    response = HttpResponse(200, {"Content-Type": "application/json"}, raw)
    with pytest.raises(ProtocolError):
        parse_metadata(response, "https://as.example.test", allow_insecure_http=False)


def test_apply_metadata_keeps_explicit_endpoints() -> None:
    config = ClientConfig(
        issuer="https://as.example.test",
        token_endpoint="https://token.example.test/t",
        store="memory:",
    )
    metadata = ServerMetadata(
        issuer="https://as.example.test",
        authorization_endpoint="https://as.example.test/authorize",
        token_endpoint="https://as.example.test/token",
    )
    merged = apply_metadata(config, metadata)
    assert merged.token_endpoint == "https://token.example.test/t"
    assert merged.authorization_endpoint == "https://as.example.test/authorize"


def test_config_with_issuer_has_no_demo_endpoints() -> None:
    config = ClientConfig(issuer="https://as.example.test", store="memory:")
    assert config.token_endpoint is None
    with pytest.raises(ConfigError, match="token_endpoint"):
        config.endpoint("token_endpoint")


# --- against the demo authorization server -----------------------------------


@pytest.fixture
def demo() -> Iterator[tuple[BackgroundServer, BackgroundServer, DemoDatabase]]:
    database = DemoDatabase()
    # The issuer must be known before the server starts, so find a free port.
    port = free_port()
    settings = DemoSettings(
        issuer=f"http://127.0.0.1:{port}", redirect_uris=(REDIRECT_URI,)
    )
    auth = BackgroundServer(create_authorization_server(settings, database), port=port)
    resource = BackgroundServer(create_resource_server(settings, database))
    with auth, resource:
        yield auth, resource, database


def discovering_client(
    auth: BackgroundServer, resource: BackgroundServer
) -> OAuthClient:
    config = ClientConfig(
        issuer=auth.url, resource_url=f"{resource.url}/resource", store="memory:"
    )
    return OAuthClient(config, store=MemoryStore())


def run_grant(client: OAuthClient) -> str:
    flow_id = client.create_flow()
    url = client.start(flow_id)
    with requests.Session() as browser:
        browser.trust_env = False
        callback = approve(browser, url)
    client.handle_callback(flow_id, callback)
    return flow_id


def test_client_discovers_endpoints(demo: tuple[BackgroundServer, ...]) -> None:
    auth, resource, _ = demo
    client = discovering_client(auth, resource)
    flow_id = run_grant(client)
    assert client.config.token_endpoint == f"{auth.url}/token"
    assert client.config.revocation_endpoint == f"{auth.url}/revoke"
    assert client.fetch_resource(flow_id).status == 200


def test_callback_without_iss_is_rejected(demo: tuple[BackgroundServer, ...]) -> None:
    """RFC 9207 §2.4: the server promises `iss`, so a response without it is
    rejected and the flow keeps waiting."""
    auth, resource, _ = demo
    client = discovering_client(auth, resource)
    flow_id = client.create_flow()
    url = client.start(flow_id)
    with requests.Session() as browser:
        callback = approve(browser, url)
    parts = urllib.parse.urlsplit(callback)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "iss"]
    stripped = parts._replace(query=urllib.parse.urlencode(query)).geturl()

    with pytest.raises(IssuerMismatchError):
        client.handle_callback(flow_id, stripped)
    assert client.status(flow_id).state == "awaiting_callback"
    assert client.events(flow_id)[-1].outcome == "issuer_mismatch"


def test_callback_from_other_issuer_is_rejected(
    demo: tuple[BackgroundServer, ...],
) -> None:
    """RFC 9207 §2.4: a response naming another issuer is a mix-up."""
    auth, resource, _ = demo
    client = discovering_client(auth, resource)
    flow_id = client.create_flow()
    url = client.start(flow_id)
    with requests.Session() as browser:
        callback = approve(browser, url)
    forged = callback.replace(
        urllib.parse.quote(auth.url, safe=""),
        urllib.parse.quote("https://attacker.example.test", safe=""),
    )
    assert forged != callback

    with pytest.raises(IssuerMismatchError):
        client.handle_callback(flow_id, forged)
    assert client.status(flow_id).state == "awaiting_callback"

    client.handle_callback(flow_id, callback)
    assert client.status(flow_id).state == "token_held"


def test_logout_revokes_tokens(demo: tuple[BackgroundServer, ...]) -> None:
    """RFC 7009 §2.1: logout revokes the refresh token and the access token."""
    auth, resource, database = demo
    client = discovering_client(auth, resource)
    flow_id = run_grant(client)
    token = client.access_token(flow_id)

    client.logout(flow_id)

    assert client.status(flow_id).state == "unauthorized"
    assert client.events(flow_id)[-1].details["revoked"] is True
    answer = requests.post(
        f"{resource.url}/resource",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert answer.status_code == 401
    with pytest.raises(TokenExpiredError):
        client.fetch_resource(flow_id)


def test_logout_with_server_down_still_logs_out(
    demo: tuple[BackgroundServer, ...],
) -> None:
    auth, resource, _ = demo
    client = discovering_client(auth, resource)
    flow_id = run_grant(client)
    auth.stop()

    client.logout(flow_id)

    assert client.status(flow_id).state == "unauthorized"
    assert client.events(flow_id)[-1].details["revoked"] is False


def test_discovery_of_wrong_issuer_fails(demo: tuple[BackgroundServer, ...]) -> None:
    auth, resource, _ = demo
    config = ClientConfig(
        issuer=auth.url.replace("127.0.0.1", "localhost"),
        resource_url=f"{resource.url}/resource",
        store="memory:",
    )
    client = OAuthClient(config, store=MemoryStore())
    with pytest.raises(ProtocolError, match="identical"):
        client.start()
