"""In-memory database shared by the demo authorization server and resource.

Both demo apps run in one process and read the same `DemoDatabase`: the
authorization server writes codes and tokens, the resource server looks up
access tokens. Records are frozen dataclasses, replaced under a lock, so a
record handed to a caller never changes underneath it.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


def new_secret() -> str:
    """Return a fresh unguessable value for a code, token or request id."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Grant:
    """The authorization one resource owner gave one client.

    Every code, access token and refresh token carries the grant it came
    from, so revoking the grant revokes all of them. The grant id is not a
    credential, so logs may show it.
    """

    grant_id: str
    client_id: str
    scope: tuple[str, ...]


@dataclass(frozen=True)
class PendingRequest:
    """A validated authorization request that waits for the user's decision.

    `redirect_uri_in_request` records whether the client sent the
    redirect_uri or left the one registered URI implied, because the token
    request must then repeat it or leave it out in the same way.
    """

    client_id: str
    redirect_uri: str
    redirect_uri_in_request: bool
    scope: tuple[str, ...]
    state: str | None = dataclasses.field(repr=False)
    code_challenge: str | None = dataclasses.field(repr=False)
    code_challenge_method: str | None


@dataclass(frozen=True)
class AuthorizationCode:
    """An issued authorization code and what it is bound to."""

    grant: Grant
    redirect_uri: str
    redirect_uri_in_request: bool
    code_challenge: str | None = dataclasses.field(repr=False)
    code_challenge_method: str | None
    expires_at: float
    used: bool = False


@dataclass(frozen=True)
class AccessToken:
    """An issued access token. Its scope may be narrower than the grant's."""

    grant: Grant
    scope: tuple[str, ...]
    expires_at: float


@dataclass(frozen=True)
class RefreshToken:
    """An issued refresh token. `expires_at` is None when it never expires."""

    grant: Grant
    expires_at: float | None
    used: bool = False


@dataclass(frozen=True)
class IssuedTokens:
    """The token values of one successful token response."""

    access_token: str = dataclasses.field(repr=False)
    refresh_token: str | None = dataclasses.field(repr=False)
    grant_id: str


