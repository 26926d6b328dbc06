"""Repeated denials under one trading state: published once per symbol, the repeats counted."""

import msgspec
import pytest

from qmp_core.messages import OrderAccepted, OrderDenied, TradingState
from qmp_execution.engine.codes import CODE_HALTED, CODE_INSUFFICIENT_CASH
from qmp_execution.engine.denials import RepeatedDenials

HALTED = TradingState(strategy="s", status="HALTED", reason="drawdown", command_id="c1")
ACTIVE = TradingState(strategy="s")


def denied(ts: int, symbol: str, code: str = CODE_HALTED) -> OrderDenied:
    return OrderDenied(strategy="s", order_id=f"s-{ts}-{symbol}", symbol=symbol, side="BUY", quantity=1.0,
                       price=10.0, ts_event=ts, reason=f"{code}: why", reason_code=code)


def test_select_when_halted_for_many_batches_then_one_denial_per_symbol_and_one_count_at_resume() -> None:
    denials = RepeatedDenials()
    published = [denials.select(HALTED, [denied(ts, s) for s in ("A", "B")]) for ts in range(1, 11)]
    accepted = OrderAccepted(strategy="s", order_id="s-11-A", symbol="A", side="BUY", quantity=1.0, price=10.0,
                             ts_event=11)
    resumed = denials.select(ACTIVE, [accepted])

    assert [[e.order_id for e in batch] for batch in published] == [["s-1-A", "s-1-B"]] + [[]] * 9
    counts, after = resumed[:2], resumed[2:]
    assert [(e.symbol, e.count, e.ts_event, e.order_id) for e in counts] == [("A", 9, 10, "s-10-A"),
                                                                           ("B", 9, 10, "s-10-B")]
    assert all(isinstance(e, OrderDenied) and "9 repeated denials" in e.reason for e in counts)
    assert after == [accepted]


@pytest.mark.parametrize("change", [{"reason": "operator"}, {"command_id": "c2"}])
def test_select_when_state_changes_then_first_denial_published_again(change: dict[str, str]) -> None:
    # {"command_id": "c2"}: halted, resumed and halted again for the same reason between two batches
    denials = RepeatedDenials()
    denials.select(HALTED, [denied(1, "A")])
    denials.select(HALTED, [denied(2, "A")])
    other = msgspec.structs.replace(HALTED, **change)
    assert [(e.order_id, e.count) for e in denials.select(other, [denied(3, "A")])] == [("s-2-A", 1), ("s-3-A", 1)]


def test_select_when_denial_is_not_the_trading_state_then_always_published() -> None:
    denials = RepeatedDenials()
    batches = [denials.select(ACTIVE, [denied(ts, "A", CODE_INSUFFICIENT_CASH)]) for ts in (1, 2, 3)]
    assert [len(batch) for batch in batches] == [1, 1, 1]
    assert denials.flush() == []
