"""Client configuration: defaults, validation and loading from YAML or TOML."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from flowengine.errors import ConfigError

TOKEN_AUTH_METHODS = ("client_secret_basic", "client_secret_post")

_URL_FIELDS = (
    "authorization_endpoint",
    "token_endpoint",
    "resource_url",
    "redirect_uri",
    "revocation_endpoint",
    "issuer",
)


# Endpoints of the demo authorization server, used when no issuer is set.
DEMO_ENDPOINTS = {
    "authorization_endpoint": "http://localhost:9001/authorize",
    "token_endpoint": "http://localhost:9001/token",
}

_OPTIONAL_URLS = (
    "authorization_endpoint",
    "token_endpoint",
    "revocation_endpoint",
    "issuer",
)


def default_store_path() -> str:
    """Return the default store: $FLOWENGINE_STORE if set, else a SQLite file.

    The file is $XDG_STATE_HOME/flowengine/flows.sqlite3, or
    ~/.local/state/flowengine/flows.sqlite3 without XDG_STATE_HOME.
    """
    from_environment = os.environ.get("FLOWENGINE_STORE")
    if from_environment:
        return from_environment
    state_home = os.environ.get("XDG_STATE_HOME") or str(
        Path.home() / ".local" / "state"
    )
    return str(Path(state_home) / "flowengine" / "flows.sqlite3")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Settings of one confidential client and the servers it talks to.

    The defaults are the demo setup: client `oauth-client-1` on
    http://localhost:9000, the authorization server on port 9001 and the
    protected resource on port 9002. Times are in seconds.

    Without `issuer`, missing endpoints default to the demo authorization
    server. With `issuer`, the client fills them from the server's metadata
    (RFC 8414) before first use; endpoints set here still win.
    """

    client_id: str = "oauth-client-1"
    client_secret: str = dataclasses.field(default="oauth-client-secret-1", repr=False)
    redirect_uri: str = "http://localhost:9000/callback"
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    revocation_endpoint: str | None = None
    resource_url: str = "http://localhost:9002/resource"
    resource_method: str = "POST"
    scope: str = "foo bar"
    issuer: str | None = None
    token_auth_method: str = "client_secret_basic"
    connect_timeout: float = 3.05
    read_timeout: float = 10.0
    expiry_leeway: float = 30.0
    pending_lifetime: float = 600.0
    refresh_lease: float = 30.0
    # How long a flow in unauthorized, with its audit trail, is kept after
    # its last change before `OAuthClient.purge` deletes it.
    audit_retention: float = 30 * 86_400.0
    allow_insecure_http: bool = False
    store: str = dataclasses.field(default_factory=default_store_path)

    def __post_init__(self) -> None:
        if self.issuer is None:
            for name, default in DEMO_ENDPOINTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)
        self._check_text_fields()
        self._check_urls()
        self._check_numbers()
        if self.token_auth_method not in TOKEN_AUTH_METHODS:
            raise ConfigError(
                f"token_auth_method {self.token_auth_method!r} is not supported; "
                f"use one of {', '.join(TOKEN_AUTH_METHODS)}"
            )
        if self.resource_method.upper() not in ("GET", "POST"):
            raise ConfigError(
                f"resource_method {self.resource_method!r} is not supported; "
                "use GET or POST"
            )

    def _check_text_fields(self) -> None:
        if not isinstance(self.client_id, str):
            raise ConfigError(
                f"client_id must be text, not {self.client_id!r}; quote it in "
                "the configuration file"
            )
        if not isinstance(self.client_secret, str):
            # The value is a secret, so only its type is named.
            raise ConfigError(
                f"client_secret must be text, not {type(self.client_secret).__name__}"
                "; quote it in the configuration file"
            )
        for name in ("client_id", "client_secret"):
            if not getattr(self, name):
                raise ConfigError(f"{name} is missing; set it in the configuration")
        for name in ("scope", "resource_method", "token_auth_method", "store"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ConfigError(f"{name} must be text, not {value!r}")
        if not isinstance(self.allow_insecure_http, bool):
            raise ConfigError(
                f"allow_insecure_http must be true or false, "
                f"not {self.allow_insecure_http!r}"
            )

    def _check_urls(self) -> None:
        for name in _URL_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_URLS:
                continue
            check_url(name, value, allow_insecure_http=self.allow_insecure_http)

    def _check_numbers(self) -> None:
        for name in (
            "connect_timeout",
            "read_timeout",
            "pending_lifetime",
            "refresh_lease",
            "audit_retention",
        ):
            value = _finite_seconds(name, getattr(self, name))
            if value <= 0:
                raise ConfigError(f"{name} must be greater than 0 seconds, not {value}")
        leeway = _finite_seconds("expiry_leeway", self.expiry_leeway)
        if leeway < 0:
            raise ConfigError(
                f"expiry_leeway must be 0 or more seconds, not {leeway!r}"
            )

    def endpoint(self, name: str) -> str:
        """Return the URL of endpoint `name`, such as "token_endpoint".

        Raises:
            ConfigError: the endpoint is neither configured nor discovered.
        """
        value = getattr(self, name)
        if not isinstance(value, str):
            raise ConfigError(
                f"{name} is not known; set it in the configuration, or set "
                "issuer so that the client discovers it"
            )
        return value

    @property
    def timeout(self) -> tuple[float, float]:
        """The (connect, read) timeout pair for every HTTP call."""
        return (self.connect_timeout, self.read_timeout)

    def replace(self, **changes: Any) -> ClientConfig:
        """Return a copy with `changes` applied and validated."""
        return dataclasses.replace(self, **changes)


def _finite_seconds(name: str, value: object) -> float:
    """Return `value` if it is a finite number, or raise ConfigError naming `name`.

    YAML reads `.nan` and `.inf` as floats. NaN compares false with every
    limit and infinity overflows socket timeouts, so both are rejected here.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:
        # An integer of hundreds of digits has no float value.
        finite = False
    if not finite:
        raise ConfigError(
            f"{name} must be a finite number of seconds, not {value!r}; "
            "write a number such as 30"
        )
    return value


def is_loopback_host(host: str) -> bool:
    """Return whether `host` names this machine (localhost or a loopback IP)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(name: str, value: object, *, allow_insecure_http: bool) -> str:
    """Check that `value` is an absolute http(s) URL allowed for `name`.

    Plain http is allowed only for loopback hosts unless `allow_insecure_http`
    is set (RFC 9700 §2.6: endpoints other than loopback must use TLS).

    Raises:
        ConfigError: the URL is missing, relative, has a fragment or uses
            plain http to a host that is not loopback.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} is missing; set it to an absolute URL")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{name} {value!r} is not an absolute http(s) URL; "
            "write it as https://host/path"
        )
    if parts.fragment:
        raise ConfigError(f"{name} {value!r} must not contain a fragment ('#...')")
    if (
        parts.scheme == "http"
        and not allow_insecure_http
        and not is_loopback_host(parts.hostname)
    ):
        raise ConfigError(
            f"{name} {value!r} uses plain http to a host that is not loopback; "
            "use https, or set allow_insecure_http: true for a test setup"
        )
    return value


_FIELDS = {f.name: f for f in dataclasses.fields(ClientConfig)}


def load_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> ClientConfig:
    """Build a ClientConfig from defaults, a YAML or TOML file and overrides.

    Later sources win: the file over the defaults, `overrides` (for example
    command-line options; None values are ignored) over the file.

    Raises:
        ConfigError: the file cannot be read or parsed, has an unknown key,
            or a value is invalid.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path)))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(_FIELDS))}"
        )
    try:
        return ClientConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            raw: object = tomllib.loads(text)
        else:
            raw = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"configuration file {path} is not valid: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"configuration file {path} must contain key: value pairs at the top"
        )
    return {str(k).replace("-", "_"): v for k, v in raw.items()}
