"""Cost of one transition: Engine.fire against transitions and a dict table.

All three run the same two-state definition, whose two triggers each have
one guard and one action, and alternate its triggers so that every call
moves the flow:

- flowengine: `Engine.fire` on a MemoryStore: load the record, run the
  shared machine on a scratch model, save the record and append its audit
  event;
- transitions: a model added once to a `Machine` built from the same rows,
  fired with `model.trigger(...)`; nothing is saved or audited;
- a dict keyed by (state, trigger) with the same guard and action, the floor.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

from transitions import EventData, Machine

from benchmarks.common import FLOOR, PEER, SUBJECT, Scale, add_ratios, row, section
from benchmarks.common import target as make_target
from flowengine.adapters.clock import SystemClock
from flowengine.adapters.memory import MemoryStore
from flowengine.definition import FlowDefinition, Registry, parse_definition
from flowengine.engine import Engine, Run

TARGET_RATIO = 1.5
KEY = "brass"

DEFINITION = """
name: door
initial: locked
states:
  locked: {description: The door is locked.}
  unlocked: {description: The door is unlocked.}
transitions:
  - trigger: unlock
    source: locked
    dest: unlocked
    conditions: [key_fits]
    actions: [count_turn]
  - trigger: lock
    source: unlocked
    dest: locked
    conditions: [key_fits]
    actions: [count_turn]
"""

REGISTRY = Registry()


@REGISTRY.guard("key_fits")
def key_fits(run: Run) -> bool:
    return run.inputs.get("key") == KEY


@REGISTRY.action("count_turn")
def count_turn(run: Run) -> None:
    run.data["turns"] = run.data.get("turns", 0) + 1
    run.details["turns"] = run.data["turns"]


def load_door() -> FlowDefinition:
    """Return the benchmark's two-state definition, bound to REGISTRY."""
    return parse_definition(DEFINITION, source="benchmarks/door", registry=REGISTRY)


# The same guard and action in the shapes transitions and the dict table take.


def _bare_key_fits(event: EventData) -> bool:
    return event.kwargs.get("key") == KEY


def _bare_count_turn(event: EventData) -> None:
    model: Any = event.model
    model.turns += 1


class _BareModel:
    def __init__(self) -> None:
        self.turns = 0


