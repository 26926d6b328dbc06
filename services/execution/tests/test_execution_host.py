"""One hosted strategy (engine/host.py): orders sized from weights, equity, allocation and size; capital
per strategy; caps; the trading state's gate and cancels of working orders; a strategy that raises;
every broker answer booked once (submit and reconciliation); model refits."""

import math

import msgspec
import pandas as pd
import pytest
from execution_testkit import (
    CAPITAL,
    PRICES,
    SID,
    Exploding,
    FixedWeights,
    bar,
    config,
    engine_with,
    events_of,
    orders,
    set_state,
)

from qmp_core.messages import (
    BarBatch,
    ClosePosition,
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    TradingState,
    codec,
    encode,
)
from qmp_execution.engine import (
    CODE_BROKER_REJECTED,
    CODE_HALTED,
    CODE_KILLED,
    CODE_REDUCING,
    CODE_REPEATED_EXECUTION,
    CODE_REPLACED,
    CODE_STRATEGY_ERROR,
    ExecutionEngine,
)
from qmp_execution.engine.broker import BrokerFill, BrokerOrder, OrderAck


def open_ids(engine: ExecutionEngine) -> list[str]:
    return [o.order_id for o in engine.open_orders(SID)]

def test_process_when_strategies_have_own_capital_then_each_sized_on_its_own_book() -> None:
    weights = {"AAA": 0.5}
    engine = engine_with({"small": FixedWeights(weights), "large": FixedWeights(weights)},
                         config(capital={"small": 100_000.0, "large": 3_000_000.0}))
    engine.process(bar(0, PRICES))

    results = engine.process(bar(1, PRICES)).results

    assert orders(results["small"])["AAA"] == pytest.approx(0.5 * 100_000.0 / PRICES["AAA"], rel=1e-12)
    assert orders(results["large"])["AAA"] == pytest.approx(0.5 * 3_000_000.0 / PRICES["AAA"], rel=1e-12)
    assert results["small"].snapshot.cash < 100_000.0 < results["large"].snapshot.cash


def test_process_when_order_exceeds_participation_limit_then_capped_at_fraction_of_adv() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 1.0})}, config(participation_limit=0.05))
    engine.process(bar(0, {"AAA": 50.0}, volume=100_000.0))

    result = engine.process(bar(1, {"AAA": 50.0}, volume=300_000.0)).results[SID]

    adv = (100_000.0 + 300_000.0) / 2  # daily bars: ADV is the mean bar volume
    accepted = events_of(result, OrderAccepted)[0]
    assert accepted.quantity == pytest.approx(0.05 * adv, rel=1e-12)
    assert "participation_limit" in accepted.reason


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
    # A venue's fill is set against what the host's slippage model predicts for it at the last bar.
    host = engine.hosts[SID]
    fill = booked.fills[0]
    predicted = host.broker.model.cost(fill.quantity, fill.daily_vol, fill.adv, host._last_market.exec_days) * 1e4
    assert fill.model_slippage_bps == pytest.approx(predicted) and fill.model_slippage_bps > 0.0
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


def test_apply_acks_when_broker_reports_each_execution_then_each_booked_at_its_own_price_once() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    q = order_.quantity
    executions = [BrokerFill(fill_id="e1", quantity=0.5 * q, price=50.0, fee=1.0),
                  BrokerFill(fill_id="e2", quantity=0.3 * q, price=50.4, fee=0.6)]
    first = engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="partially_filled",
                                             fills=executions)])
    executions.append(BrokerFill(fill_id="e3", quantity=0.2 * q, price=49.9, fee=0.4))
    again = engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="filled", fills=executions)])

    assert [(f.price, f.fee) for f in first.fills] == [(50.0, 1.0), (50.4, 0.6)]
    assert [(f.price, f.fee, f.remaining) for f in again.fills[len(first.fills):]] == [(49.9, 0.4, 0.0)]
    assert again.snapshot.working == []
    assert again.snapshot.cash == pytest.approx(CAPITAL - q * (0.5 * 50.0 + 0.3 * 50.4 + 0.2 * 49.9) - 2.0)


def test_reconcile_when_venue_fills_after_its_answer_then_booked_once_at_exact_prices_with_next_batch() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])  # working at the venue
    assert open_ids(engine) == [order_.order_id]
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
    assert order_.order_id not in [w.order_id for w in result.snapshot.working] + open_ids(engine)
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
    assert open_ids(engine) == [order_.order_id]  # the venue may still fill it

    booked = engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="filled", fills=[
        BrokerFill(fill_id="v", quantity=order_.quantity, price=50.1)])], 12)
    result = engine.process(bar(3, PRICES)).results[SID]

    assert [f.quantity for f in booked] == [pytest.approx(order_.quantity)] and open_ids(engine) == []
    assert dict(zip(result.snapshot.symbols, result.snapshot.quantities, strict=True))["AAA"] == pytest.approx(
        order_.quantity)


