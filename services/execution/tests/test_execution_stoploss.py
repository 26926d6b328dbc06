"""Risk stop-losses in the engine (engine/stoploss.py, the host): ClosePosition → the position closed on
the next batch."""

import logging

import pytest
from execution_testkit import (
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    set_state,
)

from qmp_core.clock import NS_PER_DAY
from qmp_core.messages import (
    ClosePosition,
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderEvent,
    PortfolioSnapshot,
    codec,
    encode,
)
from qmp_execution.engine import CODE_HALTED, CODE_STOP_LOSS, ExecutionEngine, StrategyResult

WEIGHTS = {"AAA": 0.4, "BBB": 0.4}
ENTRY = {"AAA": 50.0, "BBB": 200.0}
FALLEN = {"AAA": 42.0, "BBB": 200.0}  # AAA down 16% from its entry


def close_command(symbol: str = "AAA", quantity: float = -1.0, command_id: str = "sl-1",
                  strategy: str = SID) -> ClosePosition:
    return ClosePosition(strategy=strategy, symbol=symbol, quantity=quantity, command_id=command_id,
                         reason=f"stop-loss: {symbol} long from 50 to 42: -16.00% <= -15.00%", price=42.0,
                         entry_price=50.0, loss=0.16, ts_event=2 * NS_PER_DAY)


def entered(**cfg: object) -> tuple[ExecutionEngine, FixedWeights, dict[str, float]]:
    """Return an engine whose strategy holds WEIGHTS after two batches, the strategy and its positions."""
    strategy = FixedWeights(WEIGHTS)
    engine = engine_with({SID: strategy}, config(**cfg))  # type: ignore[arg-type]
    engine.process(bar(0, ENTRY))
    engine.process(bar(1, ENTRY))
    held = dict(engine.hosts[SID].portfolio.positions)
    assert set(held) == set(WEIGHTS)
    return engine, strategy, held


def decision(result: StrategyResult, symbol: str) -> OrderEvent:
    found = [d for d in result.decisions if d.symbol == symbol and not isinstance(d, OrderCanceled)]
    assert len(found) == 1, result.decisions
    return found[0]


def test_close_position_when_next_batch_then_whole_position_sold_with_stop_loss_code_despite_weight() -> None:
    engine, _, held = entered()

    applied = engine.on_close_position(close_command(quantity=-held["AAA"]))
    result = engine.process(bar(2, FALLEN)).results[SID]

    assert applied
    close = decision(result, "AAA")
    assert isinstance(close, OrderAccepted)
    assert (close.side, close.reason_code) == ("SELL", CODE_STOP_LOSS)
    assert close.quantity == pytest.approx(held["AAA"], rel=1e-12)
    assert close.reason.startswith("stop-loss: AAA long") and "sl-1" in close.reason
    assert "AAA" not in engine.hosts[SID].portfolio.positions
    assert "AAA" not in result.snapshot.symbols
    book = engine.hosts[SID].portfolio
    assert book.positions["BBB"] * FALLEN["BBB"] == pytest.approx(0.4 * book.equity(), rel=1e-3)


def test_close_position_when_position_flat_then_strategy_reenters_on_the_following_batch() -> None:
    engine, _, held = entered()
    engine.on_close_position(close_command(quantity=-held["AAA"]))
    engine.process(bar(2, FALLEN))

    result = engine.process(bar(3, FALLEN)).results[SID]

    again = decision(result, "AAA")
    assert isinstance(again, OrderAccepted)
    assert (again.side, again.reason_code) == ("BUY", "")
    equity = engine.hosts[SID].portfolio.equity()
    assert engine.hosts[SID].portfolio.positions["AAA"] * FALLEN["AAA"] == pytest.approx(0.4 * equity, rel=1e-3)
    assert engine.hosts[SID].stop_losses == {}


def test_close_position_when_order_size_capped_then_close_still_takes_whole_position() -> None:
    engine, _, held = entered()
    set_state(engine, f"{SID}.risk", max_order_fraction=0.01)

    engine.on_close_position(close_command(quantity=-held["AAA"]))
    close = decision(engine.process(bar(2, FALLEN)).results[SID], "AAA")

    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    assert close.quantity == pytest.approx(held["AAA"], rel=1e-12)
    assert close.quantity * close.price > 0.01 * 1_000_000.0


def test_close_position_when_reducing_then_close_allowed() -> None:
    engine, _, held = entered()
    set_state(engine, f"{SID}.risk", status="REDUCING", reason="volatility")

    engine.on_close_position(close_command(quantity=-held["AAA"]))
    result = engine.process(bar(2, FALLEN)).results[SID]

    close = decision(result, "AAA")
    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    assert close.quantity == pytest.approx(held["AAA"], rel=1e-12)
    assert "AAA" not in engine.hosts[SID].portfolio.positions


def test_close_position_when_halted_then_denied_kept_and_sent_after_resume() -> None:
    engine, _, held = entered()
    set_state(engine, f"{SID}.operator", status="HALTED", reason="drawdown")
    engine.on_close_position(close_command(quantity=-held["AAA"]))

    halted = [engine.process(bar(day, FALLEN)).results[SID] for day in (2, 3)]
    engine.controls.delete(f"{SID}.operator")
    resumed = engine.process(bar(4, FALLEN)).results[SID]

    denied = decision(halted[0], "AAA")
    assert isinstance(denied, OrderDenied) and denied.count == 1
    assert denied.reason_code == CODE_HALTED
    assert denied.reason.startswith("HALTED: drawdown; stop-loss: AAA")
    assert denied.side == "SELL" and denied.quantity == pytest.approx(held["AAA"], rel=1e-12)
    assert not [d for d in halted[1].decisions if d.symbol == "AAA"]  # the same denial again: counted, not sent
    for result in halted:
        assert result.snapshot.quantities[result.snapshot.symbols.index("AAA")] == held["AAA"]
    repeats, close = [d for d in resumed.decisions if d.symbol == "AAA"]
    assert isinstance(repeats, OrderDenied) and repeats.count == 1 and repeats.ts_event == halted[1].ts_event
    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    assert "AAA" not in engine.hosts[SID].portfolio.positions


