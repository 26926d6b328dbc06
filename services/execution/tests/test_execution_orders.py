"""Unit tests of order handling: capital per strategy, participation and ES-budget sizing, pre-trade checks,
partial fills over several bars, latency, cancels under the trading state, PnL, recovery, external acks."""

import math

import msgspec
import numpy as np
import pandas as pd
import pytest
from test_execution_engine import CAPITAL, PRICES, SID, FixedWeights, bar, config, orders, set_state

from qmp_core.clock import NS_PER_DAY, NS_PER_SECOND, TestClock
from qmp_core.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    PortfolioSnapshot,
    RiskSnapshot,
    TradingState,
    codec,
    encode,
)
from qmp_execution.engine import (
    CODE_BROKER_REJECTED,
    CODE_HALTED,
    CODE_INSUFFICIENT_CASH,
    CODE_MAX_GROSS_EXPOSURE,
    CODE_MAX_NOTIONAL,
    CODE_PRICE_BAND,
    CODE_RATE_LIMIT,
    CODE_REDUCING,
    CODE_REPLACED,
    CODE_RESTRICTED,
    CODE_STRATEGY_ERROR,
    EngineConfig,
    ExecutionEngine,
    StrategyResult,
)
from qmp_execution.engine.broker import BrokerFill, OrderAck

NO_COST = {"model": "fixed", "fixed_bps": 0.0}


def engine_with(strategies: dict[str, object], cfg: EngineConfig, clock: TestClock | None = None) -> ExecutionEngine:
    return ExecutionEngine(strategies, cfg, clock or TestClock(0))  # type: ignore[arg-type]


def risk(strategy: str, es: dict[str, float], ts_event: int = 1) -> RiskSnapshot:
    return RiskSnapshot(strategy=strategy, ts_event=ts_event, equity=CAPITAL, var={}, es=es, drawdown_24h=0.0,
                        drawdown_max=0.0, volatility_ratio=1.0, breakers=[])


def events_of(result: StrategyResult, kind: type) -> list:
    return [d for d in result.decisions if isinstance(d, kind)]


def test_process_when_strategies_have_own_capital_then_each_sized_on_its_own_book() -> None:
    weights = {"AAA": 0.5}
    engine = engine_with({"small": FixedWeights(weights), "large": FixedWeights(weights)},
                         config(capital={"small": 100_000.0, "large": 3_000_000.0}))
    engine.process(bar(0, PRICES))

    results = engine.process(bar(1, PRICES)).results

    assert orders(results["small"])["AAA"] == pytest.approx(0.5 * 100_000.0 / PRICES["AAA"], rel=1e-12)
    assert orders(results["large"])["AAA"] == pytest.approx(0.5 * 3_000_000.0 / PRICES["AAA"], rel=1e-12)
    assert results["small"].snapshot.cash < 100_000.0 < results["large"].snapshot.cash


def test_engine_when_capital_names_unhosted_strategy_then_fails_fast() -> None:
    with pytest.raises(ValueError, match="not hosted"):
        engine_with({SID: FixedWeights({})}, config(capital={"ghost": 1.0}))


def test_process_when_order_exceeds_participation_limit_then_capped_at_fraction_of_adv() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 1.0})}, config(participation_limit=0.05))
    engine.process(bar(0, {"AAA": 50.0}, volume=100_000.0))

    result = engine.process(bar(1, {"AAA": 50.0}, volume=300_000.0)).results[SID]

    adv = (100_000.0 + 300_000.0) / 2  # daily bars: ADV is the mean bar volume
    accepted = events_of(result, OrderAccepted)[0]
    assert accepted.quantity == pytest.approx(0.05 * adv, rel=1e-12)
    assert "participation_limit" in accepted.reason


