"""State diagrams of the flow definition: Mermaid, DOT and SVG.

The SVG tests run Graphviz's real `dot` program. The tests of a missing
`dot` point PATH at an empty folder, so the Python package `graphviz` looks
for the program and does not find it. The web tests drive the client
application with the demo servers, over loopback HTTP.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_web import (
    TIMEOUT,
    Browser,
    Demo,
    get_token,
    running_demo,
)

from flowengine import diagram
from flowengine.adapters.memory import MemoryStore
from flowengine.definition import FlowDefinition, load_definition
from flowengine.grant import REGISTRY
from flowengine.web import view

SIX_STATES = (
    "unauthorized",
    "awaiting_callback",
    "code_received",
    "token_held",
    "expired",
    "refreshing",
)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def definition() -> FlowDefinition:
    return load_definition("authorization_code", REGISTRY)


@pytest.fixture
def no_dot_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    # The web page caches drawn pictures; drop those drawn by earlier tests.
    view._cached_svg.cache_clear()


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo(MemoryStore()) as running:
        yield running


def run_cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = None if path is None else {"PATH": path}
    return subprocess.run(
        [sys.executable, "-m", "flowengine.cli", "diagram", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


# --- reading SVG -----------------------------------------------------------------


def parse_svg(text: str) -> ET.Element:
    # The text comes from Graphviz's `dot` on this machine, and its DOCTYPE
    # declares no entities, so ElementTree parses the whole document.
    root = ET.fromstring(text)  # noqa: S314
    assert root.tag == f"{SVG}svg"
    return root


def svg_nodes(root: ET.Element) -> dict[str, ET.Element]:
    """Return every node group of a Graphviz SVG, by its state name."""
    nodes = {}
    for group in root.iter(f"{SVG}g"):
        if "node" in group.get("class", "").split():
            title = group.find(f"{SVG}title")
            assert title is not None
            nodes[str(title.text)] = group
    return nodes


def current_states(root: ET.Element) -> list[str]:
    """Return the state names of the node groups with the current class."""
    return [
        name
        for name, group in svg_nodes(root).items()
        if diagram.CURRENT_STATE_CLASS in group.get("class", "").split()
    ]


def inline_svg(html: str) -> ET.Element:
    match = re.search(r"<svg\b.*?</svg>", html, re.DOTALL)
    assert match is not None, "the page contains no <svg> element"
    return parse_svg(match.group(0))


def dot_node_attributes(source: str, state: str) -> str:
    match = re.search(rf"^\s*{state} \[(.*)\]$", source, re.MULTILINE)
    assert match is not None, f"no node line for {state} in the DOT source"
    return match.group(1)


# --- Mermaid ------------------------------------------------------------------


def test_mermaid_has_front_matter_and_header(definition: FlowDefinition) -> None:
    lines = diagram.mermaid(definition).splitlines()
    assert lines[0] == "---"
    assert lines[1] == "title: authorization_code"
    assert lines[2] == "---"
    assert lines[3] == "stateDiagram-v2"
    assert "  [*] --> unauthorized" in lines


def test_mermaid_declares_six_states(definition: FlowDefinition) -> None:
    text = diagram.mermaid(definition)
    declared = re.findall(r'^  state "(\w+)" as (\w+)$', text, re.MULTILINE)
    assert [label for label, _ in declared] == list(SIX_STATES)
    assert [name for _, name in declared] == list(SIX_STATES)


@pytest.mark.parametrize("state", SIX_STATES)
def test_mermaid_marks_current_state(definition: FlowDefinition, state: str) -> None:
    text = diagram.mermaid(definition, state)
    active = re.findall(r"^  Class (\w+) s_active$", text, re.MULTILINE)
    assert active == [state]


def test_mermaid_marks_initial_state_by_default(definition: FlowDefinition) -> None:
    text = diagram.mermaid(definition)
    assert re.findall(r"^  Class (\w+) s_active$", text, re.MULTILINE) == [
        "unauthorized"
    ]


# --- DOT ------------------------------------------------------------------------


def test_dot_declares_six_states(definition: FlowDefinition) -> None:
    source = diagram.dot(definition)
    assert source.startswith("digraph authorization_code {")
    for state in SIX_STATES:
        assert f'label="{state}\\l"' in dot_node_attributes(source, state)


def test_dot_has_an_edge_for_every_transition(definition: FlowDefinition) -> None:
    source = diagram.dot(definition)
    edges: dict[tuple[str, str], set[str]] = {}
    for source_state, dest, label in re.findall(
        r"^\s*(\w+) -> (\w+) \[label=\"?([\w |]+?)\"?\]$", source, re.MULTILINE
    ):
        edges[(source_state, dest)] = set(label.split(" | "))
    assert edges
    for transition in definition.transitions:
        for source_state in transition.sources:
            triggers = edges.get((source_state, transition.dest), set())
            assert transition.trigger in triggers, (source_state, transition)


@pytest.mark.parametrize("state", SIX_STATES)
def test_dot_marks_current_state(definition: FlowDefinition, state: str) -> None:
    source = diagram.dot(definition, state)
    for other in SIX_STATES:
        attributes = dot_node_attributes(source, other)
        if other == state:
            assert "class=current" in attributes
            assert "fillcolor=darksalmon" in attributes
            assert "peripheries=2" in attributes
        else:
            assert "class=" not in attributes
            assert "darksalmon" not in attributes


def test_dot_needs_no_dot_program(
    definition: FlowDefinition, no_dot_on_path: None
) -> None:
    assert "class=current" in dot_node_attributes(
        diagram.dot(definition, "expired"), "expired"
    )


def test_unknown_state_is_rejected(definition: FlowDefinition) -> None:
    for draw in (diagram.mermaid, diagram.dot, diagram.svg):
        with pytest.raises(diagram.DiagramError) as raised:
            draw(definition, "no_such_state")
        message = str(raised.value)
        assert "'no_such_state'" in message
        assert "token_held" in message


# --- SVG ------------------------------------------------------------------------


def test_svg_contains_six_states(definition: FlowDefinition) -> None:
    root = parse_svg(diagram.svg(definition))
    assert sorted(svg_nodes(root)) == sorted(SIX_STATES)
    texts = {text.text for text in root.iter(f"{SVG}text")}
    for state in SIX_STATES:
        assert state in texts
    assert "receive_token" in texts


@pytest.mark.parametrize("state", SIX_STATES)
def test_svg_marks_current_state(definition: FlowDefinition, state: str) -> None:
    root = parse_svg(diagram.svg(definition, state))
    assert current_states(root) == [state]
    outline = svg_nodes(root)[state].find(f"{SVG}path")
    assert outline is not None
    assert outline.get("fill") == "darksalmon"
    assert outline.get("stroke") == "red"
    other = svg_nodes(root)["unauthorized" if state != "unauthorized" else "expired"]
    other_outline = other.find(f"{SVG}path")
    assert other_outline is not None
    assert other_outline.get("fill") == "white"


def test_svg_without_dot_program_is_unavailable(
    definition: FlowDefinition, no_dot_on_path: None
) -> None:
    with pytest.raises(diagram.DiagramUnavailableError) as raised:
        diagram.svg(definition, "token_held")
    message = str(raised.value)
    assert "`dot` program was not found" in message
    assert "apt-get install graphviz" in message


# --- command line ---------------------------------------------------------------


def test_cli_svg_format_draws_picture() -> None:
    result = run_cli("--format", "svg")
    assert result.returncode == 0, result.stderr
    root = parse_svg(result.stdout)
    assert current_states(root) == ["unauthorized"]


def test_cli_dot_format_prints_source() -> None:
    result = run_cli("--format", "dot")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digraph authorization_code {")
    assert "class=current" in dot_node_attributes(result.stdout, "unauthorized")


def test_cli_svg_without_dot_fails_clearly(tmp_path: Path) -> None:
    result = run_cli("--format", "svg", path=str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Graphviz's `dot` program was not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_unknown_format() -> None:
    result = run_cli("--format", "png")
    assert result.returncode == 2
    assert "invalid choice: 'png'" in result.stderr


# --- web page ------------------------------------------------------------------


def test_page_without_flow_marks_initial_state(demo: Demo) -> None:
    page = Browser(demo).get("/")
    assert page.status == 200
    assert current_states(inline_svg(page.html)) == ["unauthorized"]
    assert page.text("diagram-caption").startswith("No flow yet")
    assert "<?xml" not in page.html
    assert "<!DOCTYPE svg" not in page.html


def test_page_marks_flow_state_in_picture(demo: Demo) -> None:
    browser = Browser(demo)
    page = get_token(browser)
    assert page.text("flow-state") == "token_held"
    root = inline_svg(page.html)
    assert current_states(root) == ["token_held"]
    assert sorted(svg_nodes(root)) == sorted(SIX_STATES)
    assert "current state, token_held, has a red double border" in page.text(
        "diagram-caption"
    )

    awaiting = browser.session.get(
        demo.client_url + "/authorize", allow_redirects=False, timeout=TIMEOUT
    )
    assert awaiting.status_code == 302
    page = browser.get("/")
    assert current_states(inline_svg(page.html)) == ["awaiting_callback"]


def test_diagram_svg_route_returns_session_picture(demo: Demo) -> None:
    browser = Browser(demo)
    get_token(browser)
    response = browser.session.get(demo.client_url + "/diagram.svg", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/svg+xml; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert current_states(parse_svg(response.text)) == ["token_held"]


def test_diagram_svg_route_without_flow(demo: Demo) -> None:
    response = requests.get(demo.client_url + "/diagram.svg", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("image/svg+xml")
    assert current_states(parse_svg(response.text)) == ["unauthorized"]


def test_page_without_dot_shows_mermaid_text(
    demo: Demo, no_dot_on_path: None, caplog: pytest.LogCaptureFixture
) -> None:
    # The first failure is a warning and repeats are debug lines, so both count.
    caplog.set_level(logging.DEBUG, logger="flowengine.web.view")
    browser = Browser(demo)
    page = get_token(browser)
    assert page.status == 200
    assert page.text("flow-state") == "token_held"
    assert "<svg" not in page.html
    reason = page.text("diagram-unavailable")
    assert "cannot be drawn as a picture" in reason
    assert "`dot` program was not found" in reason
    mermaid_text = page.texts["diagram-mermaid"]
    assert "stateDiagram-v2" in mermaid_text
    assert "Class token_held s_active" in mermaid_text
    logged = [record.getMessage() for record in caplog.records]
    assert any("state diagram shown as Mermaid text" in line for line in logged)

    svg_response = browser.get("/diagram.svg")
    assert svg_response.status == 503
    assert "`dot` program was not found" in svg_response.text("error-message")
    assert "Traceback" not in svg_response.html
    logged = [record.getMessage() for record in caplog.records]
    assert any("state diagram not sent as SVG" in line for line in logged)


def test_diagram_contains_no_secret(demo: Demo) -> None:
    browser = Browser(demo)
    pending = browser.session.get(
        demo.client_url + "/authorize", allow_redirects=False, timeout=TIMEOUT
    )
    assert pending.status_code == 302
    flow_id = browser.get("/").text("flow-id")
    awaiting = demo.flow_data(flow_id)
    pictures = [_diagram_texts(browser)]

    flow_id = get_token(browser).text("flow-id")
    first = demo.flow_data(flow_id)
    pictures.append(_diagram_texts(browser))
    browser.submit("/refresh")
    second = demo.flow_data(flow_id)
    pictures.append(_diagram_texts(browser))

    secrets_issued = {
        awaiting["state"],
        awaiting["code_verifier"],
        first["access_token"],
        first["refresh_token"],
        second["access_token"],
        second["refresh_token"],
        demo.config.client_secret,
        *browser.codes,
    }
    assert len(browser.codes) == 1
    assert len(secrets_issued) == 8
    for texts in pictures:
        for text in texts:
            assert "<svg" in text
            for secret in secrets_issued:
                assert secret not in text


def _diagram_texts(browser: Browser) -> tuple[str, str]:
    """Return the /diagram.svg document and the page's inline SVG."""
    picture = browser.session.get(
        browser.demo.client_url + "/diagram.svg", timeout=TIMEOUT
    )
    assert picture.status_code == 200
    page = browser.get("/")
    inline = re.search(r"<svg\b.*?</svg>", page.html, re.DOTALL)
    assert inline is not None
    return picture.text, inline.group(0)