def test_restore_when_a_withdrawn_order_may_still_fill_then_a_restart_still_asks_about_it_and_books_it_once(
) -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])
    set_state(engine, SID, status="HALTED")
    snapshot = engine.process(bar(2, PRICES)).results[SID].snapshot  # withdrawn by the halt
    restarted = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    restarted.restore(snapshot)

    asked = open_ids(restarted)
    filled = [OrderAck(order_id=order_.order_id, status="filled",
                       fills=[BrokerFill(fill_id="v", quantity=order_.quantity, price=50.1)])]
    booked = restarted.reconcile(SID, filled, 12)
    again = restarted.reconcile(SID, filled, 13)

    assert [w.order_id for w in snapshot.withdrawn] == [order_.order_id] and snapshot.working == []
    assert asked == [order_.order_id]
    assert [f.quantity for f in booked] == [pytest.approx(order_.quantity)] and again == []
    assert open_ids(restarted) == [] and restarted.hosts[SID].snapshot().withdrawn == []


def test_adopt_orders_when_the_venue_holds_unknown_ones_then_working_here_priced_by_the_first_close_and_booked(
) -> None:
    engine = engine_with({SID: FixedWeights({})}, config(broker="external"))
    found = [BrokerOrder(order_id=f"{SID}-lost-{s}", strategy=SID, symbol=s, side="BUY", quantity=10.0, price=0.0,
                         ts_event=1) for s in ("AAA", "BBB")]
    engine.process(bar(0, {"BBB": 200.0}))  # BBB is priced, AAA is not yet

    taken, refused = engine.adopt_orders(SID, found, 5)
    again = engine.adopt_orders(SID, [found[0]], 6)  # a second order on a symbol with one working: not taken
    priced_before = {w.symbol: w.price for w in engine.hosts[SID].portfolio.working.values()}
    engine.process(bar(1, PRICES))
    booked = engine.reconcile(SID, [OrderAck(order_id=found[0].order_id, status="filled",
                                             fills=[BrokerFill(fill_id="v", quantity=10.0, price=50.5)])], 7)

    assert (taken, refused, again) == ([o.order_id for o in found], [], ([], [found[0].order_id]))
    assert priced_before == {"AAA": 0.0, "BBB": 200.0}
    assert [(f.symbol, f.arrival_price, f.price) for f in booked] == [("AAA", 50.0, 50.5)]
    assert open_ids(engine) == [found[1].order_id]


def test_reconcile_when_venue_ended_a_working_order_unfilled_then_it_is_withdrawn_with_the_next_batch() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, config(broker="external"))
    engine.process(bar(0, PRICES))
    order_ = events_of(engine.process(bar(1, PRICES)).results[SID], OrderAccepted)[0]
    engine.apply_acks(SID, [OrderAck(order_id=order_.order_id, status="accepted")])

    engine.reconcile(SID, [OrderAck(order_id=order_.order_id, status="canceled", reason="expired")], 12)
    result = engine.process(bar(2, PRICES)).results[SID]

    canceled = events_of(result, OrderCanceled)
    assert [(c.order_id, c.reason_code) for c in canceled] == [(order_.order_id, CODE_BROKER_REJECTED)]
    assert open_ids(engine) == [e.order_id for e in events_of(result, OrderAccepted)]  # a new order


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


def test_state_when_control_entry_is_reducing_then_denied_codes_are_events() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config())
    engine.controls.put(f"{SID}.risk", encode(TradingState(strategy=SID, status="REDUCING")))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    denied = events_of(result, OrderDenied)[0]
    assert denied.reason_code == CODE_REDUCING
    assert codec(OrderDenied).decode(encode(denied)) == denied


def test_process_when_window_full_then_orders_sized_by_weight_equity_allocation_and_multiplier() -> None:
    weights = {"AAA": 0.5, "BBB": -0.25}
    engine = engine_with({SID: FixedWeights(weights)})
    set_state(engine, f"{SID}.deployer", allocation=0.4)
    set_state(engine, f"{SID}.risk", size_multiplier=0.5)

    warmup = engine.process(bar(0, PRICES)).results[SID]
    result = engine.process(bar(1, PRICES)).results[SID]

    assert warmup.decisions == []
    expected = {s: w * CAPITAL * 0.4 * 0.5 / PRICES[s] for s, w in weights.items()}
    got = orders(result)
    assert got.keys() == expected.keys()
    for symbol, quantity in expected.items():
        assert got[symbol] == pytest.approx(quantity, rel=1e-12)


