"""The public client: runs the authorization code grant with real adapters.

`OAuthClient` does the I/O: it sends the requests that the protocol code
builds, then fires the flow's triggers with what came back, so the flow's
state and audit trail always record how far the grant got.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from flowengine.adapters.clock import SystemClock
from flowengine.definition import FlowDefinition, load_definition
from flowengine.engine import Clock, Engine, FireResult, Store
from flowengine.errors import (
    ConfigError,
    ConflictError,
    DefinitionError,
    FlowEngineError,
    FlowNotFoundError,
    InvalidTriggerError,
    OAuthError,
    ProtocolError,
    RefreshTimeoutError,
    RemoteError,
    ResourceError,
    StateMismatchError,
    StoreUnavailableError,
    TokenExpiredError,
    TransitionError,
    TransportError,
)
from flowengine.grant import REGISTRY, pending_expired, tokens_of
from flowengine.oauth.config import ClientConfig
from flowengine.oauth.metadata import (
    ServerMetadata,
    apply_metadata,
    metadata_requests,
    parse_metadata,
)
from flowengine.oauth.pkce import states_equal
from flowengine.oauth.protocol import (
    Callback,
    ResourceResult,
    TokenRejected,
    TokenSet,
    parse_callback,
    parse_token_response,
    read_resource_response,
    refresh_request,
    resource_request,
    revocation_request,
    token_request,
)
from flowengine.records import AuditEvent, FlowRecord
from flowengine.redaction import abbreviate, mask_exception

if TYPE_CHECKING:
    from flowengine.adapters.http import HttpClient

logger = logging.getLogger(__name__)

REQUIRED_TRIGGERS = (
    "start",
    "receive_code",
    "receive_error",
    "receive_token",
    "reject_code",
    "exchange_failed",
    "expire",
    "refresh",
    "reject_refresh",
    "refresh_failed",
    "logout",
    "abandon",
)

# OAuth errors after which the refresh token is known to be dead (RFC 6749
# §5.2); any other failure keeps it for a retry.
_REFRESH_TOKEN_DEAD = frozenset({"invalid_grant", "unauthorized_client"})

# Attempts at expiring a token while other callers append audit events.
_EXPIRE_ATTEMPTS = 5

# Attempts at saving a refresh outcome; each conflict means another writer
# saved the flow in between, so this bounds the retries of a storm.
_LEASE_HOLDER_ATTEMPTS = 50


@dataclasses.dataclass(frozen=True)
class FlowStatus:
    """The parts of a flow a user may see: no secret, the token abbreviated."""

    flow_id: str
    state: str
    valid_triggers: tuple[str, ...]
    access_token: str | None
    scope: str | None
    has_refresh_token: bool
    expires_at: float | None
    last_error: str | None
    version: int
    updated_at: float


# The adapters import requests and sqlite3. They are imported only when a
# client is built, so that `import flowengine` keeps the sans-IO core free of
# them.


def _open_store(config: ClientConfig) -> Store:
    from flowengine.adapters.stores import open_store

    return open_store(config.store)


def _http_client(config: ClientConfig) -> HttpClient:
    from flowengine.adapters.http import HttpClient

    return HttpClient(config.timeout)


@contextlib.contextmanager
def _masking(sent: Sequence[str | None]) -> Iterator[None]:
    """Mask the secrets a request sent in any error its response causes.

    Servers echo requests in error pages and descriptions, so an error built
    from a response may carry the client secret, the code or a token.
    """
    try:
        yield
    except FlowEngineError as exc:
        mask_exception(exc, [value for value in sent if value])
        raise


def _no_callback_expected(flow_id: str, exc: InvalidTriggerError) -> StateMismatchError:
    # A flow takes one callback per authorization request, so a second one
    # (a replay or a reload of the redirect) carries a used state.
    return StateMismatchError(
        f"flow {flow_id} is in state {exc.state!r} and expects no callback; "
        "its state value was already used or never issued. Start the grant again"
    )


class OAuthClient:
    """Run authorization code grants whose steps are transitions of a flow.

    Args:
        config: client settings; the demo defaults when omitted.
        store: where flows live; opened from `config.store` when omitted.
        http: the HTTP adapter; built from the configured timeouts if omitted.
        clock: the time source; the system clock if omitted.
        definition: the flow definition; the shipped authorization_code
            definition if omitted. It must have every trigger the client
            fires (REQUIRED_TRIGGERS).
        sleep: how the client waits while another caller refreshes.

    Raises:
        DefinitionError: the definition lacks a trigger the client fires.
    """

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        store: Store | None = None,
        http: HttpClient | None = None,
        clock: Clock | None = None,
        definition: FlowDefinition | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or ClientConfig()
        self.store = store if store is not None else _open_store(self.config)
        self.http = http or _http_client(self.config)
        self.clock = clock or SystemClock()
        self.definition = definition or load_definition("authorization_code", REGISTRY)
        self._check_definition(self.definition)
        self.engine = Engine(
            self.definition, REGISTRY, self.store, self.clock, context=self.config
        )
        self._sleep = sleep
        self._metadata: ServerMetadata | None = None
        self._discovered = config is None or self.config.issuer is None
        self._discovery_lock = threading.Lock()

    @staticmethod
    def _check_definition(definition: FlowDefinition) -> None:
        missing = [t for t in REQUIRED_TRIGGERS if t not in definition.triggers]
        if missing:
            raise DefinitionError(
                definition.source,
                "transitions",
                f"trigger(s) {', '.join(missing)} used by OAuthClient are missing",
                "add them or use the shipped authorization_code definition",
            )

    # --- discovery ---------------------------------------------------------

    @property
    def metadata(self) -> ServerMetadata | None:
        """The authorization server's metadata, once discovered."""
        return self._metadata

    def discover(self) -> ServerMetadata | None:
        """Fetch the metadata of the configured issuer (RFC 8414).

        Tries `/.well-known/oauth-authorization-server`, then
        `/.well-known/openid-configuration`. The document's `issuer` must
        equal the configured one. Endpoints missing from the configuration
        are taken from it. Returns None when no issuer is configured.

        Raises:
            ProtocolError: the metadata is invalid, names another issuer, or
                is missing while an endpoint is not configured either.
            TransportError: the server could not be reached.
        """
        issuer = self.config.issuer
        if issuer is None:
            return None
        with self._discovery_lock:
            if self._discovered:
                return self._metadata
            metadata = self._fetch_metadata(issuer)
            if metadata is not None:
                self.config = apply_metadata(self.config, metadata)
                self.engine.context = self.config
            self._metadata = metadata
            self._discovered = True
            return metadata

    def _fetch_metadata(self, issuer: str) -> ServerMetadata | None:
        last: ProtocolError | None = None
        for request in metadata_requests(issuer):
            response = self.http.send(request)
            if response.status == 404:
                last = ProtocolError("metadata not found", status=404)
                continue
            return parse_metadata(
                response,
                issuer,
                allow_insecure_http=self.config.allow_insecure_http,
            )

        # Neither well-known document exists: explicit endpoints still work.
        if self.config.authorization_endpoint and self.config.token_endpoint:
            logger.warning(
                "issuer %s publishes no metadata; using the configured endpoints",
                issuer,
            )
            return None
        raise ProtocolError(
            f"issuer {issuer} publishes no metadata at /.well-known/"
            "oauth-authorization-server or /.well-known/openid-configuration; "
            "configure authorization_endpoint and token_endpoint instead"
        ) from last

    def _ready(self) -> None:
        if not self._discovered:
            self.discover()

    # --- starting the grant ------------------------------------------------

    def create_flow(self, flow_id: str | None = None) -> str:
        """Create a flow in the initial state and return its id."""
        return self.engine.create(flow_id).id

    def start(self, flow_id: str | None = None, *, scope: str | None = None) -> str:
        """Begin a grant and return the authorization URL to send the user to.

        Creates the flow when `flow_id` is None or unknown. Each call makes a
        new state value and PKCE verifier (RFC 6749 §4.1.1, RFC 7636 §4.3).

        Raises:
            InvalidTriggerError: the flow is in a state that cannot start a
                grant, such as token_held; log out first.
        """
        self._ready()
        flow_id = self._ensure_flow(flow_id)
        inputs: dict[str, Any] = {}
        if scope is not None:
            inputs["scope"] = scope
        if self._metadata is not None:
            # The pending request remembers its issuer, so a response from
            # another server is rejected (RFC 9207 §2.4, mix-up defence).
            inputs["issuer"] = self._metadata.issuer
            inputs["require_iss"] = self._metadata.iss_parameter_supported
        result = self.engine.fire(flow_id, "start", **inputs)
        return str(result.result)

    def _ensure_flow(self, flow_id: str | None) -> str:
        if flow_id is None:
            return self.create_flow()
        try:
            self.engine.load(flow_id)
        except FlowNotFoundError:
            return self.create_flow(flow_id)
        return flow_id

    # --- callback and code exchange ----------------------------------------

    def handle_callback(self, flow_id: str, callback_url: str) -> FlowRecord:
        """Apply the redirect back from the authorization endpoint.

        Checks `state` (and `iss` when known), then exchanges the code for a
        token (RFC 6749 §4.1.2 to §4.1.4).

        Raises:
            StateMismatchError: the state is missing, wrong, used or expired;
                the flow keeps waiting for the right callback.
            OAuthError: the callback or the token endpoint returned an error
                (for example access_denied).
            ProtocolError: the callback or the token response is malformed.
            TransportError: the token endpoint could not be reached; the flow
                stays in code_received and `exchange_code` retries.
        """
        try:
            callback = parse_callback(callback_url)
        except ProtocolError as exc:
            self.engine.record_failure(flow_id, "receive_code", exc)
            raise

        if callback.error is not None:
            self._apply_error_callback(flow_id, callback)

        try:
            self.engine.fire(flow_id, "receive_code", callback=callback)
        except InvalidTriggerError as exc:
            raise _no_callback_expected(flow_id, exc) from exc
        return self.exchange_code(flow_id)

    def _apply_error_callback(self, flow_id: str, callback: Callback) -> NoReturn:
        error = callback.as_error()
        try:
            self.engine.fire(flow_id, "receive_error", callback=callback)
        except (TransitionError, InvalidTriggerError, ConflictError) as exc:
            if isinstance(exc, InvalidTriggerError) and callback.state is not None:
                raise _no_callback_expected(flow_id, exc) from exc
            if callback.state is not None:
                raise
            # Some servers omit `state` on error redirects. The error code is
            # still shown, but not the description, which a forger could
            # have written; the flow keeps waiting for its real callback.
            raise OAuthError(error.error, None, None) from exc
        raise error

    def find_flow_for_callback(
        self, flow_ids: Sequence[str], callback_url: str
    ) -> str | None:
        """Return which of `flow_ids` is waiting for this callback's `state`.

        Lets one browser session run several grants at once (one per tab):
        the callback goes to the flow whose pending state value it carries.
        States are compared in constant time. Returns None when no flow
        matches or the callback cannot be parsed; `handle_callback` then
        reports why.
        """
        try:
            received = parse_callback(callback_url).state
        except ProtocolError:
            return None
        if received is None:
            return None
        for flow_id in flow_ids:
            try:
                record = self.engine.load(flow_id)
            except FlowNotFoundError:
                continue
            expected = record.data.get("state")
            waiting = record.state == "awaiting_callback"
            if (
                waiting
                and isinstance(expected, str)
                and states_equal(expected, received)
            ):
                return flow_id
        return None

    def exchange_code(self, flow_id: str) -> FlowRecord:
        """Exchange the received code for tokens (RFC 6749 §4.1.3).

        Raises:
            OAuthError: the token endpoint rejected the code; the flow goes
                back to unauthorized.
            ProtocolError: the response is malformed; the flow stays in
                code_received.
            TransportError: the request failed; the flow stays in
                code_received.
        """
        self._ready()
        record = self.engine.load(flow_id)
        if record.state != "code_received":
            raise InvalidTriggerError(
                flow_id,
                record.state,
                "receive_token",
                self.engine.valid_triggers(record.state),
            )
        # NOTE: two concurrent retries of a failed exchange both send the
        # code; the server rejects the second (RFC 6749 §4.1.2). A callback
        # itself is exchanged once, since receive_code is a compare-and-set.
        request = token_request(
            self.config, record.data["code"], record.data["code_verifier"]
        )
        requested_at = self.clock.now()
        sent_secrets = (
            self.config.client_secret,
            record.data["code"],
            record.data["code_verifier"],
        )
        try:
            with _masking(sent_secrets):
                token = parse_token_response(self.http.send(request), requested_at)
        except OAuthError as exc:
            self.engine.fire(flow_id, "reject_code", error=exc)
            raise
        except (TransportError, ProtocolError) as exc:
            self.engine.fire(flow_id, "exchange_failed", error=exc)
            raise
        return self._save_tokens(flow_id, "receive_token", token=token).record

    # --- using the token ---------------------------------------------------

    def access_token(self, flow_id: str) -> str:
        """Return an access token that is usable now, refreshing if needed.

        A token is usable until its expiry minus `expiry_leeway`. A token of
        unknown lifetime is used until the resource rejects it.

        Raises:
            TokenExpiredError: no token is held and none can be refreshed.
        """
        record = self.engine.load(flow_id)
        if record.state == "token_held" and self._usable(record):
            return str(record.data["access_token"])
        if record.state == "token_held":
            self._expire(flow_id, record, "expiry time reached")
        return self._refreshed_token(flow_id)

    def fetch_resource(self, flow_id: str) -> ResourceResult:
        """Call the protected resource with the flow's bearer token.

        On a 401 the flow moves to expired and, with a refresh token, through
        one refresh and one retry. A second 401 is an error, never a loop.

        Raises:
            TokenExpiredError: no usable token and no refresh possible.
            ResourceError: the resource refused (403 insufficient_scope with
                the required scope) or failed.
            TransportError: the resource could not be reached.
        """
        token = self.access_token(flow_id)
        try:
            return self._call_resource(token)
        except TokenRejected as rejected:
            reason = rejected.challenge.get("error") or "resource answered 401"
            record = self.engine.load(flow_id)
            if (
                record.state == "token_held"
                and record.data.get("access_token") == token
            ):
                self._expire(flow_id, record, f"resource: {reason}")

        token = self._refreshed_token(flow_id)
        try:
            return self._call_resource(token)
        except TokenRejected as rejected:
            # The flow must not keep presenting a token the resource rejected.
            record = self.engine.load(flow_id)
            if record.state == "token_held":
                self._expire(flow_id, record, "resource rejected a refreshed token")
            raise ResourceError(
                "resource rejected a freshly refreshed token; check that it "
                "accepts tokens of this authorization server",
                status=401,
                error=rejected.challenge.get("error"),
            ) from None

    def _call_resource(self, token: str) -> ResourceResult:
        with _masking((token,)):
            return read_resource_response(
                self.http.send(resource_request(self.config, token))
            )

    def _usable(self, record: FlowRecord) -> bool:
        expires_at = record.data.get("expires_at")
        if expires_at is None:
            return True
        return bool(self.clock.now() < float(expires_at) - self.config.expiry_leeway)

    def _expire(self, flow_id: str, record: FlowRecord, reason: str) -> None:
        """Expire the token that `record` holds, and no newer one.

        The expiry is a compare-and-set on the version read: a caller with a
        stale read must not expire a token that another caller has just
        refreshed, which would cause a second refresh.
        """
        token = record.data.get("access_token")
        for _ in range(_EXPIRE_ATTEMPTS):
            try:
                self.engine.fire(
                    flow_id, "expire", expected_version=record.version, reason=reason
                )
                return
            except InvalidTriggerError:
                break
            except ConflictError:
                record = self.engine.load(flow_id)
                if record.state != "token_held":
                    break
                if record.data.get("access_token") != token:
                    break
        # Another caller moved the flow first; the refresh path reads the
        # new state.
        logger.info("flow %s: already moved on from %s", flow_id, record.state)

    # --- refresh -----------------------------------------------------------

    def refresh(self, flow_id: str) -> FlowRecord:
        """Refresh the access token now, even if it has not expired yet.

        Raises:
            TokenExpiredError: the flow has no refresh token.
            OAuthError: the refresh token was rejected; the flow goes back to
                unauthorized.
            TransportError, ProtocolError: the refresh failed; the refresh
                token is kept and the flow stays expired, ready to retry.
        """
        record = self.engine.load(flow_id)
        if record.state == "token_held":
            self._expire(flow_id, record, "refresh requested")
        self._refreshed_token(flow_id)
        return self.engine.load(flow_id)

    def _refreshed_token(self, flow_id: str, wait: float | None = None) -> str:
        """Return a fresh token, refreshing once across all callers.

        Only the caller that wins `expired -> refreshing` calls the token
        endpoint; the others wait for token_held, or take over when the
        lease runs out.
        """
        # The wait is counted in the delays slept, not read from the clock,
        # so an injected clock that never advances cannot make it endless.
        patience = wait if wait is not None else self.config.refresh_lease * 2
        waited = 0.0
        delay = 0.01
        while True:
            record = self.engine.load(flow_id)
            lease = self._try_take_lease(flow_id, record)
            if lease is not None:
                return self._checked_token(self._run_refresh(flow_id, lease))
            if record.state == "token_held":
                return self._checked_token(record)
            if record.state not in ("expired", "refreshing"):
                raise TokenExpiredError(
                    f"flow {flow_id} has no token (state {record.state!r}); "
                    "start a new grant"
                )
            if waited >= patience:
                raise RefreshTimeoutError(
                    f"another caller has been refreshing flow {flow_id} for over "
                    f"{patience:g} s; retry later"
                )
            self._sleep(delay)
            waited += delay
            delay = min(delay * 2, 0.5)

    def _try_take_lease(self, flow_id: str, record: FlowRecord) -> FireResult | None:
        if record.state == "expired" and not record.data.get("refresh_token"):
            raise TokenExpiredError(
                f"flow {flow_id} has an expired token and no refresh token; "
                "start a new grant"
            )
        if record.state == "refreshing":
            lease_end = float(record.data.get("lease_expires_at", 0))
            if self.clock.now() < lease_end:
                return None
        elif record.state != "expired":
            return None
        try:
            return self.engine.fire(flow_id, "refresh", expected_version=record.version)
        except (ConflictError, InvalidTriggerError, TransitionError):
            # Another caller took the lease or finished the refresh since
            # `record` was read; the caller's loop reads the flow again.
            return None

    def _run_refresh(self, flow_id: str, lease: FireResult) -> FlowRecord:
        self._ready()
        lease_id = lease.result
        previous = tokens_of(dict(lease.record.data))
        assert previous is not None and previous.refresh_token
        request = refresh_request(self.config, previous.refresh_token)
        requested_at = self.clock.now()
        sent_secrets = (
            self.config.client_secret,
            previous.refresh_token,
            previous.access_token,
        )
        try:
            with _masking(sent_secrets):
                token = parse_token_response(
                    self.http.send(request), requested_at, previous
                )
        except OAuthError as exc:
            trigger = (
                "reject_refresh"
                if exc.error in _REFRESH_TOKEN_DEAD
                else "refresh_failed"
            )
            self._fire_holding_lease(flow_id, trigger, error=exc, lease_id=lease_id)
            raise
        except RemoteError as exc:
            self._fire_holding_lease(
                flow_id, "refresh_failed", error=exc, lease_id=lease_id
            )
            raise
        result = self._fire_holding_lease(
            flow_id, "receive_token", token=token, lease_id=lease_id
        )
        return result.record

    def _checked_token(self, record: FlowRecord) -> str:
        if not self._usable(record):
            lifetime = float(record.data["expires_at"]) - self.clock.now()
            raise TokenExpiredError(
                f"the token endpoint issued flow {record.id} a token that expires "
                f"in {lifetime:.0f} s, within expiry_leeway "
                f"({self.config.expiry_leeway:g} s); lower expiry_leeway"
            )
        return str(record.data["access_token"])

    def _fire_holding_lease(
        self, flow_id: str, trigger: str, **inputs: Any
    ) -> FireResult:
        """Fire a trigger guarded by the refresh lease, retrying after conflicts.

        The server may already have rotated the refresh token, so giving up
        on a conflict would lose the only valid tokens. Retrying is safe
        because the lease guard still decides whether the trigger applies.
        """
        return self._save_tokens(flow_id, trigger, **inputs)

    def _save_tokens(self, flow_id: str, trigger: str, **inputs: Any) -> FireResult:
        """Fire a trigger that saves the token endpoint's response.

        The server has already used the code or rotated the refresh token,
        so the response exists only in memory until it is saved. A conflict
        is retried at once. An unavailable store, such as a SQLite file
        locked by another process, is retried for up to `refresh_lease`
        seconds.
        """
        waited = 0.0
        delay = 0.05
        for _ in range(_LEASE_HOLDER_ATTEMPTS - 1):
            try:
                return self.engine.fire(flow_id, trigger, **inputs)
            except ConflictError:
                logger.info("flow %s: %s retried after a conflict", flow_id, trigger)
            except StoreUnavailableError as exc:
                if waited >= self.config.refresh_lease:
                    logger.error(
                        "flow %s: the token endpoint's response to %s could not be "
                        "saved and is lost; a new grant is needed: %s",
                        flow_id,
                        trigger,
                        exc,
                    )
                    raise
                logger.warning("flow %s: %s retried: %s", flow_id, trigger, exc)
                self._sleep(delay)
                waited += delay
                delay = min(delay * 2, 1.0)
        return self.engine.fire(flow_id, trigger, **inputs)

    # --- the rest ----------------------------------------------------------

    def logout(self, flow_id: str) -> FlowRecord:
        """Revoke the flow's tokens, then drop them and any pending values.

        With a revocation endpoint (configured or discovered) the refresh
        token and then the access token are revoked (RFC 7009 §2). A failed
        revocation is logged and recorded in the audit event; the local
        logout happens anyway, since the user asked to be logged out.

        Raises:
            InvalidTriggerError: the flow is already logged out.
        """
        self._ready()
        record = self.engine.load(flow_id)
        if "logout" not in self.engine.valid_triggers(record.state):
            raise InvalidTriggerError(
                flow_id,
                record.state,
                "logout",
                self.engine.valid_triggers(record.state),
            )
        revoked = self._revoke(flow_id, tokens_of(dict(record.data)))
        return self.engine.fire(flow_id, "logout", revoked=revoked).record

    def _revoke(self, flow_id: str, tokens: TokenSet | None) -> bool | None:
        if tokens is None or not self.config.revocation_endpoint:
            return None
        held = [
            (tokens.refresh_token, "refresh_token"),
            (tokens.access_token, "access_token"),
        ]
        for token, hint in held:
            if not token:
                continue
            try:
                response = self.http.send(revocation_request(self.config, token, hint))
            except RemoteError as exc:
                logger.warning(
                    "flow %s: revoking the %s failed: %s", flow_id, hint, exc
                )
                return False
            # RFC 7009 §2.2: 200 means revoked or unknown, both fine.
            if response.status != 200:
                logger.warning(
                    "flow %s: revoking the %s failed with HTTP %s",
                    flow_id,
                    hint,
                    response.status,
                )
                return False
        return True

    # --- expiry and retention ----------------------------------------------

    def expire_abandoned(self) -> list[str]:
        """Fire `abandon` on every flow whose pending request expired.

        A flow in awaiting_callback or code_received whose
        `pending_expires_at` has passed loses its state value, PKCE verifier
        and code, and goes to unauthorized. Its audit trail records the
        `abandon` event. Flows of other definitions are left alone, and a
        flow that another caller moves meanwhile is skipped.

        Returns:
            The ids of the abandoned flows.
        """
        now = self.clock.now()
        abandoned: list[str] = []
        for record in self._own_flows():
            if "abandon" not in self.engine.valid_triggers(record.state):
                continue
            if not pending_expired(record.data, now):
                continue
            if self._abandon(record):
                abandoned.append(record.id)
        logger.info(
            "abandoned %d flow(s) with an expired pending request: %s",
            len(abandoned),
            ", ".join(abandoned) or "none",
        )
        return abandoned

    def _abandon(self, record: FlowRecord) -> bool:
        try:
            self.engine.fire(record.id, "abandon", expected_version=record.version)
        except (
            ConflictError,
            FlowNotFoundError,
            InvalidTriggerError,
            TransitionError,
        ) as exc:
            # Another caller moved or deleted the flow since it was listed.
            logger.info("flow %s: not abandoned: %s", record.id, exc)
            return False
        return True

    def purge(self, retention: float | None = None) -> list[str]:
        """Delete flows in unauthorized that have not changed for `retention`.

        A flow is deleted with its audit trail when its `updated_at` is older
        than now minus `retention`. Flows in any other state and flows of
        other definitions are kept. Each deletion is a compare-and-set on the
        version that was read, so a flow that another caller starts again
        meanwhile is kept.

        Args:
            retention: seconds to keep a flow after its last change; the
                configured `audit_retention` when None.

        Returns:
            The ids of the deleted flows.

        Raises:
            ConfigError: `retention` is not a number greater than 0.
        """
        seconds = self._retention(retention)
        cutoff = self.clock.now() - seconds
        deleted: list[str] = []
        for record in self._own_flows():
            if record.state != "unauthorized" or record.updated_at >= cutoff:
                continue
            try:
                self.store.delete(record.id, expected_version=record.version)
            except (ConflictError, FlowNotFoundError) as exc:
                logger.info("flow %s: not purged: %s", record.id, exc)
                continue
            deleted.append(record.id)
        logger.info(
            "purged %d flow(s) in unauthorized unchanged for %.12g s: %s",
            len(deleted),
            seconds,
            ", ".join(deleted) or "none",
        )
        return deleted

    def _retention(self, retention: float | None) -> float:
        if retention is None:
            return self.config.audit_retention
        if (
            isinstance(retention, bool)
            or not isinstance(retention, int | float)
            or math.isnan(retention)
            or retention <= 0
        ):
            raise ConfigError(
                f"retention must be a number of seconds greater than 0, "
                f"not {retention!r}"
            )
        return float(retention)

    def _own_flows(self) -> list[FlowRecord]:
        # NOTE: this loads every flow of the store, because the Store
        # protocol has no query by state or age. The cost grows with the
        # store's size.
        name = self.definition.name
        return [record for record in self.store.flows() if record.definition == name]

    def status(self, flow_id: str) -> FlowStatus:
        """Return what may be shown of a flow, with no secret in it."""
        record = self.engine.load(flow_id)
        token: TokenSet | None = tokens_of(dict(record.data))
        return FlowStatus(
            flow_id=record.id,
            state=record.state,
            valid_triggers=self.engine.valid_triggers(record.state),
            access_token=abbreviate(token.access_token) if token else None,
            scope=token.scope if token else None,
            has_refresh_token=bool(token and token.refresh_token),
            expires_at=token.expires_at if token else None,
            last_error=record.data.get("last_error"),
            version=record.version,
            updated_at=record.updated_at,
        )

    def events(self, flow_id: str) -> list[AuditEvent]:
        """Return the flow's audit trail, oldest first."""
        return self.engine.events(flow_id)

    def close(self) -> None:
        """Close the HTTP session and the store."""
        self.http.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            close()
