"""Tests of ClientConfig: demo defaults, URL rules, file loading, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flowengine.errors import ConfigError
from flowengine.oauth.config import (
    ClientConfig,
    check_url,
    default_store_path,
    is_loopback_host,
    load_config,
)

SECRET = "cfg-secret-5d41402abc4b2a76"


def test_defaults_are_demo_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    config = ClientConfig()

    assert config.client_id == "oauth-client-1"
    assert config.client_secret == "oauth-client-secret-1"
    assert config.redirect_uri == "http://localhost:9000/callback"
    assert config.authorization_endpoint == "http://localhost:9001/authorize"
    assert config.token_endpoint == "http://localhost:9001/token"
    assert config.resource_url == "http://localhost:9002/resource"
    assert config.resource_method == "POST"
    assert config.scope == "foo bar"
    assert config.token_auth_method == "client_secret_basic"
    assert config.allow_insecure_http is False
    assert config.store == str(tmp_path / "flowengine" / "flows.sqlite3")


def test_default_store_path_without_xdg_uses_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))

    expected = tmp_path / ".local" / "state" / "flowengine" / "flows.sqlite3"
    assert default_store_path() == str(expected)


def test_every_timeout_is_positive() -> None:
    config = ClientConfig(store="memory:")

    assert config.timeout == (config.connect_timeout, config.read_timeout)
    assert config.connect_timeout > 0
    assert config.read_timeout > 0


# --- URL rules -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        "authorization_endpoint",
        "token_endpoint",
        "resource_url",
        "redirect_uri",
        "revocation_endpoint",
        "issuer",
    ],
)
def test_plain_http_to_remote_host_is_rejected(field: str) -> None:
    values: dict[str, Any] = {"store": "memory:", field: "http://as.example.com/p"}

    with pytest.raises(ConfigError) as caught:
        ClientConfig(**values)

    assert field in str(caught.value)
    assert "allow_insecure_http" in str(caught.value)


def test_remote_http_allowed_with_opt_in() -> None:
    config = ClientConfig(
        store="memory:",
        token_endpoint="http://as.example.com/token",
        allow_insecure_http=True,
    )

    assert config.token_endpoint == "http://as.example.com/token"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9001/token",
        "http://127.0.0.1:9001/token",
        "http://127.8.9.10/token",
        "http://[::1]:9001/token",
        "http://app.localhost/token",
        "https://as.example.com/token",
    ],
)
def test_loopback_http_and_https_are_accepted(url: str) -> None:
    assert ClientConfig(store="memory:", token_endpoint=url).token_endpoint == url


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost.example.com/token",
        "http://127.0.0.1@as.example.com/token",
        "HTTP://as.example.com/token",
        "http://10.0.0.1/token",
    ],
)
def test_disguised_remote_http_is_rejected(url: str) -> None:
    with pytest.raises(ConfigError):
        ClientConfig(store="memory:", token_endpoint=url)


@pytest.mark.parametrize(
    "url",
    ["", "/token", "ftp://localhost/token", "https:///token", "https://as/t#frag"],
)
def test_invalid_urls_are_rejected(url: str) -> None:
    with pytest.raises(ConfigError):
        check_url("token_endpoint", url, allow_insecure_http=False)


def test_is_loopback_host() -> None:
    assert is_loopback_host("LOCALHOST")
    assert is_loopback_host("[::1]")
    assert is_loopback_host("127.0.0.53")
    assert not is_loopback_host("example.com")
    assert not is_loopback_host("192.168.1.1")


# --- validation of values ------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("client_id", ""),
        ("client_id", 42),
        ("client_secret", ""),
        ("client_secret", None),
        ("scope", 7),
        ("resource_method", "DELETE"),
        ("resource_method", 1),
        ("token_auth_method", "private_key_jwt"),
        ("store", None),
        ("connect_timeout", "3"),
        ("connect_timeout", 0),
        ("read_timeout", -1),
        ("read_timeout", True),
        ("pending_lifetime", None),
        ("refresh_lease", 0),
        ("expiry_leeway", -1),
        ("expiry_leeway", "30"),
        ("allow_insecure_http", "yes"),
        ("redirect_uri", 9000),
        ("issuer", ""),
    ],
)
def test_wrong_values_raise_config_error(field: str, value: Any) -> None:
    values: dict[str, Any] = {"store": "memory:", field: value}

    with pytest.raises(ConfigError) as caught:
        ClientConfig(**values)

    assert field in str(caught.value)


def test_replace_validates_the_copy() -> None:
    config = ClientConfig(store="memory:")

    with pytest.raises(ConfigError):
        config.replace(read_timeout=0)

    assert config.replace(read_timeout=0.5).read_timeout == 0.5


# --- loading files -------------------------------------------------------------


def test_yaml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(
        "client_id: yaml-client\n"
        f"client-secret: {SECRET}\n"
        "token_endpoint: https://as.example.com/token\n"
        "read_timeout: 2.5\n"
        "store: 'memory:'\n",
        encoding="utf-8",
    )

    config = load_config(path)

    assert config.client_id == "yaml-client"
    assert config.client_secret == SECRET
    assert config.token_endpoint == "https://as.example.com/token"
    assert config.read_timeout == 2.5
    assert config.scope == "foo bar"


def test_toml_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text(
        'client_id = "toml-client"\n'
        'scope = "read"\n'
        "allow_insecure_http = true\n"
        'token_endpoint = "http://as.example.com/token"\n'
        'store = "memory:"\n',
        encoding="utf-8",
    )

    config = load_config(path)

    assert config.client_id == "toml-client"
    assert config.scope == "read"
    assert config.allow_insecure_http is True
    assert config.token_endpoint == "http://as.example.com/token"


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("scope: read\nstore: 'memory:'\n", encoding="utf-8")

    config = load_config(path, {"scope": "write", "client_id": None})

    assert config.scope == "write"
    assert config.client_id == "oauth-client-1"


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("", encoding="utf-8")

    assert load_config(path, {"store": "memory:"}).client_id == "oauth-client-1"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("client_id: c\ntoken_url: https://as/t\n", encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert "token_url" in str(caught.value)
    assert "token_endpoint" in str(caught.value)


def test_unknown_override_key_is_named() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_config(None, {"colour": "blue"})


def test_wrong_type_in_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('read_timeout = "fast"\nstore = "memory:"\n', encoding="utf-8")

    with pytest.raises(ConfigError, match="read_timeout"):
        load_config(path)


def test_top_level_list_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("- client_id\n- scope\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="key: value"):
        load_config(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [("bad.yaml", "client_id: [unclosed\n"), ("bad.toml", "client_id = \n")],
)
def test_unparsable_file_is_config_error(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")

    with pytest.raises(ConfigError, match=name):
        load_config(path)


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


# --- the secret stays hidden ---------------------------------------------------


def test_repr_hides_client_secret() -> None:
    config = ClientConfig(client_secret=SECRET, store="memory:")

    assert SECRET not in repr(config)
    assert SECRET not in str(config)
    assert "oauth-client-1" in repr(config)


def test_config_errors_hide_client_secret(tmp_path: Path) -> None:
    bad_values: list[dict[str, Any]] = [
        {"token_auth_method": "none"},
        {"token_endpoint": "http://as.example.com/t"},
        {"read_timeout": "x"},
    ]
    for values in bad_values:
        with pytest.raises(ConfigError) as caught:
            ClientConfig(client_secret=SECRET, store="memory:", **values)
        assert SECRET not in str(caught.value)

    path = tmp_path / "client.yaml"
    path.write_text(f"client_secret: {SECRET}\nbogus: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as from_file:
        load_config(path)
    assert SECRET not in str(from_file.value)