def test_process_when_bar_volume_limited_then_partial_fills_over_bars_with_sequential_ids() -> None:
    strategy = FixedWeights({"AAA": 0.005})  # 5,000 notional: 100 shares at 50
    engine = engine_with({SID: strategy}, config(min_order_notional=100.0,
                                                 paper={"max_bar_participation": 0.1, "slippage": NO_COST}))
    engine.process(bar(0, {"AAA": 50.0}, volume=400.0))

    days = [engine.process(bar(d, {"AAA": 50.0}, volume=400.0)).results[SID] for d in (1, 2, 3, 4)]

    order_id = events_of(days[0], OrderAccepted)[0].order_id
    fills = [f for day in days for f in day.fills]
    assert [f.fill_id for f in fills] == [f"{order_id}-f1", f"{order_id}-f2", f"{order_id}-f3"]
    assert [f.quantity for f in fills] == pytest.approx([40.0, 40.0, 20.0])
    assert [f.remaining for f in fills] == pytest.approx([60.0, 20.0, 0.0])
    assert [len(day.snapshot.working) for day in days] == [1, 1, 0, 0]
    assert days[0].snapshot.working[0].filled == pytest.approx(40.0)
    assert all(not events_of(day, OrderAccepted) for day in days[1:])  # no new order while one works
    assert days[-1].snapshot.cash == pytest.approx(CAPITAL - 100 * 50.0 * (1 + 0.5e-4), rel=1e-12)


def test_process_when_latency_one_bar_then_filled_at_next_close_with_drift_in_slippage() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(paper={"latency_bars": 1, "slippage": NO_COST}))
    engine.process(bar(0, {"AAA": 50.0}))

    decided = engine.process(bar(1, {"AAA": 50.0})).results[SID]
    filled = engine.process(bar(2, {"AAA": 49.0})).results[SID]  # the target still wants at least as much

    assert events_of(decided, OrderAccepted) and decided.fills == []
    assert events_of(filled, OrderAccepted) == []
    fill = filled.fills[0]
    assert fill.price == 49.0 and fill.arrival_price == 50.0
    assert fill.slippage_bps == pytest.approx((49.0 / 50.0 - 1.0) * 1e4)
    assert fill.ts_event == filled.ts_event


def test_process_when_halted_then_working_orders_cancelled_and_new_ones_denied() -> None:
    strategy = FixedWeights({"AAA": 0.005})
    engine = engine_with({SID: strategy}, config(paper={"max_bar_participation": 0.1}))
    engine.process(bar(0, {"AAA": 50.0}, volume=400.0))
    engine.process(bar(1, {"AAA": 50.0}, volume=400.0))
    set_state(engine, f"{SID}.operator", status="HALTED", reason="stop")

    halted = engine.process(bar(2, {"AAA": 50.0}, volume=400.0)).results[SID]

    canceled = events_of(halted, OrderCanceled)
    assert [(c.reason_code, c.quantity, c.filled_quantity) for c in canceled] == [(CODE_HALTED, 60.0, 40.0)]
    assert [d.reason_code for d in events_of(halted, OrderDenied)] == [CODE_HALTED]
    assert halted.fills == [] and halted.snapshot.working == []


def test_process_when_reducing_then_working_order_that_grows_position_cancelled() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, config(paper={"max_bar_participation": 0.1}))
    engine.process(bar(0, {"AAA": 50.0}, volume=400.0))
    engine.process(bar(1, {"AAA": 50.0}, volume=400.0))
    set_state(engine, f"{SID}.risk", status="REDUCING", reason="vol")

    result = engine.process(bar(2, {"AAA": 50.0}, volume=400.0)).results[SID]

    assert [c.reason_code for c in events_of(result, OrderCanceled)] == [CODE_REDUCING]
    assert result.fills == []


