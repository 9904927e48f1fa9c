"""The benchmark runner, run as a user runs it: `python benchmarks/run.py`.

One quick run writes the report and the JSON file to a temporary folder.
Only the outcome is checked, never a measured time or rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SECTIONS = ("transition", "grant", "memory", "stores", "storm", "web")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    output = tmp_path_factory.mktemp("benchmarks")
    # The timeout only stops a hung run; it is far above the usual duration.
    finished = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "benchmarks" / "run.py"),
            "--quick",
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=output,
    )
    return finished, output


@pytest.fixture(scope="module")
def results(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> dict[str, Any]:
    _, output = quick_run
    loaded: dict[str, Any] = json.loads(
        (output / "benchmarks.json").read_text(encoding="utf-8")
    )
    return loaded


def test_quick_run_exits_zero(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    finished, _ = quick_run
    assert finished.returncode == 0, finished.stderr[-3000:]


def test_quick_run_writes_both_files(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, output = quick_run
    assert (output / "benchmarks.json").is_file()
    assert (output / "benchmarks.md").is_file()


def test_quick_run_json_has_every_section(results: dict[str, Any]) -> None:
    assert results["mode"] == "quick"
    assert [item["id"] for item in results["sections"]] == list(SECTIONS)


@pytest.mark.parametrize("section_id", SECTIONS)
def test_quick_run_section_has_rows(results: dict[str, Any], section_id: str) -> None:
    item = next(s for s in results["sections"] if s["id"] == section_id)
    assert "error" not in item, item.get("error")
    assert item["rows"]
    measured = [entry for entry in item["rows"] if not entry.get("not_measured")]
    assert measured
    for entry in measured:
        assert entry["median"] is not None, entry["label"]
        assert entry["runs"], entry["label"]


def test_quick_run_json_describes_machine(results: dict[str, Any]) -> None:
    machine = results["machine"]
    assert machine["cpu_model"]
    assert machine["logical_cpus"] >= 1
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    assert results["packages"]["transitions"]


def test_quick_run_markdown_lists_every_section(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
    results: dict[str, Any],
) -> None:
    _, output = quick_run
    page = (output / "benchmarks.md").read_text(encoding="utf-8")
    assert "--quick" in page
    for item in results["sections"]:
        assert f"## {item['title']}" in page