def test_process_when_size_multiplier_halves_then_every_order_halves() -> None:
    weights = {"AAA": 0.3, "BBB": 0.6}
    full, half = engine_with({SID: FixedWeights(weights)}), engine_with({SID: FixedWeights(weights)})
    set_state(half, f"{SID}.risk", size_multiplier=0.5)
    for engine in (full, half):
        engine.process(bar(0, PRICES))

    full_orders = orders(full.process(bar(1, PRICES)).results[SID])
    half_orders = orders(half.process(bar(1, PRICES)).results[SID])

    assert set(full_orders) == set(half_orders) == set(weights)
    for symbol in weights:
        assert half_orders[symbol] == pytest.approx(full_orders[symbol] / 2, rel=1e-12)


def test_process_when_order_exceeds_max_order_fraction_then_notional_capped() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.9, "BBB": 0.05})})
    set_state(engine, f"{SID}.risk", max_order_fraction=0.1)
    engine.process(bar(0, PRICES))

    got = orders(engine.process(bar(1, PRICES)).results[SID])

    assert got["AAA"] * PRICES["AAA"] == pytest.approx(0.1 * CAPITAL, rel=1e-12)
    assert got["BBB"] == pytest.approx(0.05 * CAPITAL / PRICES["BBB"], rel=1e-12)


def test_process_when_order_below_min_notional_then_skipped() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.00001})}, config(min_order_notional=1_000.0))
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert [d.symbol for d in result.decisions] == ["AAA"]


def test_process_when_halted_then_every_order_denied_and_book_unchanged() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.5})})
    set_state(engine, f"{SID}.operator", status="HALTED", reason="risk breach")
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert len(result.decisions) == 2
    assert result.fills == []
    for decision in result.decisions:
        assert isinstance(decision, OrderDenied)
        assert decision.reason_code == CODE_HALTED
        assert decision.reason == "HALTED: risk breach"
    assert result.snapshot.cash == CAPITAL
    assert result.snapshot.symbols == []
    assert result.snapshot.denied_total == 2
    assert result.snapshot.fills_total == 0


def test_process_when_reducing_then_only_reductions_pass_and_none_flips() -> None:
    strategy = FixedWeights({"AAA": 0.4, "BBB": 0.4})
    engine = engine_with({SID: strategy})
    engine.process(bar(0, PRICES))
    engine.process(bar(1, PRICES))
    held = dict(engine.hosts[SID].portfolio.positions)
    set_state(engine, f"{SID}.risk", status="REDUCING", reason="vol spike")
    strategy.weights = {"AAA": 0.6, "BBB": -0.4}  # AAA grows, BBB would flip short

    result = engine.process(bar(2, PRICES)).results[SID]

    by_symbol = {d.symbol: d for d in result.decisions}
    assert isinstance(by_symbol["AAA"], OrderDenied)
    assert by_symbol["AAA"].reason_code == CODE_REDUCING
    assert isinstance(by_symbol["BBB"], OrderAccepted)
    assert by_symbol["BBB"].side == "SELL"
    assert by_symbol["BBB"].quantity == pytest.approx(held["BBB"], rel=1e-12)
    assert "BBB" not in engine.hosts[SID].portfolio.positions
    assert engine.hosts[SID].portfolio.positions["AAA"] == held["AAA"]


def test_process_when_defensive_then_treated_as_reducing() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    set_state(engine, f"{SID}.risk", defensive=True)
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert [d.reason_code for d in result.decisions if isinstance(d, OrderDenied)] == [CODE_REDUCING]


def test_process_when_strategy_raises_then_stopped_with_denials_and_others_keep_trading() -> None:
    engine = engine_with({"broken": Exploding(), SID: FixedWeights({"AAA": 0.5})})
    engine.process(bar(0, PRICES))

    results = engine.process(bar(1, PRICES)).results
    later = engine.process(bar(2, PRICES)).results

    broken = results["broken"]
    assert {d.symbol for d in broken.decisions} == set(PRICES)
    assert all(isinstance(d, OrderDenied) and d.reason_code == CODE_STRATEGY_ERROR for d in broken.decisions)
    assert "ZeroDivisionError: model blew up" in broken.decisions[0].reason  # type: ignore[union-attr]
    assert engine.hosts["broken"].running is False
    assert later["broken"].decisions == []
    assert orders(results[SID]) and engine.hosts[SID].running


def test_process_when_weights_exceed_leverage_limit_then_implied_orders_denied() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.8, "BBB": 0.8})})
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert result.error is not None and "leverage limit" in result.error
    denied = {d.symbol: d.quantity for d in result.decisions}
    assert denied == {s: pytest.approx(0.8 * CAPITAL / p) for s, p in PRICES.items()}
    assert result.snapshot.cash == CAPITAL


