"""The grant's property test must fail when the grant is broken on purpose.

Each test breaks one promise of the grant, in a copy of the flow definition
or in the client, runs the stateful test of test_properties.py and asserts
that hypothesis finds a counterexample for the right reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from test_properties import TokenLifecycleMachine, grant_machine

from flowengine.client import OAuthClient
from flowengine.definition import FlowDefinition, parse_definition
from flowengine.grant import REGISTRY
from flowengine.records import FlowRecord
from flowengine.testing import FlowStateMachine

SHIPPED = Path(__file__).resolve().parents[1] / "flows" / "authorization_code.yaml"

# Generation only: the first counterexample is enough, and shrinking it
# would only make the test slower.
HUNT = settings(
    max_examples=400,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    print_blob=False,
)


def mutated_definition(old: str, new: str) -> FlowDefinition:
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the shipped definition no longer contains {old!r}"
    return parse_definition(
        text.replace(old, new), source="mutated.yaml", registry=REGISTRY
    )


def counterexample(machine: type[FlowStateMachine]) -> str:
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(machine, settings=HUNT)
    return str(caught.value)


def test_unchecked_callback_state_is_caught() -> None:
    definition = mutated_definition(
        "conditions: [callback_state_matches, callback_has_code]",
        "conditions: [callback_has_code]",
    )

    message = counterexample(grant_machine(definition))

    assert "callback" in message
    assert "matching" in message or "must reject" in message


def test_expiry_without_leeway_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def usable_until_expiry(self: OAuthClient, record: FlowRecord) -> bool:
        expires_at = record.data.get("expires_at")
        return expires_at is None or self.clock.now() < float(expires_at)

    monkeypatch.setattr(OAuthClient, "_usable", usable_until_expiry)

    message = counterexample(grant_machine(base=TokenLifecycleMachine))

    assert "minus the leeway" in message


def test_failed_refresh_keeping_old_token_is_caught() -> None:
    definition = mutated_definition(
        "source: refreshing\n    dest: expired",
        "source: refreshing\n    dest: token_held",
    )

    machine = grant_machine(definition, base=TokenLifecycleMachine)

    message = counterexample(machine)

    assert "refresh_failed to token_held" in message
