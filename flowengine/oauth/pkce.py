"""PKCE with the S256 method (RFC 7636) and the `state` value."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

VERIFIER_BYTES = 64  # 86 base64url characters, inside RFC 7636 §4.1's 43-128
STATE_BYTES = 32  # 256 bits


def new_code_verifier() -> str:
    """Return a fresh code verifier of 86 unreserved characters."""
    return secrets.token_urlsafe(VERIFIER_BYTES)


def code_challenge(verifier: str) -> str:
    """Return the S256 challenge: BASE64URL(SHA256(verifier)), no padding.

    RFC 7636 §4.2.
    """
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """Return a fresh `state` value of 256 random bits (RFC 6749 §10.12)."""
    return secrets.token_urlsafe(STATE_BYTES)


def states_equal(expected: str, received: str) -> bool:
    """Compare two state values in constant time."""
    return hmac.compare_digest(expected.encode("utf-8"), received.encode("utf-8"))
