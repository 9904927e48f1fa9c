"""Load, validate and dump flow definitions written in YAML.

A definition is the transition table of a flow: its states, its initial
state and its transitions, each with a trigger, source states, a destination
and the names of its guards (conditions) and actions. Names are bound to
Python callables only through a `Registry`, never by import path.

File format::

    name: authorization_code
    initial: unauthorized
    states:
      unauthorized: {description: No token and no grant in progress.}
      awaiting_callback: {}
    transitions:
      - trigger: start
        source: [unauthorized]
        dest: awaiting_callback
        conditions: []
        actions: [begin_authorization]
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.resources
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from flowengine.errors import DefinitionError

# \Z rather than $, because $ also matches before a trailing newline.
NAME_PATTERN = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
NAME_RULE = "lower-case letters, digits and '_', starting with a letter"

_TOP = "<top level>"
_TOP_KEYS = {"name", "description", "initial", "states", "transitions"}
_STATE_KEYS = {"description"}
_TRANSITION_KEYS = {
    "trigger",
    "source",
    "dest",
    "conditions",
    "actions",
    "description",
}


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One state of a definition."""

    name: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """One row of the transition table.

    The transition fires on `trigger` from any state in `sources` when every
    guard in `conditions` returns true; its `actions` then run in order.
    """

    trigger: str
    sources: tuple[str, ...]
    dest: str
    conditions: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    description: str = ""


@dataclasses.dataclass(frozen=True)
class FlowDefinition:
    """A validated flow definition; `source` names the file it came from."""

    name: str
    initial: str
    states: tuple[StateSpec, ...]
    transitions: tuple[TransitionSpec, ...]
    description: str = ""
    source: str = dataclasses.field(default="<string>", compare=False)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(state.name for state in self.states)

    @property
    def triggers(self) -> tuple[str, ...]:
        """Every trigger name, in order of first appearance."""
        return tuple(dict.fromkeys(t.trigger for t in self.transitions))

    def triggers_from(self, state: str) -> tuple[str, ...]:
        """Return the triggers that have a transition leaving `state`."""
        return tuple(
            dict.fromkeys(t.trigger for t in self.transitions if state in t.sources)
        )

    def transitions_for(self, trigger: str, source: str) -> tuple[TransitionSpec, ...]:
        """Return the transitions of `trigger` from `source`, in table order."""
        return tuple(
            t for t in self.transitions if t.trigger == trigger and source in t.sources
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the definition in the shape of its YAML file."""
        raw: dict[str, Any] = {"name": self.name}
        if self.description:
            raw["description"] = self.description
        raw["initial"] = self.initial
        raw["states"] = {
            s.name: ({"description": s.description} if s.description else {})
            for s in self.states
        }
        raw["transitions"] = [_transition_to_dict(t) for t in self.transitions]
        return raw


def _transition_to_dict(spec: TransitionSpec) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trigger": spec.trigger,
        "source": list(spec.sources),
        "dest": spec.dest,
    }
    if spec.conditions:
        row["conditions"] = list(spec.conditions)
    if spec.actions:
        row["actions"] = list(spec.actions)
    if spec.description:
        row["description"] = spec.description
    return row


# Guards and actions receive the transition's context object (engine.Run).
Guard = Callable[[Any], bool]
Action = Callable[[Any], None]


class Registry:
    """Maps the guard and action names used in YAML to Python callables.

    Only names registered here can be bound: a definition cannot reach any
    other code, whatever it contains.
    """

    def __init__(self) -> None:
        self.guards: dict[str, Guard] = {}
        self.actions: dict[str, Action] = {}

    def guard(self, name: str) -> Callable[[Guard], Guard]:
        """Register the decorated function as the guard `name`."""

        def register(func: Guard) -> Guard:
            self._check_new(name)
            self.guards[name] = func
            return func

        return register

    def action(self, name: str) -> Callable[[Action], Action]:
        """Register the decorated function as the action `name`."""

        def register(func: Action) -> Action:
            self._check_new(name)
            self.actions[name] = func
            return func

        return register

    def _check_new(self, name: str) -> None:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"callable name {name!r} must use {NAME_RULE}")
        if name in self.guards or name in self.actions:
            raise ValueError(f"callable name {name!r} is already registered")


def builtin_definition_path(name: str) -> Path:
    """Return the path of a definition shipped with the package.

    Raises:
        DefinitionError: no shipped definition has that name.
    """
    path = _shipped_flows_dir() / f"{name}.yaml"
    if not NAME_PATTERN.match(name) or not path.is_file():
        raise DefinitionError(
            f"flowengine.flows/{name}.yaml",
            "<file>",
            f"no shipped flow definition is named {name!r}",
            "use 'authorization_code' or pass the path of a YAML file",
        )
    return path


def _shipped_flows_dir() -> Path:
    # An installed package maps the repository's flows/ folder to the
    # flowengine.flows package. A source checkout that is imported without
    # being installed has no such package, so read flows/ beside it.
    try:
        return Path(str(importlib.resources.files("flowengine.flows")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "flows"


def load_definition(
    source: str | Path, registry: Registry | None = None
) -> FlowDefinition:
    """Read and validate a flow definition from a YAML file.

    Args:
        source: a file path, or the name of a shipped definition such as
            "authorization_code".
        registry: when given, every guard and action name must be in it.

    Raises:
        DefinitionError: the file is missing, not YAML or not a valid
            definition; the message names the key path and the fix.
    """
    path = Path(source)
    if not path.suffix and not path.exists():
        path = builtin_definition_path(str(source))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DefinitionError(
            str(path), "<file>", f"cannot read the file ({exc})", "check the path"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DefinitionError(
            str(path), "<file>", f"the file is not UTF-8 ({exc})", "save it as UTF-8"
        ) from exc
    return parse_definition(text, source=str(path), registry=registry)


def parse_definition(
    text: str, *, source: str = "<string>", registry: Registry | None = None
) -> FlowDefinition:
    """Validate a flow definition given as YAML text.

    Raises:
        DefinitionError: as `load_definition`.
    """
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise DefinitionError(
            source, "<file>", f"not valid YAML ({exc})", "fix the YAML syntax"
        ) from exc
    except RecursionError as exc:
        # PyYAML composes nested collections recursively.
        raise DefinitionError(
            source,
            "<file>",
            "the YAML nests too deeply to read",
            "write a flat definition as the file format shows",
        ) from exc
    return _Validator(source, registry).definition(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated in one mapping.

    PyYAML keeps the last of two equal keys, so a row with two `dest:` keys
    would silently lose one of them.
    """

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # keys from a "<<" merge may be overridden on purpose
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found a {_kind(key)} used as a key, where a name is expected",
                    key_node.start_mark,
                )
            if not isinstance(key, str | int | float | bool):
                continue  # the validator rejects any key that is not a name
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def dump_definition(definition: FlowDefinition) -> str:
    """Return YAML text that `parse_definition` reads back to `definition`."""
    return yaml.safe_dump(definition.to_dict(), sort_keys=False, allow_unicode=True)


