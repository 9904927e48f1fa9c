"""The `flowengine` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hostile import free_port

SIX_STATES = (
    "unauthorized",
    "awaiting_callback",
    "code_received",
    "token_held",
    "expired",
    "refreshing",
)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowengine.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def auto_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    store = tmp_path_factory.mktemp("demo") / "flows.sqlite3"
    result = run_cli(
        "demo",
        "--auto",
        "--store",
        str(store),
        "--client-port",
        str(free_port()),
        "--auth-port",
        str(free_port()),
        "--resource-port",
        str(free_port()),
    )
    assert result.returncode == 0, result.stderr
    return store, result.stdout


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "serve", "flows", "audit", "diagram", "repl"):
        assert command in result.stdout


def test_demo_auto_prints_grant_transitions(auto_demo: tuple[Path, str]) -> None:
    _, output = auto_demo
    lines = [line for line in output.splitlines() if "→" in line]
    expected = [
        "unauthorized → awaiting_callback  (start)",
        "awaiting_callback → code_received  (receive_code)",
        "code_received → token_held  (receive_token)",
        "token_held → expired  (expire)",
        "expired → refreshing  (refresh)",
        "refreshing → token_held  (receive_token)",
    ]
    assert lines[1:] == expected


def test_demo_auto_prints_resource_data(auto_demo: tuple[Path, str]) -> None:
    _, output = auto_demo
    assert output.count("Protected Resource") == 2


def test_demo_auto_output_holds_no_secret(auto_demo: tuple[Path, str]) -> None:
    store, output = auto_demo
    flows = run_cli("flows", "--store", str(store)).stdout.split()
    flow_id = flows[0]
    with sqlite3.connect(store) as conn:
        row = conn.execute("SELECT data FROM flows WHERE id = ?", (flow_id,)).fetchone()
    (data,) = row
    held = json.loads(data)
    assert held["access_token"] not in output
    assert held["refresh_token"] not in output
    assert "oauth-client-secret-1" not in output


def test_audit_json_lines_parse(auto_demo: tuple[Path, str]) -> None:
    store, _ = auto_demo
    flow_id = run_cli("flows", "--store", str(store)).stdout.split()[0]
    result = run_cli("audit", flow_id, "--json", "--store", str(store))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["sequence"] for e in events] == list(range(len(events)))
    assert events[-1]["destination"] == "token_held"


def test_audit_table_shows_every_transition(auto_demo: tuple[Path, str]) -> None:
    store, _ = auto_demo
    flow_id = run_cli("flows", "--store", str(store)).stdout.split()[0]
    table = run_cli("audit", flow_id, "--store", str(store)).stdout
    for trigger in ("create", "start", "receive_code", "expire", "refresh"):
        assert trigger in table
    header = table.splitlines()[0].split()
    assert header[:3] == ["#", "time", "(UTC)"]
    assert header[-1] == "details"
    assert "scope='foo bar'" in table


def test_audit_of_unknown_flow_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("audit", "no-such-flow", "--store", str(tmp_path / "x.sqlite3"))
    assert result.returncode == 1
    assert "no-such-flow" in result.stderr
    assert "Traceback" not in result.stderr


def test_diagram_mermaid_has_six_states(tmp_path: Path) -> None:
    result = run_cli("diagram", "--format", "mermaid")
    assert result.returncode == 0
    assert result.stdout.splitlines()[3] == "stateDiagram-v2"
    for state in SIX_STATES:
        assert f'state "{state}" as {state}' in result.stdout


def test_diagram_marks_flow_state(auto_demo: tuple[Path, str]) -> None:
    store, _ = auto_demo
    flow_id = run_cli("flows", "--store", str(store)).stdout.split()[0]
    result = run_cli("diagram", flow_id, "--store", str(store))
    assert "Class token_held s_active" in result.stdout


def test_readme_diagram_matches_definition() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    drawn = run_cli("diagram").stdout
    assert f"```mermaid\n{drawn}```" in readme


def test_demo_with_busy_port_fails_clearly() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "demo", "--auto", "--store", "memory:", "--auth-port", str(port), timeout=60
        )
    assert result.returncode == 1
    assert str(port) in result.stderr
    assert "Traceback" not in result.stderr
