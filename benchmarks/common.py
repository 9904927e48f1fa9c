"""Shared pieces of the benchmarks: run sizes, statistics and result rows."""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import statistics
import threading
from collections.abc import Sequence
from typing import Any

# The role of a row in a comparison: the code under test, the library it is
# compared with, the cheapest way to do the same work, or an extra row that
# explains the others.
SUBJECT, PEER, FLOOR, INFO = "subject", "peer", "floor", "info"


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much work each benchmark does in one mode of run.py.

    Counts are per run; each benchmark repeats its runs and reports the
    median. Time limits in seconds stop a run early, and the result then
    records how much was done.
    """

    name: str
    transition_ops: int
    transition_repeats: int
    grant_count: int
    grant_repeats: int
    memory_flows: int
    sqlite_flows: int
    store_ops: int
    store_repeats: int
    storm_sizes: tuple[int, ...]
    storm_repeats: int
    web_users: int
    web_grants_per_user: int
    web_repeats: int
    run_time_limit: float


SCALES = {
    "full": Scale(
        name="full",
        transition_ops=10_000,
        transition_repeats=11,
        grant_count=50,
        grant_repeats=11,
        memory_flows=100_000,
        sqlite_flows=100_000,
        store_ops=2_000,
        store_repeats=5,
        storm_sizes=(10, 100, 1000),
        storm_repeats=3,
        web_users=50,
        web_grants_per_user=6,
        web_repeats=3,
        run_time_limit=120.0,
    ),
    "quick": Scale(
        name="quick",
        transition_ops=5_000,
        transition_repeats=5,
        grant_count=20,
        grant_repeats=5,
        memory_flows=10_000,
        sqlite_flows=10_000,
        store_ops=300,
        store_repeats=3,
        storm_sizes=(10, 100, 1000),
        storm_repeats=1,
        web_users=50,
        web_grants_per_user=2,
        web_repeats=1,
        run_time_limit=30.0,
    ),
    "smoke": Scale(
        name="smoke",
        transition_ops=300,
        transition_repeats=3,
        grant_count=3,
        grant_repeats=2,
        memory_flows=300,
        sqlite_flows=300,
        store_ops=30,
        store_repeats=2,
        storm_sizes=(10,),
        storm_repeats=1,
        web_users=5,
        web_grants_per_user=1,
        web_repeats=1,
        run_time_limit=15.0,
    ),
}


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Return the median, minimum, maximum and every value of `values`."""
    if not values:
        return {"median": None, "min": None, "max": None, "runs": []}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Return the `fraction` quantile of `values` by the nearest-rank method."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def row(label: str, role: str, values: Sequence[float], **extra: Any) -> dict[str, Any]:
    """Build one result row: a label, its role, statistics and extra columns."""
    return {"label": label, "role": role, **summarize(values), "extra": extra}


def not_measured(label: str, role: str, reason: str) -> dict[str, Any]:
    """Build a row for a measurement that could not run, with the reason."""
    return {
        "label": label,
        "role": role,
        "median": None,
        "min": None,
        "max": None,
        "runs": [],
        "extra": {},
        "not_measured": reason,
    }


def add_ratios(rows: list[dict[str, Any]], group: str | None = None) -> None:
    """Set `ratio_to_peer` and `ratio_to_floor` (value / reference) on rows.

    With `group`, rows are compared only with the peer and floor whose
    extra[group] is the same, such as the rows of one store.
    """

    def reference(source: dict[str, Any], role: str) -> float | None:
        for candidate in rows:
            same_group = group is None or candidate["extra"].get(group) == source[
                "extra"
            ].get(group)
            if candidate["role"] == role and same_group:
                value = candidate["median"]
                return float(value) if value else None
        return None

    for item in rows:
        value = item["median"]
        for role, key in ((PEER, "ratio_to_peer"), (FLOOR, "ratio_to_floor")):
            base = reference(item, role)
            item[key] = None if value is None or base is None else value / base


def section(
    section_id: str,
    title: str,
    *,
    unit: str,
    higher_is_better: bool,
    rows: list[dict[str, Any]],
    target: dict[str, Any],
    setup: dict[str, Any],
    notes: Sequence[str] = (),
    extra_columns: Sequence[tuple[str, str]] = (),
    profile: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Bundle one benchmark's results for the report and the JSON file."""
    return {
        "id": section_id,
        "title": title,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "rows": rows,
        "target": target,
        "setup": setup,
        "notes": list(notes),
        "extra_columns": [list(column) for column in extra_columns],
        "profile": profile,
    }


def target(text: str, met: bool | None, detail: str) -> dict[str, Any]:
    """Describe a target and whether the measurement met it (None: unknown)."""
    return {"text": text, "met": met, "detail": detail}


class WarningCounter(logging.Handler):
    """Count log records of level WARNING and above by logger and message.

    Servers and HTTP pools log warnings under load, such as a full
    connection pool or a deep task queue. The report lists their counts
    instead of printing every line.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        # The message template, not the formatted message, so that values
        # such as ids and secrets never reach the report.
        key = f"{record.name}: {record.msg}"[:160]
        with self._count_lock:
            self.counts[key] += 1

    def snapshot(self) -> dict[str, int]:
        """Return the counts so far."""
        with self._count_lock:
            return dict(self.counts)
