"""Shared pytest setup: hypothesis profiles and the no-skip rule of CI.

`ci`, the default, is deterministic and quick. Set HYPOTHESIS_PROFILE=thorough
for a long local run that tries many more examples.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Turn a skipped test into a failure when FLOWENGINE_FORBID_SKIPS is set.

    Tests skip when a server or browser they need is missing on a developer's
    machine; CI installs and starts all of them, so a skip there means a test
    silently did not run. Expected failures (xfail) are left alone.
    """
    outcome = yield
    report = outcome.get_result()
    forbidden = os.environ.get("FLOWENGINE_FORBID_SKIPS") == "1"
    if forbidden and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"test skipped where skips are forbidden: {report.longrepr}"