def test_process_when_target_moves_then_working_order_replaced() -> None:
    strategy = FixedWeights({"AAA": 0.005})
    engine = engine_with({SID: strategy}, config(paper={"max_bar_participation": 0.1}))
    engine.process(bar(0, {"AAA": 50.0}, volume=400.0))
    first = events_of(engine.process(bar(1, {"AAA": 50.0}, volume=400.0)).results[SID], OrderAccepted)[0]
    strategy.weights = {"AAA": 0.0}

    result = engine.process(bar(2, {"AAA": 50.0}, volume=400.0)).results[SID]

    canceled = events_of(result, OrderCanceled)
    assert [(c.order_id, c.reason_code) for c in canceled] == [(first.order_id, CODE_REPLACED)]
    new = events_of(result, OrderAccepted)[0]
    assert new.side == "SELL" and new.order_id != first.order_id


def test_process_when_es_above_budget_then_exposure_scaled_to_budget() -> None:
    strategy = FixedWeights({"AAA": 0.25, "BBB": 0.25})
    engine = engine_with({SID: strategy}, config(es_budget=0.05, paper={"slippage": NO_COST, "fee_bps": 0.0}))
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))  # gross exposure 0.5
    # 4% ES at gross 0.5 is 8% per unit of gross; the historical key is ignored when a fat-tail key exists.
    engine.on_risk(risk(SID, {"historical_99": 0.01, "evt_99": 0.04}))
    strategy.weights = {"AAA": 0.5, "BBB": 0.5}  # gross 1.0: projected ES 8% > budget 5%

    result = engine.process(bar(2, PRICES)).results[SID]

    scale = 0.05 / 0.08
    assert result.es_scale == pytest.approx(scale)
    book = dict(zip(result.snapshot.symbols, result.snapshot.quantities, strict=True))
    for symbol, price in PRICES.items():
        assert book[symbol] * price == pytest.approx(0.5 * CAPITAL * scale, rel=1e-9)
    assert "evt_99" in events_of(result, OrderAccepted)[0].reason
    assert {order.es_key for order in events_of(result, OrderAccepted)} == {"evt_99"}


def test_process_when_es_within_budget_then_not_scaled() -> None:
    strategy = FixedWeights({"AAA": 0.25})
    engine = engine_with({SID: strategy}, config(es_budget=0.05))
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))
    engine.on_risk(risk(SID, {"historical_99": 0.01}))

    result = engine.process(bar(2, PRICES)).results[SID]

    assert result.es_scale == 1.0
    assert [order.es_key for order in events_of(result, OrderAccepted)] == [""]


def test_process_when_order_notional_above_max_then_denied_with_code() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.01})}, config(max_order_notional=50_000.0))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    by_symbol = {d.symbol: d for d in result.decisions}
    assert isinstance(by_symbol["AAA"], OrderDenied) and by_symbol["AAA"].reason_code == CODE_MAX_NOTIONAL
    assert isinstance(by_symbol["BBB"], OrderAccepted)


def test_process_when_gross_exposure_limit_reached_then_later_orders_denied_and_held_positions_count() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, config(max_gross_exposure=500_000.0))
    engine.process(bar(0, PRICES))

    first = {d.symbol: d for d in engine.process(bar(1, PRICES)).results[SID].decisions}
    engine.process(bar(2, PRICES))  # AAA's order fills: 300,000 held
    second = {d.symbol: d for d in engine.process(bar(3, PRICES)).results[SID].decisions}

    assert isinstance(first["AAA"], OrderAccepted)  # 300,000 of 500,000
    assert isinstance(first["BBB"], OrderDenied) and first["BBB"].reason_code == CODE_MAX_GROSS_EXPOSURE
    assert isinstance(second["BBB"], OrderDenied) and second["BBB"].reason_code == CODE_MAX_GROSS_EXPOSURE


def test_process_when_symbol_restricted_then_buy_denied_and_its_position_may_still_be_closed() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, config(restricted_symbols=["BBB"]))
    engine.process(bar(0, PRICES))

    result = {d.symbol: d for d in engine.process(bar(1, PRICES)).results[SID].decisions}

    assert isinstance(result["AAA"], OrderAccepted)
    assert isinstance(result["BBB"], OrderDenied) and result["BBB"].reason_code == CODE_RESTRICTED
    assert "only orders that reduce" in result["BBB"].reason