def _engine_loop(definition: FlowDefinition, ops: int) -> Callable[[], None]:
    engine = Engine(definition, REGISTRY, MemoryStore(), SystemClock())
    flow_id = engine.create(data={"turns": 0, "owner": "benchmark"}).id
    fire = engine.fire

    def loop() -> None:
        for _ in range(ops // 2):
            fire(flow_id, "unlock", key=KEY)
            fire(flow_id, "lock", key=KEY)

    return loop


def _transitions_loop(definition: FlowDefinition, ops: int) -> Callable[[], None]:
    bare_callables: dict[str, Callable[[EventData], Any]] = {
        "key_fits": _bare_key_fits,
        "count_turn": _bare_count_turn,
    }
    rows = [
        {
            "trigger": spec.trigger,
            "source": list(spec.sources),
            "dest": spec.dest,
            "conditions": [bare_callables[name] for name in spec.conditions],
            "before": [bare_callables[name] for name in spec.actions],
        }
        for spec in definition.transitions
    ]
    model = _BareModel()
    Machine(
        model=model,
        states=list(definition.state_names),
        initial=definition.initial,
        transitions=rows,
        auto_transitions=False,
        send_event=True,
    )
    trigger = model.trigger  # type: ignore[attr-defined]

    def loop() -> None:
        for _ in range(ops // 2):
            trigger("unlock", key=KEY)
            trigger("lock", key=KEY)

    return loop


def _table_loop(definition: FlowDefinition, ops: int) -> Callable[[], None]:
    def guard(inputs: dict[str, Any]) -> bool:
        return inputs.get("key") == KEY

    def action(data: dict[str, Any]) -> None:
        data["turns"] = data.get("turns", 0) + 1

    table = {
        (source, spec.trigger): (guard, action, spec.dest)
        for spec in definition.transitions
        for source in spec.sources
    }
    data: dict[str, Any] = {"turns": 0}
    state = [definition.initial]

    def fire(trigger: str, **inputs: Any) -> None:
        check, act, dest = table[(state[0], trigger)]
        if check(inputs):
            act(data)
            state[0] = dest

    def loop() -> None:
        for _ in range(ops // 2):
            fire("unlock", key=KEY)
            fire("lock", key=KEY)

    return loop


def _time_per_op(
    make_loop: Callable[[FlowDefinition, int], Callable[[], None]],
    definition: FlowDefinition,
    ops: int,
    repeats: int,
) -> list[float]:
    """Return microseconds per transition of each run, after one warm-up run."""
    make_loop(definition, ops)()
    results = []
    for _ in range(repeats):
        loop = make_loop(definition, ops)
        started = time.perf_counter()
        loop()
        results.append((time.perf_counter() - started) / ops * 1e6)
    return results


def profile_engine(definition: FlowDefinition, ops: int) -> dict[str, Any]:
    """Profile Engine.fire and group its time by where the code lives.

    cProfile roughly doubles the cost of each call, so the shares matter,
    not the absolute times.
    """
    loop = _engine_loop(definition, ops)
    profiler = cProfile.Profile()
    profiler.runcall(loop)
    stats = pstats.Stats(profiler)
    by_origin: dict[str, float] = {}
    functions = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for (filename, line, name), (_, calls, own, _cumulative, _) in raw.items():
        origin = _origin(filename)
        by_origin[origin] = by_origin.get(origin, 0.0) + own
        total += own
        functions.append((own, calls, f"{_short(filename)}:{line}({name})"))
    functions.sort(reverse=True)
    return {
        "transitions_profiled": ops,
        "share_by_origin": {
            origin: round(seconds / total, 3)
            for origin, seconds in sorted(by_origin.items(), key=lambda kv: -kv[1])
        },
        "top_functions": [
            {
                "function": label,
                "calls_per_transition": round(calls / ops, 2),
                "own_share": round(own / total, 3),
            }
            for own, calls, label in functions[:12]
        ],
    }


def _origin(filename: str) -> str:
    if "/flowengine/" in filename:
        return "flowengine"
    if "/transitions/" in filename:
        return "transitions"
    if "/benchmarks/" in filename:
        return "benchmark guard and action"
    if filename.startswith("~") or filename == "":
        return "builtins"
    return f"stdlib {_module_file(filename)}"


def _short(filename: str) -> str:
    for marker in ("/flowengine/", "/transitions/", "/benchmarks/"):
        if marker in filename:
            return marker.strip("/") + "/" + filename.split(marker, 1)[1]
    return _module_file(filename)


def _module_file(filename: str) -> str:
    """Return the file name, with its package folder for an __init__.py."""
    parts = filename.rsplit("/", 2)
    if parts[-1] == "__init__.py" and len(parts) == 3:
        return f"{parts[-2]}/{parts[-1]}"
    return parts[-1]


def run(scale: Scale) -> dict[str, Any]:
    """Measure the three ways to fire a trigger and profile the engine."""
    definition = load_door()
    ops, repeats = scale.transition_ops, scale.transition_repeats
    rows = [
        row(
            "flowengine Engine.fire, MemoryStore, audit event",
            SUBJECT,
            _time_per_op(_engine_loop, definition, ops, repeats),
        ),
        row(
            "transitions model.trigger (model added once)",
            PEER,
            _time_per_op(_transitions_loop, definition, ops, repeats),
        ),
        row(
            "dict state table (floor)",
            FLOOR,
            _time_per_op(_table_loop, definition, ops, repeats),
        ),
    ]
    add_ratios(rows)
    ratio = rows[0]["ratio_to_peer"]
    met = None if ratio is None else ratio <= TARGET_RATIO
    detail = f"{ratio:.2f}× the bare transitions trigger" if ratio else "not measured"
    return section(
        "transition",
        "Transition overhead",
        unit="µs per transition",
        higher_is_better=False,
        rows=rows,
        target=make_target(
            f"at most {TARGET_RATIO}× the bare transitions trigger", met, detail
        ),
        setup={
            "transitions_per_run": ops,
            "runs": repeats,
            "warm_up_runs": 1,
            "definition": "two states, two triggers, one guard and one action each",
        },
        notes=[
            "Each flowengine transition loads the record from the store, copies "
            "its data for the scratch model, saves a new record and appends an "
            "audit event; the bare transitions trigger only changes the model's "
            "state attribute.",
        ],
        profile=profile_engine(definition, min(ops, 10_000)),
    )
