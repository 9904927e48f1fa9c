"""Draw a flow definition as a state diagram, from the loaded definition.

The picture comes from transitions' own diagram support on a separate graph
machine, so the engine's shared machine never holds a model.
"""

from __future__ import annotations

from transitions.extensions import GraphMachine

from flowengine.definition import FlowDefinition


class _Marker:
    """The one model of a graph machine; only its state matters."""

    state: str


def mermaid(definition: FlowDefinition, current: str | None = None) -> str:
    """Return a Mermaid `stateDiagram-v2` of `definition`.

    With `current`, that state is drawn as the active one; without it, the
    initial state is.
    """
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
        graph_engine="mermaid",
        title=definition.name,
    )
    marker = _Marker()
    machine.add_model(marker, initial=current or definition.initial)
    text: str = marker.get_graph().draw(None)  # type: ignore[attr-defined]
    # transitions 0.9.3 writes the title as a bare line between "---"
    # markers; Mermaid's front matter needs it as a `title:` key.
    lines = text.strip().splitlines()
    if len(lines) > 3 and lines[0] == "---" and lines[2] == "---":
        lines[1] = f"title: {definition.name}"
    return "\n".join(line.rstrip() for line in lines) + "\n"
