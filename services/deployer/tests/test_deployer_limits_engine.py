"""Pre-trade limits decided without I/O: a request states all of a strategy's limits, only operators set them,
and every change names what changed."""

import pytest

from qmp_core.messages import LimitsEntry, PreTradeLimits, SetLimits
from qmp_deployer.engine import decide_limits


def entry(**limits: object) -> LimitsEntry:
    return LimitsEntry(strategy="vol", limits=PreTradeLimits(**limits), sender="alice", command_id="c-0")  # type: ignore[arg-type]


def test_decide_when_an_operator_sets_limits_then_entry_is_exactly_the_request_and_changes_are_named() -> None:
    request = SetLimits(limits=PreTradeLimits(max_order_notional=250_000.0, max_order_rate=20), command_id="c-1",
                        reason="tighter for the launch")

    decision = decide_limits("vol", "alice", request, entry(max_order_notional=1e6, price_collar=0.05), 7)

    assert decision.accepted and decision.entry is not None
    assert decision.entry.limits == PreTradeLimits(max_order_notional=250_000.0, max_order_rate=20)
    assert (decision.entry.sender, decision.entry.command_id, decision.entry.ts_event) == ("alice", "c-1", 7)
    assert decision.changed == ("max_order_notional", "price_collar", "max_order_rate")  # collar: back to below
    assert decision.record is not None and decision.record.before.price_collar == 0.05
    assert decision.record.reason == "tighter for the launch"


def test_decide_when_nothing_changes_then_accepted_with_no_write_even_with_symbols_in_another_order() -> None:
    current = entry(restricted_symbols=["AMC", "GME"])
    request = SetLimits(limits=PreTradeLimits(restricted_symbols=["GME", "AMC", "GME"]), command_id="c-2")

    decision = decide_limits("vol", "alice", request, current, 1)

    assert decision.accepted and decision.changed == () and decision.record is None and decision.entry == current


def test_decide_when_request_gives_no_limit_then_the_entry_is_removed_and_audited() -> None:
    decision = decide_limits("vol", "alice", SetLimits(command_id="c-3"), entry(max_gross_exposure=2e6), 1)

    assert decision.accepted and decision.entry is None and decision.changed == ("max_gross_exposure",)
    assert decision.record is not None and decision.record.after == PreTradeLimits()


@pytest.mark.parametrize("sender", ["risk", "execution", "collector", "deployer"])
def test_decide_when_a_service_sends_then_refused(sender: str) -> None:
    decision = decide_limits("vol", sender, SetLimits(limits=PreTradeLimits(max_order_rate=0)), None, 1)

    assert not decision.accepted and "set by an operator" in decision.reason and decision.entry is None

