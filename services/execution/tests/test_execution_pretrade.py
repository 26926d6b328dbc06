"""Pre-trade checks one by one: each returns a denial with its reason code, or lets the order through."""

import pytest
from execution_testkit import (
    CAPITAL,
    NO_COST,
    PRICES,
    SID,
    FixedWeights,
    bar,
    config,
    engine_with,
    events_of,
)

from qmp_core.clock import NS_PER_SECOND, TestClock
from qmp_core.messages import (
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
)
from qmp_execution.engine import (
    CODE_CANCEL_RATE_LIMIT,
    CODE_INSUFFICIENT_CASH,
    CODE_MAX_GROSS_EXPOSURE,
    CODE_MAX_NOTIONAL,
    CODE_MAX_POSITION,
    CODE_MAX_QUANTITY,
    CODE_PRICE_BAND,
    CODE_PRICE_COLLAR,
    CODE_RATE_LIMIT,
    CODE_REPLACED,
    CODE_RESTRICTED,
)
from qmp_execution.engine.config import EngineConfig
from qmp_execution.engine.pretrade import (
    PRE_TRADE_CHECKS,
    Candidate,
    PreTrade,
    RateLimiter,
    available_cash,
    max_gross_exposure,
    max_notional,
    max_position,
    max_quantity,
    order_rate,
    pre_trade,
    price_band,
    price_collar,
    restricted,
)


def order(quantity: float = 100.0, price: float = 10.0, symbol: str = "AAA") -> Candidate:
    return Candidate(symbol, 0, quantity, price, 0.1, [], 0.0, allowed=quantity)


def context(available: float = 1e9, previous: dict[str, float] | None = None, rate: int = 0,
            exposure: dict[str, float] | None = None, marks: dict[str, float] | None = None,
            **settings: object) -> PreTrade:
    return PreTrade(config=EngineConfig(**settings), previous=previous or {}, available=available, fee=0.0,  # type: ignore[arg-type]
                    now_ns=1, rate=RateLimiter(rate, 1_000_000_000), exposure=dict(exposure or {}),
                    marks=dict(marks or {}))


def test_max_notional_when_order_above_limit_then_denied_with_code() -> None:
    denial = max_notional(order(100.0, 10.0), context(max_order_notional=999.0))

    assert denial is not None and denial.code == CODE_MAX_NOTIONAL
    assert max_notional(order(100.0, 10.0), context(max_order_notional=1000.0)) is None


def test_price_band_when_price_jumps_beyond_band_then_denied_and_without_previous_close_allowed() -> None:
    assert price_band(order(price=11.5), context(previous={"AAA": 10.0}, price_band=0.1)).code == CODE_PRICE_BAND
    assert price_band(order(price=10.5), context(previous={"AAA": 10.0}, price_band=0.1)) is None
    assert price_band(order(price=11.5), context(price_band=0.1)) is None


def test_available_cash_when_buy_too_large_then_cut_to_what_cash_affords_and_capped_noted() -> None:
    candidate = order(100.0, 10.0)

    assert available_cash(candidate, context(available=505.0)) is None

    assert candidate.allowed == 50.5
    assert candidate.caps == ["available cash"]


def test_available_cash_when_affordable_part_below_minimum_then_denied_and_sells_never_checked() -> None:
    denial = available_cash(order(100.0, 10.0), context(available=5.0, min_order_notional=100.0))

    assert denial is not None and denial.code == CODE_INSUFFICIENT_CASH
    assert available_cash(order(-100.0, 10.0), context(available=0.0)) is None


def test_pre_trade_when_two_checks_fail_then_first_in_order_wins_and_rate_token_not_spent() -> None:
    ctx = context(previous={"AAA": 1.0}, rate=1, max_order_notional=1.0, price_band=0.1)

    denial = pre_trade(order(), ctx)

    assert denial is not None and denial.code == CODE_MAX_NOTIONAL
    assert PRE_TRADE_CHECKS[-1] is order_rate
    assert order_rate(order(), ctx) is None  # the denied order did not use the only token
    assert order_rate(order(), ctx).code == CODE_RATE_LIMIT  # type: ignore[union-attr]


