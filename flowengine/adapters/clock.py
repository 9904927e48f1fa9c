"""Clock adapter: the wall clock for the engine and the client."""

from __future__ import annotations

import time


class SystemClock:
    """Read the current time from the operating system, in POSIX seconds."""

    def now(self) -> float:
        return time.time()
