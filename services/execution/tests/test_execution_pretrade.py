"""Pre-trade checks one by one: each returns a denial with its reason code, or lets the order through."""

from qmp_execution.engine import CODE_INSUFFICIENT_CASH, CODE_MAX_NOTIONAL, CODE_PRICE_BAND, CODE_RATE_LIMIT
from qmp_execution.engine.config import EngineConfig
from qmp_execution.engine.pretrade import (
    PRE_TRADE_CHECKS,
    Candidate,
    PreTrade,
    RateLimiter,
    available_cash,
    max_notional,
    order_rate,
    pre_trade,
    price_band,
)


def order(quantity: float = 100.0, price: float = 10.0, symbol: str = "AAA") -> Candidate:
    return Candidate(symbol, 0, quantity, price, 0.1, [], 0.0, allowed=quantity)


def context(available: float = 1e9, previous: dict[str, float] | None = None, rate: int = 0,
            **settings: float) -> PreTrade:
    return PreTrade(config=EngineConfig(**settings), previous=previous or {}, available=available, fee=0.0,
                    now_ns=1, rate=RateLimiter(rate, 1_000_000_000))


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