def test_commit_when_buy_and_sell_accepted_then_available_cash_follows() -> None:
    ctx = context(available=1000.0)
    buy, sell = order(10.0, 10.0), order(-5.0, 10.0)

    ctx.commit(buy)
    ctx.commit(sell)

    assert ctx.available == 1000.0 - 100.0 + 50.0


def test_pre_trade_when_a_limit_is_off_then_its_check_is_not_run() -> None:
    ctx = context(max_order_notional=0.0, price_band=0.0, rate=0, max_order_rate=0)

    assert ctx.checks == (available_cash,)
    assert pre_trade(order(1e9, 1e9), context(available=1e30, max_order_notional=0.0)) is None


# Each limit just below and just above its threshold (the order's value or size at the limit passes).
@pytest.mark.parametrize(("quantity", "denied"), [(50.0, False), (50.000001, True), (-50.0, False), (-50.01, True)])
def test_max_quantity_at_and_beyond_the_limit(quantity: float, denied: bool) -> None:
    denial = max_quantity(order(quantity), context(max_order_quantity=50.0))
    assert (denial is not None and denial.code == CODE_MAX_QUANTITY) == denied


@pytest.mark.parametrize(("held", "quantity", "denied"), [
    (60.0, 40.0, False),  # 100 × 10 = 1,000: at the limit
    (60.0, 40.01, True),  # just above
    (150.0, -20.0, False),  # above the limit already, but the order reduces it
    (-95.0, -5.01, True),  # a short counts by its size
])
def test_max_position_at_and_beyond_the_limit(held: float, quantity: float, denied: bool) -> None:
    ctx = context(exposure={"AAA": held}, marks={"AAA": 10.0}, max_position_notional=1000.0)
    denial = max_position(order(quantity, 10.0), ctx)
    assert (denial is not None and denial.code == CODE_MAX_POSITION) == denied


def test_max_gross_exposure_when_orders_accepted_then_each_counts_against_the_limit_at_once() -> None:
    # Held: 500 of AAA and a short of 300 of BBB (gross 800); the credit limit is 1,000.
    ctx = context(exposure={"AAA": 50.0, "BBB": -30.0}, marks={"AAA": 10.0, "BBB": 10.0}, max_gross_exposure=1000.0)
    first = order(10.0, 10.0, symbol="CCC")  # +100: gross 900
    assert max_gross_exposure(first, ctx) is None
    ctx.commit(first)
    assert ctx.gross == pytest.approx(900.0)
    assert max_gross_exposure(order(10.0, 10.0, symbol="DDD"), ctx) is None  # 1,000: at the limit
    over = max_gross_exposure(order(10.01, 10.0, symbol="DDD"), ctx)
    assert over is not None and over.code == CODE_MAX_GROSS_EXPOSURE and "1,000" in over.reason
    assert max_gross_exposure(order(40.0, 10.0, symbol="BBB"), ctx) is None  # covering the short reduces gross
    assert max_gross_exposure(order(-60.0, 10.0, symbol="BBB"), ctx) is not None  # a bigger short grows it


@pytest.mark.parametrize(("held", "quantity", "denied"), [
    (0.0, 10.0, True), (100.0, 10.0, True), (100.0, -40.0, False), (-100.0, 100.0, False), (-100.0, -1.0, True)])
def test_restricted_symbol_when_order_would_grow_position_then_denied_and_reductions_go(
        held: float, quantity: float, denied: bool) -> None:
    ctx = context(exposure={"AAA": held}, marks={"AAA": 10.0}, restricted_symbols=frozenset({"AAA"}))
    denial = restricted(order(quantity), ctx)
    assert (denial is not None and denial.code == CODE_RESTRICTED) == denied
    assert restricted(order(quantity, symbol="BBB"), ctx) is None


