"""The client against oidc-provider, the OpenID Connect server for Node.js.

The provider runs from `oidc_provider/server.mjs` with its development login
and consent pages, PKCE required, refresh token rotation on every use and
RFC 7009 revocation. The protected resource is its userinfo endpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from interop_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    Page,
    RunningServer,
    UserAgent,
    callback_params,
    expect_callback,
    expect_page,
    replace_flow,
    rewrite_data,
    with_param,
)

from flowengine.client import OAuthClient
from flowengine.errors import IssuerMismatchError, OAuthError

MakeClient = Callable[..., OAuthClient]
MakeAgent = Callable[[], UserAgent]


@pytest.fixture
def server(oidc_provider: RunningServer) -> RunningServer:
    return oidc_provider


@pytest.fixture
def client(server: RunningServer, make_client: MakeClient) -> OAuthClient:
    return make_client(server)


def sign_in(make_agent: MakeAgent, authorization_url: str) -> tuple[UserAgent, Page]:
    """Sign in as alice on the login page and return the consent page."""
    agent = make_agent()
    login = expect_page(agent.open(authorization_url))
    assert login.form().text_inputs == ["login", "password"]
    consent = agent.submit(login, {"login": "alice", "password": "any password"})
    return agent, expect_page(consent)


def approve(make_agent: MakeAgent, authorization_url: str) -> str:
    """Sign in, give consent and return the callback URL."""
    agent, consent = sign_in(make_agent, authorization_url)
    return expect_callback(agent.submit(consent))


def run_grant(client: OAuthClient, make_agent: MakeAgent) -> str:
    flow_id = client.create_flow()
    client.handle_callback(flow_id, approve(make_agent, client.start(flow_id)))
    return flow_id


def held_tokens(client: OAuthClient, flow_id: str) -> tuple[str, str]:
    data = client.store.load(flow_id).data
    return data["access_token"], data["refresh_token"]


def call_userinfo(server: RunningServer, access_token: str) -> requests.Response:
    return requests.get(
        server.config.resource_url,
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )


def refresh_directly(server: RunningServer, refresh_token: str) -> requests.Response:
    return requests.post(
        server.config.token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=10,
    )


# --- metadata and the grant ----------------------------------------------------


def test_metadata_matches_client_config(server: RunningServer) -> None:
    url = f"{server.issuer}/.well-known/openid-configuration"
    metadata = requests.get(url, timeout=10).json()
    authorization_endpoint = server.config.authorization_endpoint.split("?")[0]

    assert metadata["issuer"] == server.issuer
    assert metadata["authorization_endpoint"] == authorization_endpoint
    assert metadata["token_endpoint"] == server.config.token_endpoint
    assert metadata["revocation_endpoint"] == server.config.revocation_endpoint
    assert metadata["userinfo_endpoint"] == server.config.resource_url
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True


def test_grant_with_pkce_and_iss(client: OAuthClient, make_agent: MakeAgent) -> None:
    flow_id = client.create_flow()
    authorization_url = client.start(flow_id)
    callback_url = approve(make_agent, authorization_url)

    record = client.handle_callback(flow_id, callback_url)

    request_params = callback_params(authorization_url)
    assert request_params["code_challenge_method"] == "S256"
    assert request_params["prompt"] == "consent"
    assert callback_params(callback_url)["iss"] == client.config.issuer
    assert record.state == "token_held"
    status = client.status(flow_id)
    assert status.scope == "openid offline_access"
    assert status.has_refresh_token
    assert status.expires_at is not None
    triggers = [event.trigger for event in client.events(flow_id)]
    assert triggers == ["create", "start", "receive_code", "receive_token"]
    receive_code = client.events(flow_id)[2]
    assert receive_code.details["iss"] == client.config.issuer


def test_callback_with_foreign_iss_is_rejected(
    client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = client.create_flow()
    callback_url = approve(make_agent, client.start(flow_id))
    forged = with_param(callback_url, "iss", "http://127.0.0.1:1/other-server")

    with pytest.raises(IssuerMismatchError):
        client.handle_callback(flow_id, forged)

    assert client.status(flow_id).state == "awaiting_callback"
    assert client.handle_callback(flow_id, callback_url).state == "token_held"


def test_callback_without_iss_is_rejected(
    client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = client.create_flow()
    callback_url = approve(make_agent, client.start(flow_id))
    stripped = with_param(callback_url, "iss", None)

    with pytest.raises(IssuerMismatchError):
        client.handle_callback(flow_id, stripped)

    assert client.metadata is not None
    assert client.metadata.iss_parameter_supported
    assert client.status(flow_id).state == "awaiting_callback"
    assert client.events(flow_id)[-1].outcome == "issuer_mismatch"


def test_authorization_request_without_pkce_is_rejected(
    server: RunningServer, make_agent: MakeAgent
) -> None:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": server.config.redirect_uri,
        "scope": "openid",
        "state": "s" * 22,
    }
    url = (
        requests.Request("GET", server.config.authorization_endpoint, params=params)
        .prepare()
        .url
    )
    assert url is not None

    callback_url = expect_callback(make_agent().open(url))

    assert callback_params(callback_url)["error"] == "invalid_request"
    assert callback_params(callback_url)["iss"] == server.issuer


def test_userinfo_as_resource(client: OAuthClient, make_agent: MakeAgent) -> None:
    flow_id = run_grant(client, make_agent)

    result = client.fetch_resource(flow_id)

    assert result.status == 200
    assert result.json() == {"sub": "alice"}


# --- refresh ---------------------------------------------------------------------


def test_refresh_rotates_tokens(client: OAuthClient, make_agent: MakeAgent) -> None:
    flow_id = run_grant(client, make_agent)
    old_access, old_refresh = held_tokens(client, flow_id)

    record = client.refresh(flow_id)

    new_access, new_refresh = held_tokens(client, flow_id)
    assert record.state == "token_held"
    assert new_access != old_access
    assert new_refresh != old_refresh
    assert client.status(flow_id).scope == "openid offline_access"
    assert client.fetch_resource(flow_id).json() == {"sub": "alice"}


def test_reused_refresh_token_revokes_grant(
    server: RunningServer, client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = run_grant(client, make_agent)
    _, old_refresh = held_tokens(client, flow_id)
    client.refresh(flow_id)
    rotated_access, rotated_refresh = held_tokens(client, flow_id)
    rewrite_data(client, flow_id, "restore old tokens", refresh_token=old_refresh)

    with pytest.raises(OAuthError) as caught:
        client.refresh(flow_id)

    assert caught.value.error == "invalid_grant"
    status = client.status(flow_id)
    assert status.state == "unauthorized"
    assert status.last_error == "invalid_grant"
    assert not status.has_refresh_token
    assert client.events(flow_id)[-1].trigger == "reject_refresh"
    # oidc-provider treats a used refresh token as stolen and revokes the
    # whole grant, the rotated tokens included.
    assert call_userinfo(server, rotated_access).status_code == 401
    reused = refresh_directly(server, rotated_refresh)
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"


# --- logout -------------------------------------------------------------------------


def test_logout_revokes_tokens(
    server: RunningServer, client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = run_grant(client, make_agent)
    access_token, refresh_token = held_tokens(client, flow_id)

    record = client.logout(flow_id)

    assert record.state == "unauthorized"
    assert client.events(flow_id)[-1].details["revoked"] is True
    assert call_userinfo(server, access_token).status_code == 401
    refreshed = refresh_directly(server, refresh_token)
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_discovery_fills_endpoints(
    server: RunningServer, make_client: MakeClient, make_agent: MakeAgent
) -> None:
    client = make_client(
        server,
        authorization_endpoint=None,
        token_endpoint=None,
        revocation_endpoint=None,
    )
    flow_id = run_grant(client, make_agent)
    access_token = client.store.load(flow_id).data["access_token"]
    status = client.status(flow_id)

    client.logout(flow_id)

    assert client.config.authorization_endpoint == f"{server.issuer}/auth"
    assert client.config.token_endpoint == f"{server.issuer}/token"
    assert client.config.revocation_endpoint == f"{server.issuer}/token/revocation"
    # The discovered endpoint has no prompt=consent, so the provider drops
    # offline_access and issues no refresh token.
    assert status.scope == "openid"
    assert not status.has_refresh_token
    assert call_userinfo(server, access_token).status_code == 401


# --- errors --------------------------------------------------------------------------


def test_user_denial_is_access_denied(
    client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = client.create_flow()
    agent, consent = sign_in(make_agent, client.start(flow_id))
    callback_url = expect_callback(agent.open(consent.link_ending_with("/abort")))

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback_url)

    assert caught.value.error == "access_denied"
    assert callback_params(callback_url)["iss"] == client.config.issuer
    status = client.status(flow_id)
    assert status.state == "unauthorized"
    assert status.last_error == "access_denied"


def test_bad_client_secret_is_invalid_client(
    server: RunningServer, make_client: MakeClient, make_agent: MakeAgent
) -> None:
    client = make_client(server, client_secret="not-the-secret")
    flow_id = client.create_flow()
    callback_url = approve(make_agent, client.start(flow_id))

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback_url)

    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    status = client.status(flow_id)
    assert status.state == "unauthorized"
    assert status.last_error == "invalid_client"


def test_reused_code_revokes_first_grant(
    client: OAuthClient, make_agent: MakeAgent
) -> None:
    first = client.create_flow()
    callback_url = approve(make_agent, client.start(first))
    second = client.create_flow()
    client.start(second)
    replace_flow(client, second, client.store.load(first), "copy pending request")
    client.handle_callback(first, callback_url)

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(second, callback_url)

    assert caught.value.error == "invalid_grant"
    assert client.status(second).state == "unauthorized"
    assert client.status(second).last_error == "invalid_grant"
    # RFC 6749 §4.1.2: the provider revokes what the code produced, so the
    # first flow's token fails at userinfo and its refresh fails too.
    with pytest.raises(OAuthError) as revoked:
        client.fetch_resource(first)
    assert revoked.value.error == "invalid_grant"
    assert client.status(first).state == "unauthorized"


def test_wrong_pkce_verifier_is_invalid_grant(
    client: OAuthClient, make_agent: MakeAgent
) -> None:
    flow_id = client.create_flow()
    callback_url = approve(make_agent, client.start(flow_id))
    other = client.create_flow()
    client.start(other)
    other_verifier = client.store.load(other).data["code_verifier"]
    rewrite_data(client, flow_id, "swap verifier", code_verifier=other_verifier)

    with pytest.raises(OAuthError) as caught:
        client.handle_callback(flow_id, callback_url)

    assert caught.value.error == "invalid_grant"
    status = client.status(flow_id)
    assert status.state == "unauthorized"
    assert status.last_error == "invalid_grant"