def test_process_when_price_jumps_outside_band_then_denied() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, config(price_band=0.2))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, {"AAA": 50.0 * 1.3, "BBB": 200.0 * 1.1})).results[SID]

    by_symbol = {d.symbol: d for d in result.decisions}
    assert isinstance(by_symbol["AAA"], OrderDenied) and by_symbol["AAA"].reason_code == CODE_PRICE_BAND
    assert isinstance(by_symbol["BBB"], OrderAccepted)


def test_process_when_order_rate_exceeded_then_later_orders_denied_until_interval_passes() -> None:
    clock = TestClock(0)
    strategy = FixedWeights({"AAA": 0.2, "BBB": 0.2})
    engine = engine_with({SID: strategy}, config(max_order_rate=1, order_rate_interval_s=1.0), clock)
    engine.process(bar(0, PRICES))

    first = engine.process(bar(1, PRICES)).results[SID]
    clock.advance(2 * NS_PER_SECOND)
    strategy.weights = {"AAA": 0.4, "BBB": 0.4}
    second = engine.process(bar(2, PRICES)).results[SID]

    assert [type(d).__name__ for d in first.decisions] == ["OrderAccepted", "OrderDenied"]
    assert first.decisions[1].reason_code == CODE_RATE_LIMIT  # type: ignore[union-attr]
    assert isinstance(second.decisions[0], OrderAccepted)


def test_process_when_buys_exceed_cash_then_last_buy_cut_and_sells_free_cash_first() -> None:
    strategy = FixedWeights({"AAA": 0.8, "BBB": 0.8}, leverage_limit=2.0)
    engine = engine_with({SID: strategy}, config(paper={"slippage": NO_COST, "fee_bps": 0.0}))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    accepted = {d.symbol: d for d in events_of(result, OrderAccepted)}
    assert accepted["AAA"].quantity * 50.0 == pytest.approx(0.8 * CAPITAL)
    assert accepted["BBB"].quantity * 200.0 == pytest.approx(0.2 * CAPITAL)
    assert "available cash" in accepted["BBB"].reason
    assert result.snapshot.cash == pytest.approx(0.0, abs=1e-6)


def test_process_when_no_cash_left_then_buy_denied() -> None:
    strategy = FixedWeights({"AAA": 1.0}, leverage_limit=2.0)
    engine = engine_with({SID: strategy}, config(paper={"slippage": NO_COST, "fee_bps": 0.0}))
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))
    strategy.weights = {"AAA": 1.0, "BBB": 0.5}

    result = engine.process(bar(2, PRICES)).results[SID]

    assert [d.reason_code for d in events_of(result, OrderDenied)] == [CODE_INSUFFICIENT_CASH]


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


def test_restore_when_orders_working_then_partial_fills_continue_with_same_ids() -> None:
    def run(cut: int | None) -> list[str]:
        cfg = config(min_order_notional=100.0, paper={"max_bar_participation": 0.1})
        engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, cfg)
        ids: list[str] = []
        for day in range(6):
            batch = bar(day, {"AAA": 50.0 + day}, volume=400.0)
            result = engine.process(batch).results[SID]
            ids += [f.fill_id for f in result.fills]
            if day == cut:
                snapshot = codec(PortfolioSnapshot).decode(encode(result.snapshot))
                engine = engine_with({SID: FixedWeights({"AAA": 0.005})}, cfg)
                engine.restore(snapshot)
                engine.warm([bar(d, {"AAA": 50.0 + d}, volume=400.0) for d in range(day + 1)])
        return ids

    straight = run(None)

    assert len(straight) >= 3 and len({i.rsplit("-", 1)[0] for i in straight}) < len(straight)  # partial fills
    assert run(2) == straight


