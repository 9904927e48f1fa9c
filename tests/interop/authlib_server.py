"""An authorization server and protected resource built from Authlib.

The Flask application uses Authlib's server components as their
documentation shows. `AuthorizationServer` runs the authorization code and
refresh token grants, with `CodeChallenge` for PKCE, `RevocationEndpoint`
(RFC 7009), `IssuerParameter` (RFC 9207) and RFC 8414 metadata. A
`ResourceProtector` with a `BearerTokenValidator` guards `POST /resource`.
Everything Authlib leaves to the application (storage, the approval page,
what happens to a used refresh token) is kept small and lives here.

Storage is in memory, guarded by one lock because waitress serves requests
from several threads.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from typing import Any

from authlib.integrations.flask_oauth2 import (
    AuthorizationServer,
    ResourceProtector,
    current_token,
)
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9207 import AuthorizationServerMetadata as IssMetadata
from authlib.oauth2.rfc9207 import IssuerParameter
from flask import Flask, current_app, jsonify, request
from markupsafe import escape

SCOPES = ("foo", "bar")
CODE_LIFETIME = 60


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """The one registered client of the server."""

    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    redirect_uri: str


@dataclasses.dataclass(frozen=True)
class Client(ClientMixin):
    """A confidential client that authenticates with client_secret_basic."""

    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    redirect_uri: str

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return ""
        return " ".join(s for s in scope.split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in ("authorization_code", "refresh_token")


@dataclasses.dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    """An issued code with the PKCE challenge of its request."""

    code: str = dataclasses.field(repr=False)
    client_id: str
    user: str
    redirect_uri: str
    scope: str
    code_challenge: str = dataclasses.field(repr=False)
    code_challenge_method: str
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope


@dataclasses.dataclass
class Token(TokenMixin):
    """An access token with the refresh token issued alongside it."""

    client_id: str
    user: str
    scope: str
    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    issued_at: float
    expires_in: int
    access_token_revoked: bool = False
    refresh_token_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.access_token_revoked


class Database:
    """Clients, codes and tokens of one server, in memory."""

    def __init__(self, settings: ServerSettings) -> None:
        self.lock = threading.Lock()
        self.client = Client(
            settings.client_id, settings.client_secret, settings.redirect_uri
        )
        self.codes: dict[str, AuthorizationCode] = {}
        self.tokens: list[Token] = []

    def query_client(self, client_id: str) -> Client | None:
        return self.client if client_id == self.client.client_id else None

    def save_token(self, token: dict[str, Any], oauth_request: Any) -> None:
        with self.lock:
            self.tokens.append(
                Token(
                    client_id=oauth_request.client.client_id,
                    user=oauth_request.user,
                    scope=token.get("scope", ""),
                    access_token=token["access_token"],
                    refresh_token=token.get("refresh_token"),
                    issued_at=time.time(),
                    expires_in=int(token["expires_in"]),
                )
            )

    def find_token(self, value: str, kind: str) -> Token | None:
        with self.lock:
            for token in self.tokens:
                if getattr(token, kind) is not None and secrets.compare_digest(
                    getattr(token, kind), value
                ):
                    return token
        return None


class S256CodeChallenge(CodeChallenge):
    """PKCE with S256 only, required from every client.

    Authlib's `CodeChallenge(required=True)` demands a verifier only from
    public clients and accepts a request without a challenge from a
    confidential one (Authlib 1.9), so the authorization request is checked
    here as well.
    """

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        payload = grant.request.payload.data
        if not payload.get("code_challenge"):
            raise InvalidRequestError(
                "Missing 'code_challenge': PKCE is required", redirect_uri=redirect_uri
            )
        if payload.get("code_challenge_method") != "S256":
            raise InvalidRequestError(
                "'code_challenge_method' must be S256", redirect_uri=redirect_uri
            )
        super().validate_code_challenge(grant, redirect_uri)


def create_app(settings: ServerSettings) -> Flask:
    """Build the Flask application with its authorization server.

    Set `app.config["ISSUER"]` to the server's base URL before the first
    request, because the issuer is known only once the server has its port.
    """
    app = Flask(__name__)
    # Authlib issues no refresh tokens unless this is set.
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    db = Database(settings)

    server = AuthorizationServer(
        app, query_client=db.query_client, save_token=db.save_token
    )
    server.register_grant(_code_grant(db), [S256CodeChallenge(required=True)])
    server.register_grant(_refresh_grant(db))
    server.register_endpoint(_revocation_endpoint(db))
    issuer_parameter = _ConfiguredIssuer()
    server.register_extension(issuer_parameter)

    protector = ResourceProtector()
    protector.register_token_validator(_BearerValidator(db))

    _add_routes(app, server, protector, issuer_parameter)
    return app


def _code_grant(db: Database) -> type[grants.AuthorizationCodeGrant]:
    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]

        def save_authorization_code(self, code: str, oauth_request: Any) -> None:
            data = oauth_request.payload.data
            with db.lock:
                db.codes[code] = AuthorizationCode(
                    code=code,
                    client_id=oauth_request.client.client_id,
                    user=oauth_request.user,
                    redirect_uri=oauth_request.payload.redirect_uri,
                    scope=oauth_request.payload.scope or "",
                    code_challenge=data["code_challenge"],
                    code_challenge_method=data["code_challenge_method"],
                    expires_at=time.time() + CODE_LIFETIME,
                )

        def query_authorization_code(
            self, code: str, client: Client
        ) -> AuthorizationCode | None:
            with db.lock:
                item = db.codes.get(code)
            if item is None or item.client_id != client.client_id:
                return None
            if time.time() >= item.expires_at:
                return None
            return item

        def delete_authorization_code(self, item: AuthorizationCode) -> None:
            with db.lock:
                db.codes.pop(item.code, None)

        def authenticate_user(self, item: AuthorizationCode) -> str:
            return item.user

    return CodeGrant


def _refresh_grant(db: Database) -> type[grants.RefreshTokenGrant]:
    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic"]
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
            token = db.find_token(refresh_token, "refresh_token")
            if token is None or token.refresh_token_revoked:
                return None
            return token

        def authenticate_user(self, token: Token) -> str:
            return token.user

        def revoke_old_credential(self, token: Token) -> None:
            # Rotation: the used refresh token and the access token issued
            # with it stop working. Tokens issued later are left alone.
            with db.lock:
                token.refresh_token_revoked = True
                token.access_token_revoked = True

    return RefreshGrant


def _revocation_endpoint(db: Database) -> type[RevocationEndpoint]:
    class Revocation(RevocationEndpoint):
        CLIENT_AUTH_METHODS = ["client_secret_basic"]

        def query_token(self, value: str, hint: str | None) -> Token | None:
            kinds = ["access_token", "refresh_token"]
            if hint == "refresh_token":
                kinds.reverse()
            for kind in kinds:
                token = db.find_token(value, kind)
                if token is not None:
                    return token
            return None

        def revoke_token(self, token: Token, oauth_request: Any) -> None:
            # RFC 7009 §2.1: revoking a refresh token also invalidates the
            # access token of the same grant.
            with db.lock:
                token.access_token_revoked = True
                value = oauth_request.form["token"]
                if token.refresh_token and secrets.compare_digest(
                    token.refresh_token, value
                ):
                    token.refresh_token_revoked = True

    return Revocation


class _ConfiguredIssuer(IssuerParameter):
    def get_issuer(self) -> str | None:
        issuer: str | None = current_app.config.get("ISSUER")
        return issuer


class _BearerValidator(BearerTokenValidator):
    def __init__(self, db: Database) -> None:
        super().__init__(realm="authlib-interop")
        self.db = db

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.db.find_token(token_string, "access_token")


def _add_routes(
    app: Flask,
    server: AuthorizationServer,
    protector: ResourceProtector,
    issuer_parameter: IssuerParameter,
) -> None:
    def error_redirect(error: OAuth2Error) -> Any:
        # The extension's hook runs only inside create_authorization_response,
        # so an error found while validating the request gets `iss` here
        # (RFC 9207 §2: error responses carry it too).
        response = server.handle_error_response(request, error)
        issuer_parameter.add_issuer_parameter(server, response)
        return response

    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> Any:
        return jsonify(_metadata(app.config["ISSUER"]))

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        if request.method == "GET":
            try:
                server.get_consent_grant(end_user=None)
            except OAuth2Error as error:
                return error_redirect(error)
            return _approval_page(request.full_path)
        user = request.form.get("username", "").strip() or None
        if request.form.get("decision") != "approve":
            user = None
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            return error_redirect(error)
        return server.create_authorization_response(grant_user=user, grant=grant)

    @app.post("/token")
    def issue_token() -> Any:
        return server.create_token_response()

    @app.post("/revoke")
    def revoke_token() -> Any:
        return server.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)

    @app.post("/resource")
    @protector("foo")
    def resource() -> Any:
        return jsonify(user=current_token.user, scope=current_token.scope)


def _metadata(issuer: str) -> dict[str, Any]:
    metadata = AuthorizationServerMetadata(
        issuer=issuer,
        authorization_endpoint=f"{issuer}/authorize",
        token_endpoint=f"{issuer}/token",
        revocation_endpoint=f"{issuer}/revoke",
        response_types_supported=["code"],
        grant_types_supported=["authorization_code", "refresh_token"],
        token_endpoint_auth_methods_supported=["client_secret_basic"],
        revocation_endpoint_auth_methods_supported=["client_secret_basic"],
        code_challenge_methods_supported=["S256"],
        scopes_supported=list(SCOPES),
        authorization_response_iss_parameter_supported=True,
    )
    metadata.validate(metadata_classes=[IssMetadata])
    return dict(metadata)


def _approval_page(action: str) -> str:
    return f"""<!doctype html>
<title>Approve access</title>
<form method="post" action="{escape(action)}">
  <label>User <input type="text" name="username" required></label>
  <button type="submit" name="decision" value="approve">Approve</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>
"""
