"""Tests of secret redaction in URLs, mappings, token labels and reprs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowengine.records import AuditEvent, FlowRecord
from flowengine.redaction import (
    MASK,
    SECRET_NAMES,
    abbreviate,
    is_secret_name,
    redact_mapping,
    redact_query,
    redact_url,
)

SECRET = "s3cr3t-value-9f8e7d"

# --- URLs ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SECRET_NAMES))
def test_redact_url_masks_secret_query_parameter(name: str) -> None:
    url = f"https://client.example/cb?{name}={SECRET}&scope=read"

    redacted = redact_url(url)

    assert SECRET not in redacted
    assert f"{name}={MASK}" in redacted
    assert "scope=read" in redacted


@pytest.mark.parametrize("name", sorted(SECRET_NAMES))
def test_redact_url_masks_secret_fragment_parameter(name: str) -> None:
    url = f"https://client.example/cb#{name}={SECRET}&token_type=Bearer"

    redacted = redact_url(url)

    assert SECRET not in redacted
    assert f"#{name}={MASK}" in redacted
    assert "token_type=Bearer" in redacted


def test_redact_url_masks_callback() -> None:
    url = (
        "https://client.example:8443/oauth/callback"
        f"?code={SECRET}a&state={SECRET}b&iss=https%3A%2F%2Fas.example"
    )

    redacted = redact_url(url)

    assert SECRET not in redacted
    assert redacted == (
        "https://client.example:8443/oauth/callback"
        f"?code={MASK}&state={MASK}&iss=https%3A%2F%2Fas.example"
    )


def test_redact_url_masks_user_and_password() -> None:
    url = f"https://alice:{SECRET}@as.example/token?grant_type=refresh_token"

    redacted = redact_url(url)

    assert SECRET not in redacted
    assert "alice" not in redacted
    assert redacted == f"https://{MASK}@as.example/token?grant_type=refresh_token"


def test_redact_url_masks_password_containing_at() -> None:
    redacted = redact_url(f"https://alice:{SECRET}@x@as.example/")

    assert SECRET not in redacted
    assert redacted == f"https://{MASK}@as.example/"


@pytest.mark.parametrize(
    "query",
    [
        f"Code={SECRET}",
        f"ACCESS_TOKEN={SECRET}",
        f"acc%65ss_token={SECRET}",
        f"code={SECRET}&code={SECRET}2",
        f"a&code={SECRET}",
        f"code={SECRET}%20with%20spaces",
        f"code={SECRET};state=other",
    ],
)
def test_redact_url_masks_query_variants(query: str) -> None:
    redacted = redact_url(f"https://client.example/cb?{query}")

    assert SECRET not in redacted
    assert MASK in redacted


@pytest.mark.parametrize(
    "url",
    [
        "https://client.example/cb",
        "https://client.example/cb?scope=read+write&x=1",
        "https://client.example/cb#section",
        "https://[::1]:9000/cb?next=%2Fhome",
    ],
)
def test_redact_url_keeps_urls_without_secrets(url: str) -> None:
    assert redact_url(url) == url


def test_redact_query_masks_form_body() -> None:
    body = (
        f"grant_type=authorization_code&code={SECRET}"
        f"&code_verifier={SECRET}v&client_secret={SECRET}c"
        "&redirect_uri=https%3A%2F%2Fclient.example%2Fcb"
    )

    redacted = redact_query(body)

    assert SECRET not in redacted
    assert redacted == (
        f"grant_type=authorization_code&code={MASK}&code_verifier={MASK}"
        f"&client_secret={MASK}&redirect_uri=https%3A%2F%2Fclient.example%2Fcb"
    )


# --- mappings --------------------------------------------------------------


def test_secret_names_are_case_insensitive() -> None:
    assert is_secret_name("Authorization")
    assert is_secret_name("REFRESH_TOKEN")
    assert not is_secret_name("token_type")
    assert not is_secret_name("expires_in")


def test_redact_mapping_masks_every_secret_name() -> None:
    values = {name: f"{SECRET}-{name}" for name in SECRET_NAMES}

    redacted = redact_mapping(values)

    assert redacted == {name: MASK for name in SECRET_NAMES}


def test_redact_mapping_is_recursive() -> None:
    values: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": 3600,
        "tokens": {"access_token": SECRET, "scope": "read"},
        "history": [{"code": SECRET, "at": 1}, "plain", [{"state": SECRET}]],
        "pair": ({"password": SECRET},),
        "deep": {"a": {"b": {"Client_Secret": SECRET}}},
    }

    redacted = redact_mapping(values)

    assert SECRET not in repr(redacted)
    assert redacted == {
        "token_type": "Bearer",
        "expires_in": 3600,
        "tokens": {"access_token": MASK, "scope": "read"},
        "history": [{"code": MASK, "at": 1}, "plain", [{"state": MASK}]],
        "pair": [{"password": MASK}],
        "deep": {"a": {"b": {"Client_Secret": MASK}}},
    }


def test_redact_mapping_masks_non_text_secret() -> None:
    redacted = redact_mapping({"token": {"value": SECRET}, "code": [SECRET]})

    assert redacted == {"token": MASK, "code": MASK}


def test_redact_mapping_leaves_input_unchanged() -> None:
    values: dict[str, Any] = {"tokens": [{"access_token": SECRET}]}

    redact_mapping(values)

    assert values == {"tokens": [{"access_token": SECRET}]}


# --- token labels ----------------------------------------------------------


def test_abbreviate_long_token() -> None:
    token = "abcdEFGHijklMNOPqrst"

    label = abbreviate(token)

    assert label == "abcd…(20 chars)"
    assert "abcdE" not in label


@pytest.mark.parametrize("length", [1, 4, 5, 8, 15])
def test_abbreviate_masks_short_token(length: int) -> None:
    token = "Zq9" * 6
    token = token[:length]

    label = abbreviate(token)

    assert label == MASK
    assert token not in label


@pytest.mark.parametrize("token", [None, ""])
def test_abbreviate_missing_token(token: str | None) -> None:
    assert abbreviate(token) == "none"


@settings(database=None)
@given(st.text(min_size=1, max_size=300))
def test_abbreviate_shows_at_most_four_chars(token: str) -> None:
    label = abbreviate(token)

    if len(token) < 16:
        assert label == MASK
    else:
        assert label[:4] == token[:4]
        assert label[4:] == f"…({len(token)} chars)"


# --- reprs -----------------------------------------------------------------


def test_flow_record_repr_hides_secret_values() -> None:
    secrets = {
        "state": "state-value-1a2b",
        "code_verifier": "verifier-value-3c4d",
        "access_token": "access-value-5e6f",
        "refresh_token": "refresh-value-7a8b",
    }
    record = FlowRecord(
        id="f1",
        definition="authorization_code",
        state="token_held",
        version=3,
        created_at=1.0,
        updated_at=2.0,
        data={
            **secrets,
            "scope": "read write",
            "tokens": {"id_token": "id-value-9c0d"},
            "previous": [{"code": "code-value-1e2f"}],
        },
    )

    texts = [repr(record), str(record), f"{record}", repr([record])]

    for text in texts:
        for value in [*secrets.values(), "id-value-9c0d", "code-value-1e2f"]:
            assert value not in text
        assert "read write" in text
        assert "token_held" in text


def test_flow_record_to_dict_keeps_secrets() -> None:
    record = FlowRecord("f1", "d", "s", 0, 1.0, 1.0, {"code": SECRET})

    assert record.to_dict()["data"] == {"code": SECRET}
    assert FlowRecord.from_dict(record.to_dict()) == record


def test_audit_event_round_trips_dict() -> None:
    event = AuditEvent("f1", 2, "2024-01-01T00:00:00.000000Z", "t", "a", "b", "ok")

    assert AuditEvent.from_dict(event.to_dict()) == event
