"""The OAuth 2.0 protocol without I/O: configuration, PKCE, requests, parsing."""