def test_close_position_when_same_command_id_redelivered_then_applied_once() -> None:
    engine, _, held = entered()
    command = close_command(quantity=-held["AAA"])
    first, again = engine.on_close_position(command), engine.on_close_position(command)
    engine.process(bar(2, FALLEN))
    engine.process(bar(3, FALLEN))  # the strategy re-enters AAA
    reentered = engine.hosts[SID].portfolio.positions["AAA"]

    late = engine.on_close_position(command)
    result = engine.process(bar(4, FALLEN)).results[SID]

    assert (first, again, late) == (True, False, False)
    assert all(getattr(d, "reason_code", "") != CODE_STOP_LOSS for d in result.decisions)
    assert engine.hosts[SID].portfolio.positions["AAA"] == pytest.approx(reentered, rel=1e-3)


def test_close_position_when_symbol_not_held_or_strategy_unknown_then_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, _, held = entered()

    with caplog.at_level(logging.INFO, logger="qmp_execution.engine"):
        not_held = engine.on_close_position(close_command(symbol="ZZZ", command_id="sl-z"))
        unknown = engine.on_close_position(close_command(strategy="nobody", command_id="sl-n"))
    result = engine.process(bar(2, FALLEN)).results[SID]

    assert (not_held, unknown) == (False, False)
    messages = [r.getMessage() for r in caplog.records]
    assert "stop-loss ignored: symbol not held" in messages
    assert "stop-loss ignored: strategy not hosted here" in messages
    assert engine.hosts[SID].stop_losses == {}
    assert all(getattr(d, "reason_code", "") != CODE_STOP_LOSS for d in result.decisions)
    assert engine.hosts[SID].portfolio.positions["AAA"] > held["AAA"]  # the strategy bought the dip


def test_close_position_when_position_changed_side_then_ignored() -> None:
    engine, _, held = entered()

    applied = engine.on_close_position(close_command(quantity=+held["AAA"]))

    assert not applied
    assert engine.hosts[SID].stop_losses == {}


def test_close_position_when_fills_take_several_bars_then_close_keeps_working_until_flat() -> None:
    engine, _, held = entered(paper={"max_bar_participation": 0.5})
    per_bar = 3_000.0  # half of a 6,000-share bar: AAA's ~8,000 shares take three bars
    engine.on_close_position(close_command(quantity=-held["AAA"]))

    results = [engine.process(bar(day, FALLEN, volume=2 * per_bar)).results[SID] for day in (2, 3, 4, 5)]

    close = decision(results[0], "AAA")
    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    for result in results[1:3]:
        assert [d for d in result.decisions if d.symbol == "AAA"] == []
        assert [f.order_id for f in result.fills if f.symbol == "AAA"] == [close.order_id]
    sold = sum(f.quantity for r in results[:3] for f in r.fills if f.order_id == close.order_id)
    assert sold == pytest.approx(held["AAA"], rel=1e-12)
    reentry = decision(results[3], "AAA")
    assert isinstance(reentry, OrderAccepted) and reentry.side == "BUY" and reentry.reason_code == ""


def test_close_position_when_strategy_raises_then_close_still_sent() -> None:
    engine, strategy, held = entered()
    strategy.weights = {"AAA": float("nan")}

    engine.on_close_position(close_command(quantity=-held["AAA"]))
    result = engine.process(bar(2, FALLEN)).results[SID]

    close = decision(result, "AAA")
    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    assert result.error is not None
    assert isinstance(decision(result, "BBB"), OrderDenied)
    assert "AAA" not in engine.hosts[SID].portfolio.positions


def test_snapshot_when_stop_loss_in_force_then_restart_restores_it_and_closes_once() -> None:
    engine, _, held = entered()
    set_state(engine, f"{SID}.operator", status="HALTED", reason="test")  # the close is denied, the stop stays
    engine.on_close_position(close_command(quantity=-held["AAA"]))
    snapshot = engine.process(bar(2, FALLEN)).results[SID].snapshot
    assert [(s.symbol, s.command_id) for s in snapshot.stop_losses] == [("AAA", "sl-1")]

    restarted = engine_with({SID: FixedWeights(WEIGHTS)}, config())  # type: ignore[arg-type]  # resumed
    restarted.restore(codec(PortfolioSnapshot).decode(encode(snapshot)))  # through the wire format
    assert restarted.warm([bar(0, ENTRY), bar(1, ENTRY), bar(2, FALLEN)]) == 3
    redelivered = restarted.on_close_position(close_command(quantity=-held["AAA"]))
    result = restarted.process(bar(3, FALLEN)).results[SID]

    assert not redelivered  # the snapshot's command id: applied once
    close = decision(result, "AAA")
    assert isinstance(close, OrderAccepted) and close.reason_code == CODE_STOP_LOSS
    assert close.quantity == pytest.approx(held["AAA"], rel=1e-12)
    assert [s.order_id for s in result.snapshot.stop_losses] == [close.order_id]  # released on the next batch
    assert restarted.process(bar(4, FALLEN)).results[SID].snapshot.stop_losses == []
