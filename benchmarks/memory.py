"""Bytes per pending flow in the memory store and in SQLite.

A pending flow is what `OAuthClient.start` leaves behind for a user who has
not come back from the authorization server yet: a record in
awaiting_callback with its state value, PKCE verifier and expiry, and two
audit events (creation and start). The client is configured for the demo
authorization server, whose metadata it fetches once before the measurement;
`start` itself sends no request.

- MemoryStore: the growth of memory traced by tracemalloc while the flows
  are created, after a garbage collection, divided by the number of flows.
- SQLiteStore: the growth of the database file after a WAL checkpoint,
  divided by the number of flows.
"""

from __future__ import annotations

import gc
import sqlite3
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks.common import INFO, SUBJECT, Scale, row, section
from benchmarks.common import target as make_target
from benchmarks.grant import client_config
from benchmarks.servers import start_demo
from flowengine.adapters.memory import MemoryStore
from flowengine.adapters.sqlite import SQLiteStore
from flowengine.client import OAuthClient
from flowengine.engine import Store
from flowengine.oauth.config import ClientConfig

TARGET_BYTES = 2048
REPEATS = {"memory": 3, "sqlite": 1}
TOP_ALLOCATIONS = 6


def _start_flows(client: OAuthClient, count: int, time_limit: float) -> int:
    deadline = time.monotonic() + time_limit
    for done in range(count):
        client.start()
        if time.monotonic() > deadline:
            return done + 1
    return count


def _memory_run(
    config: ClientConfig, count: int, time_limit: float
) -> tuple[float, int, list[Any]]:
    """Return (bytes per flow, flows created, top allocation sites)."""
    store = MemoryStore()
    client = OAuthClient(config, store=store)
    # The first start fetches the metadata and fills the caches that every
    # later flow shares.
    client.start()
    gc.collect()
    tracemalloc.start(1)
    try:
        before = tracemalloc.get_traced_memory()[0]
        first = tracemalloc.take_snapshot()
        created = _start_flows(client, count, time_limit)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        top = tracemalloc.take_snapshot().compare_to(first, "lineno")[:TOP_ALLOCATIONS]
    finally:
        tracemalloc.stop()
    sites = [
        {
            "where": _site(stat.traceback[0].filename, stat.traceback[0].lineno),
            "bytes_per_flow": round(stat.size_diff / created),
        }
        for stat in top
    ]
    if len(store.flows()) != created + 1:
        raise RuntimeError("memory store does not hold every created flow")
    client.close()
    return (after - before) / created, created, sites


def _sqlite_run(
    config: ClientConfig, count: int, time_limit: float, folder: Path
) -> tuple[float, int, dict[str, int]]:
    """Return (bytes per flow, flows created, file sizes) for a fresh file."""
    path = folder / f"flows-{time.monotonic_ns()}.sqlite3"
    store: Store = SQLiteStore(path)
    client = OAuthClient(config, store=store)
    client.discover()
    empty = _checkpointed_size(path)
    created = _start_flows(client, count, time_limit)
    client.close()
    full = _checkpointed_size(path)
    return (full - empty) / created, created, {"empty": empty, "full": full}


def _checkpointed_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _site(filename: str, lineno: int) -> str:
    for marker in ("/flowengine/", "/benchmarks/"):
        if marker in filename:
            return f"{marker.strip('/')}/{filename.split(marker, 1)[1]}:{lineno}"
    return f"{filename.rsplit('/', 1)[-1]}:{lineno}"


def run(scale: Scale) -> dict[str, Any]:
    """Measure bytes per pending flow in both stores."""
    with start_demo() as demo:
        config = client_config(demo.info)
        return _measure(scale, config)


def _measure(scale: Scale, config: ClientConfig) -> dict[str, Any]:
    memory_values: list[float] = []
    memory_counts: list[int] = []
    sites: list[Any] = []
    for _ in range(REPEATS["memory"]):
        per_flow, created, sites = _memory_run(
            config, scale.memory_flows, scale.run_time_limit
        )
        memory_values.append(per_flow)
        memory_counts.append(created)
        gc.collect()

    sqlite_values: list[float] = []
    sqlite_counts: list[int] = []
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(REPEATS["sqlite"]):
            per_flow, created, sizes = _sqlite_run(
                config, scale.sqlite_flows, scale.run_time_limit * 2, Path(folder)
            )
            sqlite_values.append(per_flow)
            sqlite_counts.append(created)
    return _section(
        scale,
        (memory_values, memory_counts, sites),
        (sqlite_values, sqlite_counts, sizes),
    )


def _section(
    scale: Scale,
    memory: tuple[list[float], list[int], list[Any]],
    sqlite: tuple[list[float], list[int], dict[str, int]],
) -> dict[str, Any]:
    memory_values, memory_counts, sites = memory
    sqlite_values, sqlite_counts, sizes = sqlite
    rows = [
        row(
            "MemoryStore, traced Python memory",
            SUBJECT,
            memory_values,
            flows=min(memory_counts),
        ),
        row(
            "SQLiteStore, database file after a WAL checkpoint",
            INFO,
            sqlite_values,
            flows=min(sqlite_counts),
        ),
    ]
    for item in rows:
        item["ratio_to_peer"] = item["ratio_to_floor"] = None
    median = rows[0]["median"]
    met = None if median is None else median <= TARGET_BYTES
    return section(
        "memory",
        "Memory per pending flow",
        unit="bytes per flow",
        higher_is_better=False,
        rows=rows,
        target=make_target(
            f"at most {TARGET_BYTES // 1024} KB per flow in memory",
            met,
            f"{median:,.0f} bytes per flow in memory" if median else "not measured",
        ),
        setup={
            "flows_requested": f"{scale.memory_flows} (memory), "
            f"{scale.sqlite_flows} (SQLite)",
            "runs": f"{REPEATS['memory']} (memory), {REPEATS['sqlite']} (SQLite)",
            "flow": "OAuthClient.start: awaiting_callback with two audit events",
        },
        notes=[
            "Where the traced memory of the last memory run was allocated "
            "(bytes per flow): "
            + ", ".join(f"{site['where']} {site['bytes_per_flow']}" for site in sites)
            + ".",
            f"SQLite file sizes of the last run: {sizes.get('empty')} bytes empty, "
            f"{sizes.get('full')} bytes full; the file grows in pages, so the "
            "bytes per flow include free space in partly filled pages and the "
            "primary-key indexes. SQLite is measured once, because the file "
            "size for a given number of flows came out the same on every run.",
            "No peer or floor: Authlib keeps no flow store, so the target is absolute.",
        ],
        extra_columns=[("flows", "flows")],
    )
