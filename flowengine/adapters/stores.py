"""Open a store from a URL or a file path."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.engine import Store
from flowengine.errors import ConfigError
from flowengine.redaction import redact_url

REDIS_SCHEMES = ("redis", "rediss")
POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_store(location: str) -> Store:
    """Return the store that `location` names.

    Accepted forms:

    - `memory:`: this process only;
    - `sqlite:///absolute/path`, `sqlite:relative/path`, or a plain file
      path, which means SQLite;
    - `redis://[:password@]host[:port][/db]` or `rediss://...` (TLS), with
      an optional `prefix=` query parameter for the keys (default
      `flowengine:`); the other query parameters go to `redis.Redis.from_url`;
    - `postgresql://[user[:password]@]host[:port]/dbname` or `postgres://...`,
      with an optional `schema=` query parameter for the tables; the other
      query parameters go to libpq.

    Raises:
        ConfigError: the URL scheme is unknown, a store parameter is repeated
            or invalid, or the package a shared store needs is not installed.
        StoreUnavailableError: a Redis or PostgreSQL server cannot be reached.
    """
    if location in ("memory:", "memory://"):
        return MemoryStore()
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme == "sqlite":
        path = location.removeprefix("sqlite:")
        if path.startswith("///"):
            path = path[2:]
        return SQLiteStore(Path(path).expanduser())
    if scheme in REDIS_SCHEMES:
        return _open_redis(location)
    if scheme in POSTGRES_SCHEMES:
        return _open_postgres(location)
    if scheme and len(scheme) > 1:
        raise ConfigError(
            f"store {redact_url(location)!r} has unknown scheme {scheme!r}; use a "
            "file path, sqlite:///path, memory:, redis://host or "
            "postgresql://host/dbname"
        )
    return SQLiteStore(Path(location).expanduser())


def _open_redis(location: str) -> Store:
    try:
        from flowengine.adapters.redis_store import DEFAULT_PREFIX, RedisStore
    except ModuleNotFoundError as exc:
        raise _missing_package("redis", "redis", exc) from exc
    url, prefix = pop_query_parameter(location, "prefix")
    return RedisStore(url, prefix=DEFAULT_PREFIX if prefix is None else prefix)


def _open_postgres(location: str) -> Store:
    try:
        from flowengine.adapters.postgres import PostgresStore
    except ModuleNotFoundError as exc:
        raise _missing_package("PostgreSQL", "postgres", exc) from exc
    url, schema = pop_query_parameter(location, "schema")
    return PostgresStore(url, schema=schema)


def _missing_package(
    server: str, extra: str, error: ModuleNotFoundError
) -> ConfigError:
    return ConfigError(
        f"the {server} store needs the Python package {error.name!r}, which is "
        f"not installed; install it with: pip install 'flowengine[{extra}]'"
    )


def pop_query_parameter(url: str, name: str) -> tuple[str, str | None]:
    """Remove the query parameter `name` from `url` and return both.

    The other parameters are kept byte for byte, because the client library
    that reads them may decode them differently from urllib.

    Raises:
        ConfigError: the parameter appears more than once.
    """
    # Split by hand: urlunsplit would turn postgresql:///db into postgresql:/db.
    base, _, rest = url.partition("?")
    query, hash_mark, fragment = rest.partition("#")
    other_items: list[str] = []
    values: list[str] = []
    for item in query.split("&") if query else []:
        key, _, value = item.partition("=")
        if urllib.parse.unquote_plus(key) == name:
            values.append(urllib.parse.unquote(value))
        else:
            other_items.append(item)
    if len(values) > 1:
        raise ConfigError(
            f"store URL {redact_url(url)!r} sets {name!r} {len(values)} times; "
            "set it once"
        )
    remaining = "&".join(other_items)
    stripped = base + ("?" + remaining if remaining else "") + hash_mark + fragment
    return stripped, values[0] if values else None