class DemoDatabase:
    """Store pending requests, codes and tokens of the demo servers in memory.

    Every method is safe to call from several server threads at once.

    Args:
        now: the time source in POSIX seconds. Tests pass a clock they can
            move forward to make codes and tokens expire.

    Attributes:
        token_requests: token endpoint requests counted by
            (grant_type, outcome), where outcome is "ok" or the OAuth error code.
        resource_requests: resource requests counted by outcome, which is
            "ok" or the error code of the bearer challenge.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self.token_requests: collections.Counter[tuple[str, str]] = (
            collections.Counter()
        )
        self.resource_requests: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._pending: dict[str, PendingRequest] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._access_tokens: dict[str, AccessToken] = {}
        self._refresh_tokens: dict[str, RefreshToken] = {}
        self._revoked_grants: set[str] = set()

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"DemoDatabase(pending={len(self._pending)}, codes={len(self._codes)}"
                f", access_tokens={len(self._access_tokens)}"
                f", refresh_tokens={len(self._refresh_tokens)})"
            )

    # --- counters -----------------------------------------------------------

    def count_token_request(self, grant_type: str, outcome: str) -> None:
        """Count one token endpoint request under (grant_type, outcome)."""
        with self._lock:
            self.token_requests[(grant_type, outcome)] += 1

    def count_resource_request(self, outcome: str) -> None:
        """Count one resource request under its outcome."""
        with self._lock:
            self.resource_requests[outcome] += 1

    # --- pending authorization requests -------------------------------------

    def add_pending_request(self, request: PendingRequest) -> str:
        """Store a request that waits for approval and return its new reqid."""
        reqid = new_secret()
        with self._lock:
            self._pending[reqid] = request
        return reqid

    def pop_pending_request(self, reqid: str) -> PendingRequest | None:
        """Remove and return the request stored under `reqid`, or None.

        Removal makes every reqid single use.
        """
        with self._lock:
            return self._pending.pop(reqid, None)

    # --- authorization codes ------------------------------------------------

    def issue_code(
        self, request: PendingRequest, scope: tuple[str, ...], lifetime: float
    ) -> str:
        """Start a new grant for the approved `scope` and return its code."""
        grant = Grant(secrets.token_hex(8), request.client_id, scope)
        code = new_secret()
        record = AuthorizationCode(
            grant=grant,
            redirect_uri=request.redirect_uri,
            redirect_uri_in_request=request.redirect_uri_in_request,
            code_challenge=request.code_challenge,
            code_challenge_method=request.code_challenge_method,
            expires_at=self.now() + lifetime,
        )
        with self._lock:
            self._codes[code] = record
        return code

    def get_code(self, code: str) -> AuthorizationCode | None:
        """Return the record of `code`, used or not, or None if unknown."""
        with self._lock:
            return self._codes.get(code)

    def mark_code_used(self, code: str) -> bool:
        """Mark `code` used and return True, or return False if it already was.

        Only one of several concurrent redemptions of a code gets True.
        """
        with self._lock:
            record = self._codes.get(code)
            if record is None or record.used:
                return False
            self._codes[code] = dataclasses.replace(record, used=True)
            return True

    # --- tokens -------------------------------------------------------------

    def issue_tokens(
        self,
        grant: Grant,
        scope: tuple[str, ...],
        access_lifetime: float,
        refresh_lifetime: float | None,
        with_refresh_token: bool,
    ) -> IssuedTokens | None:
        """Store a new access token, and a refresh token if requested.

        The refresh token always carries the whole scope of the grant, as
        RFC 6749 §6 requires, while the access token gets `scope`.

        Returns:
            the new token values, or None when the grant was revoked.
        """
        now = self.now()
        access_token = new_secret()
        refresh_token = new_secret() if with_refresh_token else None
        refresh_expiry = None if refresh_lifetime is None else now + refresh_lifetime
        with self._lock:
            if grant.grant_id in self._revoked_grants:
                return None
            self._access_tokens[access_token] = AccessToken(
                grant, scope, now + access_lifetime
            )
            if refresh_token is not None:
                self._refresh_tokens[refresh_token] = RefreshToken(
                    grant, refresh_expiry
                )
        return IssuedTokens(access_token, refresh_token, grant.grant_id)

    def get_access_token(self, token: str) -> AccessToken | None:
        """Return the record of an access token, or None if unknown or revoked.

        An expired token is still returned, and the caller compares
        `expires_at` with `now()`.
        """
        with self._lock:
            return self._access_tokens.get(token)

    def get_refresh_token(self, token: str) -> RefreshToken | None:
        """Return the record of a refresh token, used or not, or None."""
        with self._lock:
            return self._refresh_tokens.get(token)

    def mark_refresh_token_used(self, token: str) -> bool:
        """Mark a refresh token used and return True, or False if it already was.

        Only one of several concurrent refreshes with one token gets True.
        """
        with self._lock:
            record = self._refresh_tokens.get(token)
            if record is None or record.used:
                return False
            self._refresh_tokens[token] = dataclasses.replace(record, used=True)
            return True

    def expire_access_tokens(self) -> None:
        """Make every stored access token expire at the current time."""
        now = self.now()
        with self._lock:
            for token, record in self._access_tokens.items():
                self._access_tokens[token] = dataclasses.replace(
                    record, expires_at=min(record.expires_at, now)
                )

    # --- revocation ---------------------------------------------------------

    def revoke_grant(self, grant_id: str) -> None:
        """Delete every access and refresh token of a grant, for good.

        Tokens that a concurrent request issues for the grant afterwards are
        refused too, because `issue_tokens` checks the revoked grants.
        """
        with self._lock:
            self._revoked_grants.add(grant_id)
            self._access_tokens = {
                token: record
                for token, record in self._access_tokens.items()
                if record.grant.grant_id != grant_id
            }
            self._refresh_tokens = {
                token: record
                for token, record in self._refresh_tokens.items()
                if record.grant.grant_id != grant_id
            }

    def revoke_token(self, token: str) -> str | None:
        """Revoke an access token, or the whole grant of a refresh token.

        Returns:
            "access_token" or "refresh_token" for the kind revoked, or None
            when the token is unknown.
        """
        with self._lock:
            if self._access_tokens.pop(token, None) is not None:
                return "access_token"
            refresh = self._refresh_tokens.get(token)
        if refresh is None:
            return None
        self.revoke_grant(refresh.grant.grant_id)
        return "refresh_token"