def test_apply_acks_when_external_broker_answers_then_fills_booked_and_rejections_cancelled() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    result = engine.process(bar(1, PRICES)).results[SID]
    aaa, bbb = sorted(events_of(result, OrderAccepted), key=lambda d: d.symbol)
    assert result.fills == [] and len(result.snapshot.working) == 2

    booked = engine.apply_acks(SID, [
        OrderAck(order_id=aaa.order_id, status="filled",
                 fills=[BrokerFill(fill_id="x", quantity=aaa.quantity, price=50.1, fee=1.0)]),
        OrderAck(order_id=bbb.order_id, status="rejected", reason="no liquidity"),
    ])

    assert [f.fill_id for f in booked.fills] == [f"{aaa.order_id}-f1"]
    assert booked.fills[0].slippage_bps == pytest.approx((50.1 / 50.0 - 1) * 1e4)
    assert [(c.order_id, c.reason_code) for c in events_of(booked, OrderCanceled)] == [
        (bbb.order_id, CODE_BROKER_REJECTED)]
    assert booked.snapshot.working == []
    assert booked.snapshot.cash == pytest.approx(CAPITAL - aaa.quantity * 50.1 - 1.0)
    assert engine.process(bar(1, PRICES)).results[SID].fills == booked.fills  # a redelivery replays it


def test_apply_acks_when_broker_answers_again_with_fills_already_booked_then_only_the_new_part_is_booked() -> None:
    # A restart sends the order again; the broker finds it and answers with everything filled so far.
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    part = 0.25 * order_.quantity
    first = engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="partially_filled",
                                             fills=[BrokerFill(fill_id="v", quantity=part, price=50.0, fee=2.0)])])
    again = engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="filled", fills=[
        BrokerFill(fill_id="v", quantity=order_.quantity, price=50.2, fee=8.0)])])

    new = again.fills[len(first.fills):]
    assert [f.quantity for f in new] == [pytest.approx(order_.quantity - part)]
    assert new[0].price == pytest.approx((50.2 * order_.quantity - 50.0 * part) / (order_.quantity - part))
    assert new[0].fee == pytest.approx(6.0) and first.fills[0].fee == pytest.approx(2.0)
    assert math.fsum(f.quantity for f in again.fills) == pytest.approx(order_.quantity)


def test_reconcile_when_venue_fills_after_its_answer_then_booked_once_at_exact_prices_with_next_batch() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])  # working at the venue
    assert engine.open_order_ids(SID) == [order_.order_id]
    part = 0.4 * order_.quantity

    # The venue reports cumulative fills: 40% at 50.0, then everything at an average of 50.3.
    first = engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="partially_filled",
                                            fills=[BrokerFill(fill_id="v", quantity=part, price=50.0)])], 10)
    again = engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="partially_filled",
                                            fills=[BrokerFill(fill_id="v", quantity=part, price=50.0)])], 10)
    rest = engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="filled", fills=[
        BrokerFill(fill_id="v", quantity=order_.quantity, price=50.3)])], 11)
    result = engine.process(bar(2, PRICES)).results[SID]

    assert [f.quantity for f in first] == [pytest.approx(part)] and again == []
    assert rest[0].quantity == pytest.approx(order_.quantity - part)
    assert rest[0].price == pytest.approx((50.3 * order_.quantity - 50.0 * part) / (order_.quantity - part))
    assert [f.fill_id for f in result.fills] == [f"{order_.order_id}-f1", f"{order_.order_id}-f2"]
    assert order_.order_id not in [w.order_id for w in result.snapshot.working] + engine.open_order_ids(SID)
    spent = math.fsum(f.quantity * f.price + f.fee for f in result.fills)
    assert result.snapshot.cash == pytest.approx(CAPITAL - spent)
    assert spent - math.fsum(f.fee for f in result.fills) == pytest.approx(50.3 * order_.quantity)


