"""Guards and actions of flows/authorization_code.yaml, bound by REGISTRY.

Every callable takes the engine's `Run`. Guards read the trigger's inputs
and the flow's data; actions rewrite the data. The engine's context is the
`ClientConfig`. Keys of the flow's data:

- pending request: `state`, `code_verifier`, `pending_expires_at`,
  `requested_scope`, `issuer` (the issuer the request went to, if known);
- after the callback: `code`, `code_verifier`, `issuer`, and
  `pending_expires_at`, now counted from the code's arrival;
- with a token: `access_token`, `token_type`, `expires_at` (None for an
  unknown lifetime), `refresh_token`, `scope`;
- while refreshing: `lease_id`, `lease_expires_at`;
- `last_error`: the error code of the last failure, if any.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from flowengine.definition import Registry
from flowengine.engine import Run
from flowengine.errors import (
    FlowEngineError,
    IssuerMismatchError,
    OAuthError,
    StateMismatchError,
    TransitionError,
)
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.pkce import (
    code_challenge,
    new_code_verifier,
    new_state,
    states_equal,
)
from flowengine.oauth.protocol import Callback, TokenSet, authorization_url

REGISTRY = Registry()

_DESCRIPTION_LIMIT = 200


def _config(run: Run) -> ClientConfig:
    if not isinstance(run.context, ClientConfig):
        raise TransitionError(
            "the engine of an authorization_code flow needs a ClientConfig as "
            "its context"
        )
    return run.context


def _callback(run: Run) -> Callback:
    callback = run.inputs.get("callback")
    if not isinstance(callback, Callback):
        raise TransitionError(f"trigger on flow {run.flow_id} needs a 'callback' input")
    return callback


# --- guards ----------------------------------------------------------------


@REGISTRY.guard("callback_state_matches")
def callback_state_matches(run: Run) -> bool:
    """Check the callback's `state` and `iss` against the pending request.

    Raises StateMismatchError or IssuerMismatchError, so the audit trail
    records why the callback was not applied.
    """
    callback = _callback(run)
    expected = run.data.get("state")
    if not expected:
        raise StateMismatchError(
            f"flow {run.flow_id} expects no callback; its state value was "
            "already used. Start the grant again"
        )
    if callback.state is None:
        raise StateMismatchError(
            f"callback for flow {run.flow_id} has no 'state' parameter, so it "
            "cannot be matched to this grant"
        )
    if not states_equal(expected, callback.state):
        raise StateMismatchError(
            f"callback 'state' does not match the grant started by flow "
            f"{run.flow_id}; it belongs to another request or was forged"
        )
    if pending_expired(run.data, run.now):
        raise StateMismatchError(
            f"the authorization request of flow {run.flow_id} expired before "
            "the callback arrived; start the grant again"
        )
    _check_issuer(run, callback)
    return True


def _check_issuer(run: Run, callback: Callback) -> None:
    # RFC 9207 §2.4: compare `iss` when the request recorded an issuer.
    expected = run.data.get("issuer")
    if expected is None or callback.iss is None:
        if expected is not None and run.data.get("require_iss"):
            raise IssuerMismatchError(
                f"callback for flow {run.flow_id} lacks 'iss', but the "
                f"authorization server {expected} promises to send it"
            )
        return
    if callback.iss != expected:
        raise IssuerMismatchError(
            f"callback 'iss' {callback.iss[:100]!r} is not {expected!r}, the "
            f"issuer flow {run.flow_id} sent its request to"
        )


@REGISTRY.guard("callback_has_code")
def callback_has_code(run: Run) -> bool:
    callback = _callback(run)
    return callback.code is not None and callback.error is None


@REGISTRY.guard("callback_has_error")
def callback_has_error(run: Run) -> bool:
    return _callback(run).error is not None


@REGISTRY.guard("code_pending")
def code_pending(run: Run) -> bool:
    return bool(run.data.get("code")) and bool(run.data.get("code_verifier"))


@REGISTRY.guard("token_is_valid")
def token_is_valid(run: Run) -> bool:
    return isinstance(run.inputs.get("token"), TokenSet)


@REGISTRY.guard("has_error")
def has_error(run: Run) -> bool:
    return isinstance(run.inputs.get("error"), FlowEngineError)


@REGISTRY.guard("has_refresh_token")
def has_refresh_token(run: Run) -> bool:
    if not run.data.get("refresh_token"):
        raise TransitionError(
            f"flow {run.flow_id} has no refresh token; start a new grant",
            code="no_refresh_token",
        )
    return True


@REGISTRY.guard("refresh_lease_expired")
def refresh_lease_expired(run: Run) -> bool:
    return run.now >= float(run.data.get("lease_expires_at", 0))


@REGISTRY.guard("pending_request_expired")
def pending_request_expired(run: Run) -> bool:
    """Check that the pending request or the received code passed its expiry.

    A flow without `pending_expires_at` counts as expired. Raises
    TransitionError while the request is still live, so the audit trail
    records why the flow was kept.
    """
    if pending_expired(run.data, run.now):
        return True
    expires_at = float(run.data["pending_expires_at"])
    raise TransitionError(
        f"the pending request of flow {run.flow_id} expires in "
        f"{expires_at - run.now:.0f} s; abandon it after that",
        code="pending_request_live",
    )


def pending_expired(data: Mapping[str, Any], now: float) -> bool:
    """Return whether the pending request or code in `data` expired at `now`.

    Data without `pending_expires_at` counts as expired.
    """
    # NOTE: a code_received flow saved before store_code recorded
    # pending_expires_at has none, so `abandon` may drop its code at once.
    return now >= float(data.get("pending_expires_at", 0))


@REGISTRY.guard("holds_refresh_lease")
def holds_refresh_lease(run: Run) -> bool:
    lease = run.inputs.get("lease_id")
    current = run.data.get("lease_id")
    if not isinstance(lease, str) or not isinstance(current, str):
        return False
    return hmac.compare_digest(lease, current)


# --- actions ---------------------------------------------------------------


@REGISTRY.action("begin_authorization")
def begin_authorization(run: Run) -> None:
    """Create state and PKCE verifier; put the authorization URL in `result`."""
    config = _config(run)
    scope = run.inputs.get("scope")
    scope = config.scope if not isinstance(scope, str) else scope
    issuer = run.inputs.get("issuer", config.issuer)
    state = new_state()
    verifier = new_code_verifier()

    run.data.clear()
    run.data.update(
        state=state,
        code_verifier=verifier,
        pending_expires_at=run.now + config.pending_lifetime,
        requested_scope=scope,
        issuer=issuer,
        require_iss=bool(run.inputs.get("require_iss", False)),
    )
    run.result = authorization_url(config, state, code_challenge(verifier), scope)
    run.details.update(scope=scope, expires_in=config.pending_lifetime)


@REGISTRY.action("store_code")
def store_code(run: Run) -> None:
    """Use up the state value and keep the code with its verifier.

    The code gets its own `pending_lifetime` from now, so a failed exchange
    can be retried for that long before `abandon` drops the code.
    """
    config = _config(run)
    callback = _callback(run)
    verifier = run.data["code_verifier"]
    issuer = run.data.get("issuer")
    run.data.clear()
    run.data.update(
        code=callback.code,
        code_verifier=verifier,
        issuer=issuer,
        pending_expires_at=run.now + config.pending_lifetime,
    )
    if callback.iss is not None:
        run.details["iss"] = callback.iss[:200]


@REGISTRY.action("clear_grant")
def clear_grant(run: Run) -> None:
    """Drop every token and pending value; record the error if one caused it."""
    run.data.clear()
    if run.inputs.get("revoked") is not None:
        run.details["revoked"] = bool(run.inputs["revoked"])
    error = _error_of(run)
    if error is not None:
        run.outcome = error.code
        run.data["last_error"] = error.code
        run.details.update(_error_details(error))


@REGISTRY.action("record_error")
def record_error(run: Run) -> None:
    """Keep the data and record the error that interrupted the step."""
    error = _error_of(run)
    if error is not None:
        run.outcome = error.code
        run.data["last_error"] = error.code
        run.details.update(_error_details(error))


@REGISTRY.action("store_tokens")
def store_tokens(run: Run) -> None:
    """Replace code and verifier with the tokens of the response."""
    token: TokenSet = run.inputs["token"]
    run.data.clear()
    _put_tokens(run, token)


@REGISTRY.action("store_refreshed_tokens")
def store_refreshed_tokens(run: Run) -> None:
    """Store refreshed tokens, keeping the old refresh token if none came."""
    token: TokenSet = run.inputs["token"]
    old_refresh = run.data.get("refresh_token")
    old_scope = run.data.get("scope")
    run.data.clear()
    _put_tokens(run, token)
    # parse_token_response already copies the held refresh token into a
    # response without one, so an unchanged token also means it was kept.
    if old_refresh and token.refresh_token in (None, old_refresh):
        run.data["refresh_token"] = old_refresh
        run.details["refresh_token_received"] = False
        run.details["refresh_token_kept"] = True
    if token.scope is None and old_scope is not None:
        run.data["scope"] = old_scope


@REGISTRY.action("mark_expired")
def mark_expired(run: Run) -> None:
    reason = run.inputs.get("reason", "requested")
    run.data["expired_reason"] = str(reason)[:100]
    run.details["reason"] = run.data["expired_reason"]


@REGISTRY.action("take_refresh_lease")
def take_refresh_lease(run: Run) -> None:
    """Give this caller the refresh lease; its id goes to `result`."""
    config = _config(run)
    lease_id = secrets.token_hex(16)
    run.data["lease_id"] = lease_id
    run.data["lease_expires_at"] = run.now + config.refresh_lease
    run.result = lease_id
    run.details["lease_seconds"] = config.refresh_lease


@REGISTRY.action("release_refresh_lease")
def release_refresh_lease(run: Run) -> None:
    """Give up the lease after a failed refresh; the refresh token stays."""
    run.data.pop("lease_id", None)
    run.data.pop("lease_expires_at", None)
    record_error(run)


def _put_tokens(run: Run, token: TokenSet) -> None:
    run.data.update(
        access_token=token.access_token,
        token_type=token.token_type,
        expires_at=token.expires_at,
        refresh_token=token.refresh_token,
        scope=token.scope,
    )
    run.details.update(
        token_type=token.token_type,
        scope=token.scope,
        expires_at=token.expires_at,
        refresh_token_received=bool(token.refresh_token),
    )


def _error_of(run: Run) -> FlowEngineError | None:
    error = run.inputs.get("error")
    if isinstance(error, FlowEngineError):
        return error
    callback = run.inputs.get("callback")
    if isinstance(callback, Callback) and callback.error:
        return callback.as_error()
    return None


def _error_details(error: FlowEngineError) -> dict[str, Any]:
    details: dict[str, Any] = {"error": error.code}
    if isinstance(error, OAuthError) and error.error_description:
        details["error_description"] = error.error_description[:_DESCRIPTION_LIMIT]
    return details


def tokens_of(data: dict[str, Any]) -> TokenSet | None:
    """Return the tokens held in a flow's data, or None."""
    if not data.get("access_token"):
        return None
    expires_at = data.get("expires_at")
    return TokenSet(
        access_token=str(data["access_token"]),
        token_type=str(data.get("token_type") or "Bearer"),
        expires_at=None if expires_at is None else float(expires_at),
        refresh_token=data.get("refresh_token") or None,
        scope=data.get("scope"),
    )