def test_pre_trade_when_every_limit_on_then_all_run_in_order_and_cash_cut_is_judged_by_position() -> None:
    ctx = context(available=500.0, exposure={}, marks={}, max_order_notional=1e6, max_order_quantity=1e6,
                  price_band=0.5, price_collar=0.5, restricted_symbols=frozenset({"ZZZ"}), max_position_notional=600.0,
                  max_gross_exposure=1e6, rate=10)
    assert ctx.checks == PRE_TRADE_CHECKS
    candidate = order(100.0, 10.0)  # 1,000 wanted; cash cuts it to 500, under the 600 position limit

    assert pre_trade(candidate, ctx) is None and candidate.allowed == 50.0


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


def test_process_when_price_drifts_outside_the_rolling_collar_bar_by_bar_then_denied_though_each_bar_passes_the_band(
) -> None:
    # AAA climbs 9% a bar: each bar within the 10% band, but after four bars 19%+ above its 4-bar mean.
    cfg = config(price_band=0.1, price_collar=0.15, price_collar_bars=4)
    engine = engine_with({SID: FixedWeights({"AAA": 0.3, "BBB": 0.3})}, cfg)
    results = [engine.process(bar(day, {"AAA": 50.0 * 1.09 ** day, "BBB": 200.0})).results[SID]
               for day in range(6)]

    codes = [{d.symbol: getattr(d, "reason_code", "") or type(d).__name__ for d in r.decisions} for r in results]
    assert codes[1]["AAA"] == "OrderAccepted" and codes[-1]["AAA"] == CODE_PRICE_COLLAR
    assert all(c.get("AAA") != CODE_PRICE_BAND for c in codes)  # the one-bar band never saw it
    assert all(c.get("BBB") in (None, "OrderAccepted") for c in codes)  # a flat price stays within the collar
    denial = next(d for d in results[-1].decisions if d.symbol == "AAA")
    assert "mean close of the last 4 bars" in denial.reason


def test_price_collar_when_at_the_threshold_then_allowed_and_just_above_then_denied() -> None:
    ctx = context(price_collar=0.25)
    ctx.reference = {"AAA": 8.0}

    at, above = order(price=10.0), order(price=10.001)  # exactly 25% above, and just above
    for candidate in (at, above):
        candidate.allowed = candidate.quantity

    assert price_collar(at, ctx) is None
    denial = price_collar(above, ctx)
    assert denial is not None and denial.code == CODE_PRICE_COLLAR
    assert price_collar(order(price=50.0, symbol="ZZZ"), ctx) is None  # no reference: not judged


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


def test_process_when_cancel_rate_exceeded_then_working_order_stays_and_new_one_denied_until_interval_passes(
) -> None:
    clock = TestClock(0)
    strategy = FixedWeights({"AAA": 0.005, "BBB": 0.02})  # 100 units each, of which a bar fills 40
    engine = engine_with({SID: strategy}, config(paper={"max_bar_participation": 0.1}, max_cancel_rate=1,
                                                 cancel_rate_interval_s=1.0), clock)
    engine.process(bar(0, PRICES, volume=400.0))
    working = {e.symbol: e.order_id for e in events_of(engine.process(bar(1, PRICES, volume=400.0)).results[SID],
                                                       OrderAccepted)}
    strategy.weights = {"AAA": 0.0, "BBB": 0.0}  # both working orders now overshoot: both want replacing

    held = engine.process(bar(2, PRICES, volume=400.0)).results[SID]
    clock.advance(2 * NS_PER_SECOND)
    later = engine.process(bar(3, PRICES, volume=400.0)).results[SID]

    assert [(e.symbol, e.reason_code) for e in events_of(held, OrderCanceled)] == [("AAA", CODE_REPLACED)]
    denied = events_of(held, OrderDenied)
    assert [(d.symbol, d.reason_code) for d in denied] == [("BBB", CODE_CANCEL_RATE_LIMIT)]
    assert working["BBB"] in denied[0].reason and working["BBB"] in {w.order_id for w in held.snapshot.working}
    assert [(e.symbol, e.order_id) for e in events_of(later, OrderCanceled)] == [("BBB", working["BBB"])]


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