def test_reconcile_when_a_withdrawn_order_filled_at_the_venue_then_its_fill_is_still_booked() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])
    set_state(engine, SID, status="HALTED")
    halted = engine.process(bar(2, PRICES)).results[SID]  # the halt withdraws the working order
    assert [c.order_id for c in events_of(halted, OrderCanceled)] == [order_.order_id]
    assert engine.open_order_ids(SID) == [order_.order_id]  # the venue may still fill it

    booked = engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="filled", fills=[
        BrokerFill(fill_id="v", quantity=order_.quantity, price=50.1)])], 12)
    result = engine.process(bar(3, PRICES)).results[SID]

    assert [f.quantity for f in booked] == [pytest.approx(order_.quantity)] and engine.open_order_ids(SID) == []
    assert dict(zip(result.snapshot.symbols, result.snapshot.quantities, strict=True))["AAA"] == pytest.approx(
        order_.quantity)


def test_reconcile_when_venue_ended_a_working_order_unfilled_then_it_is_withdrawn_with_the_next_batch() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])

    engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="canceled", reason="expired")], 12)
    result = engine.process(bar(2, PRICES)).results[SID]

    canceled = events_of(result, OrderCanceled)
    assert [(c.order_id, c.reason_code) for c in canceled] == [(order_.order_id, CODE_BROKER_REJECTED)]
    assert engine.open_order_ids(SID) == [e.order_id for e in events_of(result, OrderAccepted)]  # a new order


class UnknownSymbols:
    lookback = 1
    leverage_limit = 1.0
    config: dict = {}  # noqa: RUF012

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return prices.assign(ZZZ=0.1) * 0.0 + 0.1


class Refitting(FixedWeights):
    refit_every = 2

    def __init__(self) -> None:
        super().__init__({"AAA": 0.1})
        self.fits: list[int] = []

    def fit(self, train: pd.DataFrame) -> None:
        self.fits.append(len(train))


def test_process_when_weights_name_unknown_symbols_then_stopped_with_their_names() -> None:
    engine = engine_with({SID: UnknownSymbols()}, config())
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert result.error is not None and "unknown symbols ['ZZZ']" in result.error
    assert {d.reason_code for d in result.decisions} == {CODE_STRATEGY_ERROR}


def test_process_when_strategy_declares_refit_every_then_fit_repeats() -> None:
    strategy = Refitting()
    engine = engine_with({SID: strategy}, config())
    for day in range(7):
        engine.process(bar(day, PRICES))

    assert len(strategy.fits) == 3  # rows 2, 4, 6 of trading (first full window, then every 2 batches)
    assert all(rows == 2 for rows in strategy.fits)


def test_process_when_intraday_bars_then_sigma_and_adv_scaled_to_a_day() -> None:
    minute = 60 * NS_PER_SECOND
    engine = engine_with({SID: FixedWeights({"AAA": 0.001})}, config())
    rng = np.random.default_rng(0)
    closes = 50.0 * np.exp(np.cumsum(rng.normal(0, 0.001, 30)))
    for i, close in enumerate(closes):
        batch = msgspec.structs.replace(bar(0, {"AAA": float(close)}, volume=1_000.0), ts_event=NS_PER_DAY + i * minute)
        result = engine.process(batch).results[SID]

    fill = result.fills[0] if result.fills else engine.hosts[SID]._last.fills[0]  # type: ignore[union-attr]
    assert fill.adv == pytest.approx(1_000.0 * 24 * 60)
    per_bar = float(np.std(np.diff(np.log(closes[-21:])), ddof=1))
    assert fill.daily_vol == pytest.approx(per_bar * math.sqrt(24 * 60), rel=1e-9)


def test_state_when_control_entry_is_reducing_then_denied_codes_are_events() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config())
    engine.controls.put(f"{SID}.risk", encode(TradingState(strategy=SID, status="REDUCING")))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    denied = events_of(result, OrderDenied)[0]
    assert denied.reason_code == CODE_REDUCING
    assert codec(OrderDenied).decode(encode(denied)) == denied