def kill_state(flatten: bool) -> dict[str, object]:
    return {"status": "HALTED", "reason": "kill by test", "kill_id": "k1", "flatten": flatten}


def test_kill_when_orders_working_then_each_withdrawn_now_and_the_halt_denies_what_follows() -> None:
    cfg = config(min_order_notional=100.0, paper={"max_bar_participation": 0.1})  # orders work several bars
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, cfg)
    engine.process(bar(0, PRICES, volume=1_000.0))
    working = engine.process(bar(1, PRICES, volume=1_000.0)).results[SID].snapshot.working
    set_state(engine, f"{SID}.operator", **kill_state(flatten=False))

    [(sid, state)] = engine.kills_due(done=())
    killed = engine.kill(sid, state)
    after = engine.process(bar(2, PRICES, volume=1_000.0)).results[SID]

    assert len(working) == 2 and engine.kills_due(done={(SID, "k1")}) == []
    assert [(e.order_id, e.reason_code) for e in events_of(killed, OrderCanceled)] == [
        (w.order_id, CODE_KILLED) for w in working]
    assert killed.snapshot.working == [] and after.fills == []
    assert {e.reason_code for e in events_of(after, OrderDenied)} == {CODE_HALTED}
    assert not events_of(after, OrderAccepted)


def test_kill_when_flatten_then_closing_orders_work_under_the_halt_until_every_position_is_closed() -> None:
    cfg = config(min_order_notional=100.0, paper={"max_bar_participation": 0.1})
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, cfg)
    for day in range(6):  # positions built over several bars, with orders still working
        engine.process(bar(day, PRICES, volume=1_000.0))
    held = dict(engine.hosts[SID].portfolio.positions)
    set_state(engine, f"{SID}.operator", **kill_state(flatten=True))

    killed = engine.kill(*engine.kills_due(done=())[0])
    ignored = engine.on_close_position(ClosePosition(strategy=SID, symbol="AAA", quantity=-held["AAA"],
                                                     command_id="sl-1", ts_event=1, reason="stop-loss", price=50.0,
                                                     entry_price=60.0, loss=0.16))
    results = [engine.process(bar(day, PRICES, volume=10_000.0)).results[SID] for day in range(6, 12)]

    closing = events_of(killed, OrderAccepted)
    assert {(c.symbol, c.side, c.quantity) for c in closing} == {(s, "SELL", q) for s, q in held.items()}
    assert all(c.reason_code == CODE_KILLED for c in closing) and not ignored
    assert not any(events_of(r, OrderCanceled) for r in results)  # the halt does not withdraw them
    assert engine.hosts[SID].portfolio.positions == {} and results[-1].snapshot.working == []
    assert {f.order_id for r in results for f in r.fills} == {c.order_id for c in closing}


def test_throttle_when_a_symbol_and_side_fill_too_often_then_halted_until_halted_and_resumed() -> None:
    # An order filled 10% of the bar's volume a bar: one fill of AAA BUY per bar, one bar a minute.
    cfg = config(min_order_notional=100.0, max_repeated_fills=3, repeated_fills_window_s=180.0,
                 paper={"max_bar_participation": 0.1})
    engine = engine_with({SID: FixedWeights({"AAA": 0.3})}, cfg)
    minute = 60 * 1_000_000_000

    def minute_bar(i: int) -> BarBatch:
        return msgspec.structs.replace(bar(0, PRICES, volume=1_000.0), ts_event=(i + 1) * minute, seq=i)

    results = [engine.process(minute_bar(i)).results[SID] for i in range(5)]
    tripped = next(i for i, r in enumerate(results) if r.halt_request)
    after = results[tripped + 1]
    set_state(engine, f"{SID}.deployer", status="HALTED", reason=results[tripped].halt_request)
    halted = engine.process(minute_bar(5)).results[SID]
    set_state(engine, f"{SID}.deployer", status="ACTIVE")
    resumed = engine.process(minute_bar(6)).results[SID]

    assert [len(r.fills) for r in results[1:tripped + 1]] == [1, 1, 1]  # the third fill within 3 minutes
    assert results[tripped].halt_request.startswith(f"{CODE_REPEATED_EXECUTION}: 3 fills of AAA BUY")
    assert after.fills == [] and not events_of(after, OrderAccepted) and not after.halt_request
    assert events_of(after, OrderCanceled)[0].reason.startswith(f"HALTED: {CODE_REPEATED_EXECUTION}")
    assert not events_of(halted, OrderAccepted) and events_of(resumed, OrderAccepted)
