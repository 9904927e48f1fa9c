"""The example in docs/testing.md runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "testing.md"
MARKER = "<!-- example: own-flow -->"


def example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, re.S)
    assert match is not None, f"{DOC} has no python block after {MARKER}"
    return match.group(1)


def run_pytest(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_own_flow_example_passes(tmp_path: Path) -> None:
    (tmp_path / "test_door.py").write_text(example_code(), encoding="utf-8")

    result = run_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# Mistakes the example's test must catch: an action that does not count,
# caught by the example's own invariant, and a guard that raises a plain
# KeyError for an unknown key, which no rule may swallow.
MISTAKES = {
    "test_door_not_counting.py": (
        'run.data["openings"] = run.data.get("openings", 0) + 1',
        "pass",
    ),
    "test_door_key_error.py": (
        'return run.inputs.get("key") == "brass"',
        'return {"brass": True}[run.inputs["key"]]',
    ),
}


def test_own_flow_example_catches_mistakes(tmp_path: Path) -> None:
    code = example_code()
    for name, (old, new) in MISTAKES.items():
        assert old in code, f"the example no longer contains {old!r}"
        (tmp_path / name).write_text(code.replace(old, new), encoding="utf-8")

    result = run_pytest(tmp_path)

    assert "2 failed" in result.stdout, result.stdout + result.stderr
    assert "openings_match_trail" in result.stdout
    assert "KeyError: 'tin'" in result.stdout
