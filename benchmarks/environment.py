"""Describe the machine, the interpreter and the package versions of a run."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent

PACKAGES = (
    "transitions",
    "requests",
    "urllib3",
    "flask",
    "werkzeug",
    "waitress",
    "pyyaml",
    "authlib",
    "redis",
    "psycopg",
)


def machine() -> dict[str, Any]:
    """Return the CPU model, core counts, OS and Python version."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "load_average": load_average(),
    }


def load_average() -> list[float] | None:
    """Return the 1, 5 and 15 minute load averages, where the OS reports them.

    Other processes on the machine slow the benchmarks down; a load near or
    above the CPU count means the numbers are noisy.
    """
    if not hasattr(os, "getloadavg"):
        return None
    return [round(value, 2) for value in os.getloadavg()]


def packages() -> dict[str, str | None]:
    """Return the installed version of flowengine and of each package used."""
    versions: dict[str, str | None] = {"flowengine": _flowengine_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def source_revision() -> str | None:
    """Return the git commit of the checkout, with "+changes" if it is modified."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+changes" if changes else commit


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _flowengine_version() -> str | None:
    try:
        return importlib.metadata.version("flowengine")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with open(REPOSITORY / "pyproject.toml", "rb") as pyproject:
            return str(tomllib.load(pyproject)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None
