"""Open a store from a URL or a file path."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.engine import Store
from flowengine.errors import ConfigError


def open_store(location: str) -> Store:
    """Return the store that `location` names.

    Accepted forms: `memory:` (this process only), `sqlite:///absolute/path`,
    `sqlite:relative/path`, or a plain file path, which means SQLite.

    Raises:
        ConfigError: the URL scheme is unknown.
        NotImplementedError: a shared store (redis://, postgresql://) was
            named; those stores are not supported yet.
    """
    if location in ("memory:", "memory://"):
        return MemoryStore()
    scheme = urllib.parse.urlsplit(location).scheme
    if scheme == "sqlite":
        path = location.removeprefix("sqlite:")
        if path.startswith("///"):
            path = path[2:]
        return SQLiteStore(Path(path).expanduser())
    if scheme in ("redis", "rediss", "postgresql", "postgres"):
        # TODO: shared Redis and PostgreSQL stores for several processes.
        raise NotImplementedError(f"the {scheme} store is not supported yet")
    if scheme and len(scheme) > 1:
        raise ConfigError(
            f"store {location!r} has unknown scheme {scheme!r}; use a file path, "
            "sqlite:///path or memory:"
        )
    return SQLiteStore(Path(location).expanduser())
