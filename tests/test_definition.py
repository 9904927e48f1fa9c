"""Tests of loading, validating and dumping flow definitions."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from flowengine.definition import (
    NAME_PATTERN,
    FlowDefinition,
    Registry,
    StateSpec,
    TransitionSpec,
    dump_definition,
    load_definition,
    parse_definition,
)
from flowengine.errors import DefinitionError

SHIPPED = Path(__file__).resolve().parents[1] / "flows" / "authorization_code.yaml"

SHIPPED_STATES = (
    "unauthorized",
    "awaiting_callback",
    "code_received",
    "token_held",
    "expired",
    "refreshing",
)

VALID = """\
name: door
initial: closed
states:
  closed: {}
  open: {}
transitions:
  - trigger: open
    source: closed
    dest: open
    conditions: [not_jammed]
    actions: [count_opening]
  - trigger: close
    source: open
    dest: closed
"""


def write(tmp_path: Path, text: str | bytes, name: str = "flow.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, registry: Registry | None = None) -> DefinitionError:
    with pytest.raises(DefinitionError) as caught:
        load_definition(path, registry)
    return caught.value


def door_registry() -> Registry:
    registry = Registry()
    registry.guard("not_jammed")(lambda run: True)
    registry.action("count_opening")(lambda run: None)
    return registry


# --- the shipped definition ------------------------------------------------


def test_shipped_definition_loads_six_states() -> None:
    definition = load_definition(SHIPPED)

    assert definition.name == "authorization_code"
    assert definition.state_names == SHIPPED_STATES
    assert definition.initial == "unauthorized"
    assert definition.source == str(SHIPPED)


def test_shipped_definition_triggers() -> None:
    definition = load_definition(SHIPPED)

    assert set(definition.triggers) == {
        "start",
        "receive_code",
        "receive_error",
        "abandon",
        "receive_token",
        "reject_code",
        "exchange_failed",
        "expire",
        "refresh",
        "reject_refresh",
        "refresh_failed",
        "logout",
    }
    assert definition.triggers_from("unauthorized") == ("start",)


def test_shipped_definition_round_trips() -> None:
    definition = load_definition(SHIPPED)

    text = dump_definition(definition)
    again = parse_definition(text)

    assert again == definition
    assert dump_definition(again) == text


def test_shipped_definition_has_no_dotted_names() -> None:
    definition = load_definition(SHIPPED)

    for spec in definition.transitions:
        for name in (*spec.conditions, *spec.actions):
            assert NAME_PATTERN.match(name), name


def test_shipped_definition_loads_by_name() -> None:
    definition = load_definition("authorization_code")

    assert definition.state_names == SHIPPED_STATES
    assert definition == load_definition(SHIPPED)


@pytest.mark.parametrize("name", ["no_such_flow", "../flows/authorization_code"])
def test_unknown_shipped_name_is_rejected(name: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        load_definition(name)

    assert caught.value.path == "<file>"
    assert f"no shipped flow definition is named {name!r}" in caught.value.problem
    assert "authorization_code" in caught.value.fix


# --- round trip and queries ------------------------------------------------


def test_handmade_definition_round_trips() -> None:
    definition = FlowDefinition(
        name="door",
        initial="closed",
        states=(
            StateSpec("closed", "Shut: 'no' entry, key: none.\nSecond line é ✓"),
            StateSpec("open"),
            StateSpec("locked", "yes"),
        ),
        transitions=(
            TransitionSpec("open", ("closed",), "open", ("not_jammed",), ("log",)),
            TransitionSpec("close", ("open",), "closed", description="on: true"),
            TransitionSpec("lock", ("closed",), "locked", ("has_key",)),
            TransitionSpec("lock", ("closed",), "locked", ("has_pin",)),
            TransitionSpec("unlock", ("locked",), "closed"),
        ),
        description="A door: 'open', \"closed\" or null.",
    )

    again = parse_definition(dump_definition(definition))

    assert again == definition


def test_definition_accepts_single_source_name(tmp_path: Path) -> None:
    definition = load_definition(write(tmp_path, VALID))

    assert definition.transitions[0].sources == ("closed",)
    assert definition.transitions[0].conditions == ("not_jammed",)
    assert definition.transitions[1].conditions == ()


def test_transitions_for_keeps_table_order() -> None:
    definition = load_definition(SHIPPED)

    rows = definition.transitions_for("refresh", "expired")

    assert [row.dest for row in rows] == ["refreshing"]
    assert definition.transitions_for("refresh", "unauthorized") == ()


def test_definition_loads_with_complete_registry(tmp_path: Path) -> None:
    definition = load_definition(write(tmp_path, VALID), door_registry())

    assert definition.name == "door"


# --- mistakes --------------------------------------------------------------

# Each case: YAML text, the key path the error must name, a fragment of the
# problem and a fragment of the fix.
MISTAKES = {
    "unknown source state": (
        VALID.replace("source: closed", "source: [closed, ajar]"),
        "transitions[0].source",
        "unknown state 'ajar'",
        "use one of closed, open",
    ),
    "unknown dest state": (
        VALID.replace("dest: open", "dest: ajar"),
        "transitions[0].dest",
        "unknown state 'ajar'",
        "use one of closed, open",
    ),
    "unreachable state": (
        VALID.replace("  open: {}\n", "  open: {}\n  locked: {}\n"),
        "states.locked",
        "locked cannot be reached",
        "add a transition into it",
    ),
    "missing initial": (
        VALID.replace("initial: closed\n", ""),
        "initial",
        "required key 'initial' is missing",
        "add 'initial'",
    ),
    "initial not a state": (
        VALID.replace("initial: closed", "initial: ajar"),
        "initial",
        "'ajar' is not among the states",
        "use one of closed, open",
    ),
    "duplicate unguarded trigger": (
        VALID + "  - {trigger: close, source: open, dest: open}\n",
        "transitions[2]",
        "trigger 'close' from 'open' is shadowed by transitions[1]",
        "remove the duplicate",
    ),
    "duplicate trigger with same guards": (
        VALID
        + "  - {trigger: open, source: [closed], dest: closed,"
        + " conditions: [not_jammed]}\n",
        "transitions[2]",
        "trigger 'open' from 'closed' is shadowed by transitions[0]",
        "distinct conditions",
    ),
    "duplicate trigger with guards reordered": (
        VALID.replace("[not_jammed]", "[not_jammed, is_day]")
        + "  - {trigger: open, source: closed, dest: closed,"
        + " conditions: [is_day, not_jammed]}\n",
        "transitions[2]",
        "shadowed by transitions[0]",
        "distinct conditions",
    ),
    "trigger after a row with fewer guards": (
        VALID
        + "  - {trigger: open, source: closed, dest: closed,"
        + " conditions: [not_jammed, is_day]}\n",
        "transitions[2]",
        "shadowed by transitions[0]",
        "distinct conditions",
    ),
    "states as list": (
        VALID.replace("  closed: {}\n  open: {}\n", "  - closed\n  - open\n"),
        "states",
        "expected a non-empty mapping of states, found list",
        "state_name: {description: ...}",
    ),
    "states empty": (
        VALID.replace("  closed: {}\n  open: {}\n", "  {}\n"),
        "states",
        "expected a non-empty mapping of states, found dict",
        "state_name",
    ),
    "source as int": (
        VALID.replace("source: closed", "source: 7"),
        "transitions[0].source",
        "expected a list of names, found int",
        "write [a, b]",
    ),
    "source as empty list": (
        VALID.replace("source: closed", "source: []"),
        "transitions[0].source",
        "the list is empty",
        "name at least one state",
    ),
    "source listed twice": (
        VALID.replace("source: closed", "source: [closed, closed]"),
        "transitions[0].source",
        "closed listed twice",
        "list each name once",
    ),
    "conditions as mapping": (
        VALID.replace("[not_jammed]", "{not_jammed: true}"),
        "transitions[0].conditions",
        "expected a list of names, found dict",
        "write [a, b]",
    ),
    "name with spaces": (
        VALID.replace("name: door", "name: front door"),
        "name",
        "invalid name 'front door'",
        "lower-case letters, digits and '_'",
    ),
    "name in upper case": (
        VALID.replace("name: door", "name: Door"),
        "name",
        "invalid name 'Door'",
        "lower-case letters",
    ),
    "name with trailing newline": (
        VALID.replace("name: door", 'name: "door\\n"'),
        "name",
        "invalid name 'door\\n'",
        "lower-case letters",
    ),
    "name as int": (
        VALID.replace("name: door", "name: 42"),
        "name",
        "expected a name, found int",
        "write a name",
    ),
    "trigger as bool": (
        VALID.replace("trigger: close", "trigger: on"),
        "transitions[1].trigger",
        "expected a name, found bool",
        "write a name",
    ),
    "state name in upper case": (
        VALID.replace("  open: {}", "  Open: {}"),
        "states.Open",
        "invalid name 'Open'",
        "lower-case letters",
    ),
    "guard with upper case": (
        VALID.replace("[not_jammed]", "[notJammed]"),
        "transitions[0].conditions[0]",
        "invalid name 'notJammed'",
        "lower-case letters",
    ),
    "unknown top-level key": (
        VALID + "version: 2\n",
        "version",
        "unknown key 'version'",
        "use only description, initial, name, states, transitions",
    ),
    "unknown state key": (
        VALID.replace("  open: {}", "  open: {colour: red}"),
        "states.open.colour",
        "unknown key 'colour'",
        "use only description",
    ),
    "unknown transition key": (
        VALID.replace("conditions:", "guards:"),
        "transitions[0].guards",
        "unknown key 'guards'",
        "use only actions, conditions, description, dest, source, trigger",
    ),
    "missing trigger": (
        VALID.replace("  - trigger: close\n    source: open", "  - source: open"),
        "transitions[1].trigger",
        "required key 'trigger' is missing",
        "add 'trigger'",
    ),
    "transitions empty": (
        VALID.split("transitions:")[0] + "transitions: []\n",
        "transitions",
        "expected a non-empty list of transitions, found list",
        "- trigger: ...",
    ),
    "transition as text": (
        VALID + "  - close the door\n",
        "transitions[2]",
        "expected a mapping, found str",
        "key: value pairs",
    ),
    "description as list": (
        VALID.replace("initial: closed", "initial: closed\ndescription: [a]"),
        "description",
        "expected text, found list",
        "quote the text",
    ),
    "top level as list": (
        "- name: door\n",
        "<top level>",
        "expected a mapping, found list",
        "key: value pairs",
    ),
    "invalid yaml": (
        VALID.replace("states:", "states: [unclosed"),
        "<file>",
        "not valid YAML",
        "fix the YAML syntax",
    ),
    "repeated key in one mapping": (
        VALID.replace("dest: open", "dest: open\n    dest: closed"),
        "<file>",
        "found duplicate key 'dest'",
        "fix the YAML syntax",
    ),
    "state defined twice": (
        VALID.replace("  open: {}\n", "  open: {}\n  closed: {}\n"),
        "<file>",
        "found duplicate key 'closed'",
        "fix the YAML syntax",
    ),
    "empty file": (
        "",
        "<top level>",
        "expected a mapping, found nothing",
        "key: value pairs",
    ),
}


@pytest.mark.parametrize(
    ("text", "key_path", "problem", "fix"),
    list(MISTAKES.values()),
    ids=list(MISTAKES),
)
def test_definition_mistake_is_rejected(
    tmp_path: Path, text: str, key_path: str, problem: str, fix: str
) -> None:
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.source == str(path)
    assert error.path == key_path
    assert problem in error.problem
    assert fix in error.fix
    assert str(path) in str(error)
    assert f"at {key_path}:" in str(error)
    assert "Fix: " in str(error)


def test_unknown_guard_with_registry(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("[not_jammed]", "[not_stuck]"))

    error = load_error(path, door_registry())

    assert error.path == "transitions[0].conditions"
    assert "unknown guard 'not_stuck'" in error.problem
    assert "use one of: not_jammed" in error.fix


def test_unknown_action_with_registry(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("[count_opening]", "[ring_bell]"))

    error = load_error(path, door_registry())

    assert error.path == "transitions[0].actions"
    assert "unknown action 'ring_bell'" in error.problem
    assert "use one of: count_opening" in error.fix


def test_guard_registered_as_action_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("[not_jammed]", "[count_opening]"))

    error = load_error(path, door_registry())

    assert error.path == "transitions[0].conditions"
    assert "unknown guard 'count_opening'" in error.problem


def test_unregistered_names_load_without_registry(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("[not_jammed]", "[not_stuck]"))

    definition = load_definition(path)

    assert definition.transitions[0].conditions == ("not_stuck",)


# --- files -----------------------------------------------------------------


def test_definition_file_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("door", "d\u00f6or").encode("latin-1"))

    error = load_error(path)

    assert error.source == str(path)
    assert error.path == "<file>"
    assert "not UTF-8" in error.problem
    assert "UTF-8" in error.fix


def test_definition_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    error = load_error(path)

    assert error.source == str(path)
    assert error.path == "<file>"
    assert "cannot read the file" in error.problem
    assert "check the path" in error.fix


def test_definition_path_is_folder(tmp_path: Path) -> None:
    folder = tmp_path / "flows.yaml"
    folder.mkdir()

    error = load_error(folder)

    assert error.path == "<file>"
    assert "cannot read the file" in error.problem


def test_definition_yaml_tags_are_not_constructed(tmp_path: Path) -> None:
    text = VALID.replace("name: door", "name: !!python/object/apply:os.getcwd []")
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.path == "<file>"
    assert "not valid YAML" in error.problem


# --- import paths ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["os.system", "subprocess.call", "os:system", "builtins/eval", "__import__"],
)
def test_name_pattern_rejects_import_paths(name: str) -> None:
    assert NAME_PATTERN.match(name) is None


@pytest.mark.parametrize("name", ["a", "start", "has_refresh_token", "x" * 64])
def test_name_pattern_accepts_plain_names(name: str) -> None:
    assert NAME_PATTERN.match(name) is not None


def test_name_pattern_rejects_long_name() -> None:
    assert NAME_PATTERN.match("x" * 65) is None


@pytest.mark.parametrize("key", ["conditions", "actions"])
@pytest.mark.parametrize("name", ["os.system", "subprocess.call"])
def test_definition_rejects_dotted_callable(
    tmp_path: Path, key: str, name: str
) -> None:
    text = VALID.replace("[not_jammed]", "[]").replace("[count_opening]", "[]")
    text = text.replace(f"{key}: []", f"{key}: [{name}]")
    path = write(tmp_path, text)

    error = load_error(path)

    assert error.path == f"transitions[0].{key}[0]"
    assert f"invalid name {name!r}" in error.problem


def test_dotted_guard_module_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_dir = tmp_path / "modules"
    module_dir.mkdir()
    marker = tmp_path / "imported.txt"
    probe = "flowengine_probe_module"
    (module_dir / f"{probe}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef trip(event):\n    return True\n"
    )
    monkeypatch.syspath_prepend(str(module_dir))
    path = write(tmp_path, VALID.replace("[not_jammed]", f"[{probe}.trip]"))

    with pytest.raises(DefinitionError):
        load_definition(path, door_registry())

    assert probe not in sys.modules
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "Bad", ""])
def test_registry_rejects_invalid_guard_name(name: str) -> None:
    registry = Registry()

    with pytest.raises(ValueError, match="must use lower-case letters"):
        registry.guard(name)(lambda run: True)

    assert registry.guards == {}


def test_registry_rejects_name_used_twice() -> None:
    registry = door_registry()

    with pytest.raises(ValueError, match="'not_jammed' is already registered"):
        registry.action("not_jammed")(lambda run: None)

    assert "not_jammed" not in registry.actions
