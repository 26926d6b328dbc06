"""A strategy's book (engine/book.py): cash, positions, average prices, realized and unrealized PnL."""

import pytest
from execution_testkit import (
    CAPITAL,
    NO_COST,
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    set_state,
)


def test_apply_when_position_reduced_then_realized_and_unrealized_pnl_from_average_price() -> None:
    strategy = FixedWeights({"AAA": 0.5})
    engine = engine_with({SID: strategy}, config(paper={"slippage": NO_COST, "fee_bps": 0.0}))
    engine.process(bar(0, {"AAA": 50.0}))
    engine.process(bar(1, {"AAA": 50.0}))  # 10,000 shares at 50
    engine.process(bar(2, {"AAA": 40.0}))  # top-up at 40 keeps w=0.5: average moves down
    book = engine.hosts[SID].portfolio
    shares, average = book.positions["AAA"], book.avg_prices["AAA"]
    strategy.weights = {"AAA": 0.0}

    result = engine.process(bar(3, {"AAA": 45.0})).results[SID]

    assert average < 50.0
    assert result.snapshot.realized_pnl == pytest.approx(shares * (45.0 - average), rel=1e-9)
    assert result.snapshot.unrealized_pnl == 0.0
    assert result.snapshot.equity == pytest.approx(CAPITAL + result.snapshot.realized_pnl, rel=1e-12)


def test_process_when_filled_then_cash_pays_notional_and_fee_and_equity_marks_at_close() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(paper={"fee_bps": 3.0}))
    engine.process(bar(0, {"AAA": 50.0}))
    fill = engine.process(bar(1, {"AAA": 50.0})).results[SID].fills[0]
    set_state(engine, f"{SID}.operator", status="HALTED", reason="freeze the book")

    snapshot = engine.process(bar(2, {"AAA": 55.0})).results[SID].snapshot

    cash = CAPITAL - fill.quantity * fill.price - fill.fee
    assert snapshot.quantities == [pytest.approx(fill.quantity, rel=1e-12)]
    assert snapshot.cash == pytest.approx(cash, rel=1e-12)
    assert snapshot.equity == pytest.approx(cash + fill.quantity * 55.0, rel=1e-12)
    assert snapshot.prices == [55.0]
