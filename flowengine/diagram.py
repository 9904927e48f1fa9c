"""Draw a flow definition as a state diagram, from the loaded definition.

The picture comes from transitions' own diagram support on a separate graph
machine, so the engine's shared machine never keeps a model. Mermaid text
needs nothing else. DOT source needs the Python package `graphviz`, and SVG
also needs Graphviz's `dot` program on PATH.
"""

from __future__ import annotations

import copy
import importlib
from types import ModuleType
from typing import Any, Literal

from transitions.extensions import GraphMachine

from flowengine.definition import FlowDefinition
from flowengine.errors import LocalError

# SVG class of the current state's node, so a page or a test can find it.
CURRENT_STATE_CLASS = "current"

_FONT = "Helvetica,Arial,sans-serif"
_INSTALL_GRAPHVIZ = (
    "install Graphviz (Debian and Ubuntu: apt-get install graphviz), or use the "
    "Mermaid format"
)


class DiagramError(LocalError):
    """A diagram cannot be drawn for the requested definition and state."""

    code = "diagram_error"


class DiagramUnavailableError(DiagramError):
    """A picture format needs Graphviz, and Graphviz is not installed."""

    code = "diagram_unavailable"


class _Marker:
    """The one model of a graph machine; only its state matters."""

    state: str


def mermaid(definition: FlowDefinition, current: str | None = None) -> str:
    """Return a Mermaid `stateDiagram-v2` of `definition`.

    With `current`, that state is drawn as the active one; without it, the
    initial state is.

    Raises:
        DiagramError: `current` is not a state of `definition`.
    """
    graph = _graph(definition, current, "mermaid")
    text: str = graph.draw(None)
    # transitions 0.9.3 writes the title as a bare line between "---"
    # markers; Mermaid's front matter needs it as a `title:` key.
    lines = text.strip().splitlines()
    if len(lines) > 3 and lines[0] == "---" and lines[2] == "---":
        lines[1] = f"title: {definition.name}"
    return "\n".join(line.rstrip() for line in lines) + "\n"


def dot(definition: FlowDefinition, current: str | None = None) -> str:
    """Return the Graphviz DOT source of `definition`'s state diagram.

    The current state (the initial one when `current` is None) gets the
    active style of transitions (red outline, salmon fill, double border) and
    the class `CURRENT_STATE_CLASS`. Only the Python package `graphviz` is
    needed, not the `dot` program.

    Raises:
        DiagramError: `current` is not a state of `definition`.
        DiagramUnavailableError: the Python package `graphviz` is missing.
    """
    source: str = _graph(definition, current, "graphviz").source
    return source


def svg(definition: FlowDefinition, current: str | None = None) -> str:
    """Return `definition`'s state diagram as an SVG document, laid out by `dot`.

    The current state is marked as in `dot()`: its `<g class="node current">`
    element contains the state name as `<title>`.

    Raises:
        DiagramError: `current` is not a state of `definition`, or `dot`
            failed.
        DiagramUnavailableError: the Python package `graphviz` or Graphviz's
            `dot` program is missing.
    """
    graphviz = _import_graphviz()
    graph = _graph(definition, current, "graphviz")
    try:
        text: str = graph.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound as exc:
        raise DiagramUnavailableError(
            f"Graphviz's `dot` program was not found on PATH, so the diagram of "
            f"{definition.name!r} cannot be drawn as SVG; {_INSTALL_GRAPHVIZ}"
        ) from exc
    except graphviz.CalledProcessError as exc:
        raise DiagramError(
            f"Graphviz's `dot` failed with exit status {exc.returncode} while "
            f"drawing {definition.name!r}: {_first_line(exc.stderr)}; check the "
            "Graphviz installation with `dot -V`"
        ) from exc
    return text


def _graph(
    definition: FlowDefinition,
    current: str | None,
    engine: Literal["graphviz", "mermaid"],
) -> Any:
    """Build a graph machine for `definition` and return the marked graph."""
    state = current or definition.initial
    if state not in definition.state_names:
        raise DiagramError(
            f"state {state!r} is not a state of the flow definition "
            f"{definition.name!r}; use one of: {', '.join(definition.state_names)}"
        )
    if engine == "graphviz":
        # transitions draws Mermaid instead, with only a log line, when the
        # `graphviz` package is missing, so its absence is checked first.
        _import_graphviz()

    rows = [
        {"trigger": t.trigger, "source": list(t.sources), "dest": t.dest}
        for t in definition.transitions
    ]
    machine = GraphMachine(
        model=None,
        states=list(definition.state_names),
        initial=definition.initial,
        transitions=rows,
        auto_transitions=False,
        graph_engine=engine,
        title=definition.name,
    )
    if engine == "graphviz":
        machine.style_attributes = _graphviz_styles(machine.style_attributes)
    marker = _Marker()
    machine.add_model(marker, initial=state)
    return marker.get_graph()  # type: ignore[attr-defined]


def _graphviz_styles(styles: dict[str, Any]) -> dict[str, Any]:
    """Return transitions' styles with a sans-serif font and the current class.

    The Mermaid engine reads the same styles for its class definitions, so
    only the Graphviz machine gets this copy.
    """
    changed = copy.deepcopy(styles)
    for kind in ("node", "edge", "graph"):
        changed[kind]["default"]["fontname"] = _FONT
    changed["node"]["active"]["class"] = CURRENT_STATE_CLASS
    return changed


def _import_graphviz() -> ModuleType:
    try:
        return importlib.import_module("graphviz")
    except ImportError as exc:
        raise DiagramUnavailableError(
            "the Python package 'graphviz' is not installed, so DOT and SVG "
            "diagrams cannot be drawn; install it with `pip install graphviz`, or "
            "use the Mermaid format"
        ) from exc


def _first_line(stderr: bytes | str | None) -> str:
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", errors="replace")
    lines = (stderr or "").strip().splitlines()
    return lines[0] if lines else "no error output"
