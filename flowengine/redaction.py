"""Redaction of secrets by name, for reprs, logs, errors and audit details.

A value is secret when its key or query parameter is one of SECRET_NAMES,
whatever its shape, so a new field is masked without a check of its own.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[secure]"

# Parameter and data names whose values are secrets: the client secret, the
# authorization code, tokens, the PKCE verifier, the CSRF `state` value and
# the refresh lease id, which lets its holder finish or fail a refresh.
SECRET_NAMES = frozenset(
    {
        "state",
        "lease_id",
        "code",
        "code_verifier",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "token",
        "authorization",
        "password",
    }
)


def is_secret_name(name: str) -> bool:
    """Return whether values under `name` are secrets."""
    return name.lower() in SECRET_NAMES


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `values` with every secret value masked, recursively.

    Mappings nested in lists and tuples are redacted too.
    """
    redacted: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_name(str(key)):
            redacted[key] = MASK
        else:
            redacted[key] = _redact_value(value)
    return redacted


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_mapping(value)
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def redact_url(url: str) -> str:
    """Return `url` with secret query and fragment parameters masked.

    User information (`user:password@`) is masked too.
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            redact_query(parts.query),
            redact_query(parts.fragment),
        )
    )


def redact_query(query: str) -> str:
    """Return a form-encoded string with secret values masked."""
    if "=" not in query:
        return query
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    masked = [(k, MASK if is_secret_name(k) else v) for k, v in pairs]
    return urllib.parse.urlencode(masked, safe="[]")


def abbreviate(token: str | None) -> str:
    """Return a short, non-reversible label for a token: its first 4 chars.

    Tokens shorter than 16 characters are fully masked, since 4 characters
    would reveal too large a share of them.
    """
    if not token:
        return "none"
    if len(token) < 16:
        return MASK
    return f"{token[:4]}…({len(token)} chars)"


# Values shorter than this are not masked by value: a short value (such as
# a one-letter code in a test) would also mask ordinary words.
_MIN_MASKED_LENGTH = 8


def mask_values(text: str, values: Iterable[str]) -> str:
    """Return `text` with each known secret value masked wherever it appears.

    Also masks the values' form-encoded and percent-encoded spellings, as a
    server that echoes a request writes them. Values shorter than 8
    characters are left alone.
    """
    for value in sorted(set(values), key=len, reverse=True):
        if len(value) < _MIN_MASKED_LENGTH:
            continue
        spellings = {
            value,
            urllib.parse.quote_plus(value),
            urllib.parse.quote(value, safe=""),
        }
        for spelling in spellings:
            text = text.replace(spelling, MASK)
    return text


def mask_exception(error: BaseException, values: Iterable[str]) -> None:
    """Mask known secret values in an error's message and text attributes.

    Servers echo what they receive, so an error built from a response can
    carry the client secret, a code or a token that the client sent.
    """
    secrets_ = [v for v in values if v]
    if not secrets_:
        return
    error.args = tuple(
        mask_values(arg, secrets_) if isinstance(arg, str) else arg
        for arg in error.args
    )
    for name in ("error_description", "error_uri", "excerpt"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            setattr(error, name, mask_values(value, secrets_))