class _Validator:
    """Checks raw YAML data and builds a FlowDefinition from it."""

    def __init__(self, source: str, registry: Registry | None) -> None:
        self.source = source
        self.registry = registry

    def fail(self, path: str, problem: str, fix: str) -> DefinitionError:
        return DefinitionError(self.source, path, problem, fix)

    def definition(self, raw: object) -> FlowDefinition:
        top = self.mapping(raw, _TOP, _TOP_KEYS)
        for key in ("name", "initial", "states", "transitions"):
            if key not in top:
                raise self.fail(key, f"required key {key!r} is missing", f"add {key!r}")

        name = self.name(top["name"], "name")
        description = self.text(top.get("description", ""), "description")
        states = self.states(top["states"])
        state_names = [s.name for s in states]
        initial = self.name(top["initial"], "initial")
        if initial not in state_names:
            raise self.fail(
                "initial",
                f"initial state {initial!r} is not among the states",
                f"use one of {', '.join(state_names)}",
            )
        transitions = self.transitions(top["transitions"], state_names)

        self.check_ambiguity(transitions)
        self.check_reachable(initial, state_names, transitions)
        return FlowDefinition(
            name=name,
            initial=initial,
            states=tuple(states),
            transitions=tuple(transitions),
            description=description,
            source=self.source,
        )

    def mapping(self, raw: object, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(
                path,
                f"expected a mapping, found {_kind(raw)}",
                "write key: value pairs",
            )
        for key in raw:
            if not isinstance(key, str) or key not in allowed:
                # An empty key would leave the path of a top-level key empty.
                where = str(key) if path == _TOP else f"{path}.{key}"
                raise self.fail(
                    where or _TOP,
                    f"unknown key {key!r}",
                    f"use only {', '.join(sorted(allowed))}",
                )
        return raw

    def name(self, raw: object, path: str) -> str:
        if not isinstance(raw, str):
            raise self.fail(
                path,
                f"expected a name, found {_kind(raw)}",
                f"write a name of {NAME_RULE}",
            )
        if not NAME_PATTERN.match(raw):
            raise self.fail(
                path, f"invalid name {raw!r}", f"write a name of {NAME_RULE}"
            )
        return raw

    def text(self, raw: object, path: str) -> str:
        if not isinstance(raw, str):
            raise self.fail(
                path, f"expected text, found {_kind(raw)}", "quote the text"
            )
        return raw

    def names(self, raw: object, path: str, *, allow_empty: bool) -> list[str]:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise self.fail(
                path, f"expected a list of names, found {_kind(raw)}", "write [a, b]"
            )
        if not items and not allow_empty:
            raise self.fail(path, "the list is empty", "name at least one state")
        names = [self.name(item, f"{path}[{i}]") for i, item in enumerate(items)]
        counts = collections.Counter(names)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            raise self.fail(
                path, f"{', '.join(duplicates)} listed twice", "list each name once"
            )
        return names

    def states(self, raw: object) -> list[StateSpec]:
        if not isinstance(raw, dict) or not raw:
            raise self.fail(
                "states",
                f"expected a non-empty mapping of states, found {_kind(raw)}",
                "write 'state_name: {description: ...}' for each state",
            )
        states = []
        for key, body in raw.items():
            name = self.name(key, f"states.{key}")
            path = f"states.{name}"
            fields = self.mapping({} if body is None else body, path, _STATE_KEYS)
            description = self.text(
                fields.get("description", ""), f"{path}.description"
            )
            states.append(StateSpec(name, description))
        return states

    def transitions(self, raw: object, states: Sequence[str]) -> list[TransitionSpec]:
        if not isinstance(raw, list) or not raw:
            raise self.fail(
                "transitions",
                f"expected a non-empty list of transitions, found {_kind(raw)}",
                "write one '- trigger: ...' item per transition",
            )
        # A dict keeps the states in order for messages and finds one in O(1).
        known = dict.fromkeys(states)
        return [
            self.transition(item, f"transitions[{i}]", known)
            for i, item in enumerate(raw)
        ]

    def transition(
        self, raw: object, path: str, states: Mapping[str, None]
    ) -> TransitionSpec:
        row = self.mapping(raw, path, _TRANSITION_KEYS)
        for key in ("trigger", "source", "dest"):
            if key not in row:
                raise self.fail(
                    f"{path}.{key}", f"required key {key!r} is missing", f"add {key!r}"
                )

        trigger = self.name(row["trigger"], f"{path}.trigger")
        sources = self.names(row["source"], f"{path}.source", allow_empty=False)
        dest = self.name(row["dest"], f"{path}.dest")
        for where, state in [
            *((f"{path}.source", s) for s in sources),
            (f"{path}.dest", dest),
        ]:
            if state not in states:
                raise self.fail(
                    where, f"unknown state {state!r}", f"use one of {', '.join(states)}"
                )

        conditions = self.names(
            row.get("conditions", []), f"{path}.conditions", allow_empty=True
        )
        actions = self.names(
            row.get("actions", []), f"{path}.actions", allow_empty=True
        )
        self.check_callables(conditions, f"{path}.conditions", "guards")
        self.check_callables(actions, f"{path}.actions", "actions")
        description = self.text(row.get("description", ""), f"{path}.description")
        return TransitionSpec(
            trigger,
            tuple(sources),
            dest,
            tuple(conditions),
            tuple(actions),
            description,
        )

    def check_callables(self, names: Iterable[str], path: str, kind: str) -> None:
        if self.registry is None:
            return
        known: Mapping[str, object] = getattr(self.registry, kind)
        for name in names:
            if name not in known:
                choices = ", ".join(sorted(known)) or "none registered"
                raise self.fail(
                    path,
                    f"unknown {kind[:-1]} {name!r}",
                    f"register it in the registry or use one of: {choices}",
                )

    def check_ambiguity(self, transitions: Sequence[TransitionSpec]) -> None:
        # transitions tries rows of one trigger and source in table order, so
        # a row whose guards include every guard of an earlier row (an
        # unguarded row, the same guards in any order) can never fire.
        # NOTE: rows are compared in pairs per trigger and source, so thousands
        # of rows for one trigger and source take seconds to check.
        seen: dict[tuple[str, str], list[tuple[int, frozenset[str]]]] = {}
        for index, spec in enumerate(transitions):
            guards = frozenset(spec.conditions)
            for source in spec.sources:
                earlier = seen.setdefault((spec.trigger, source), [])
                for other, conditions in earlier:
                    if conditions <= guards:
                        raise self.fail(
                            f"transitions[{index}]",
                            f"trigger {spec.trigger!r} from {source!r} is shadowed "
                            f"by transitions[{other}], whose guards are all among "
                            "this row's, so this row can never fire",
                            "remove the duplicate or give the earlier row "
                            "distinct conditions",
                        )
                earlier.append((index, guards))

    def check_reachable(
        self, initial: str, states: Sequence[str], transitions: Sequence[TransitionSpec]
    ) -> None:
        destinations: dict[str, set[str]] = collections.defaultdict(set)
        for spec in transitions:
            for source in spec.sources:
                destinations[source].add(spec.dest)
        reached = {initial}
        frontier = [initial]
        while frontier:
            state = frontier.pop()
            for dest in destinations[state] - reached:
                reached.add(dest)
                frontier.append(dest)
        unreachable = [s for s in states if s not in reached]
        if unreachable:
            raise self.fail(
                f"states.{unreachable[0]}",
                f"state(s) {', '.join(unreachable)} cannot be reached from "
                f"initial state {initial!r}",
                "add a transition into it or remove the state",
            )


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return type(value).__name__
