"""The account breaker (engine/accounts.py through RiskEngine): an account's equity from its strategies' books,
its trailing drawdown and ES, and a halt of every strategy of the account when either passes its limit."""

import numpy as np
import pytest

from qmp_core.clock import NS_PER_DAY, NS_PER_HOUR, TestClock
from qmp_core.messages import BreakerReleased, BreakerTripped, Halt, PortfolioSnapshot, TradingState
from qmp_kernels.var import historical_var_es_nb
from qmp_risk.config import RiskSettings
from qmp_risk.engine import RiskEngine

T0 = 1_600_000_000 * 1_000_000_000


def make_engine(**overrides: object) -> RiskEngine:
    values: dict[str, object] = {"var_window": 30, "min_observations": 10, "bar_wait_s": 0.0,
                                 "symbol_risk": False}
    values.update(overrides)
    return RiskEngine(RiskSettings(**values), TestClock(T0))  # type: ignore[arg-type]


def book(strategy: str, ts: int, equity: float) -> PortfolioSnapshot:
    return PortfolioSnapshot(strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=[], quantities=[],
                             prices=[])


def on_account(engine: RiskEngine, capital: float, *strategies: str) -> None:
    for strategy in strategies:
        engine.accounts.follow(strategy, "main")
    engine.accounts.set_capital("main", capital)


def test_account_breaker_when_the_accounts_drawdown_passes_its_limit_then_every_strategy_of_it_is_halted_once():
    engine = make_engine()
    on_account(engine, 500_000.0, "a", "b")  # books of 1,000,000 each trading from an account of 500,000
    for strategy in ("a", "b"):
        engine.on_portfolio(book(strategy, T0, 1_000_000.0))
    ts = T0 + NS_PER_HOUR
    quiet = [engine.on_portfolio(book("a", ts, 970_000.0)), engine.on_portfolio(book("b", ts, 970_000.0))]
    ts += NS_PER_HOUR
    almost = engine.on_portfolio(book("a", ts, 960_000.0))  # 430,000: 14%
    tripped = engine.on_portfolio(book("b", ts, 950_000.0))  # 410,000: 18%; each book is down 5% only
    later = engine.on_portfolio(book("b", ts + NS_PER_HOUR, 940_000.0))

    assert all(not r.commands and not r.others for r in [*quiet, almost])
    assert almost.snapshot.account_drawdown_24h == pytest.approx(0.14)
    snapshot = tripped.snapshot
    assert (snapshot.account, snapshot.account_equity) == ("main", pytest.approx(410_000.0))
    assert snapshot.account_drawdown_24h == pytest.approx(0.18) and snapshot.drawdown_24h == pytest.approx(0.05)
    reason = "account main: drawdown 18.00% > 15.00% (strategies a, b)"
    assert [(c.breaker, type(c.command), c.command.reason) for c in tripped.commands] == [("account", Halt, reason)]
    assert [(o.strategy, [type(c.command) for c in o.commands]) for o in tripped.others] == [("a", [Halt])]
    assert [e.strategy for e in [*tripped.events, *tripped.others[0].events]] == ["b", "a"]
    assert all(isinstance(e, BreakerTripped) and e.value == pytest.approx(0.18) for e in tripped.events)
    assert not later.commands and not later.others  # latched: once until resumed
    assert "account" in later.snapshot.breakers


def test_account_breaker_when_resumed_then_released_and_trips_again_on_a_new_breach():
    engine = make_engine()
    on_account(engine, 100_000.0, "a")
    engine.on_portfolio(book("a", T0, 1_000_000.0))
    assert engine.on_portfolio(book("a", T0 + NS_PER_HOUR, 980_000.0)).commands  # 20% of the account
    engine.on_trading_state(TradingState(strategy="a", status="HALTED", issued_by="risk"))
    released = engine.on_trading_state(TradingState(strategy="a", status="ACTIVE", issued_by="operator"))
    far = T0 + 3 * NS_PER_DAY  # the old peak has left the trailing window: no breach
    calm = engine.on_portfolio(book("a", far, 980_000.0))
    again = engine.on_portfolio(book("a", far + NS_PER_HOUR, 950_000.0))  # 30,000 of 80,000: 37.5%

    assert [(type(e), e.breaker) for e in released] == [(BreakerReleased, "account")]
    assert not calm.commands and calm.snapshot.account_drawdown_24h == pytest.approx(0.0)
    assert [c.breaker for c in again.commands] == ["account"]


def test_account_breaker_when_es_over_its_limit_then_halts_and_the_es_is_historical_simulation_of_its_returns():
    engine = make_engine(account_es_limit=0.02, account_drawdown_halt=0.0)
    on_account(engine, 1_000_000.0, "a")
    rng = np.random.default_rng(3)
    equity, ts, results, values = 1_000_000.0, T0, [], [1_000_000.0]
    results.append(engine.on_portfolio(book("a", ts, equity)))
    for change in rng.normal(0.0, 0.012, 29):
        equity *= 1.0 + change
        ts += NS_PER_DAY
        values.append(equity)
        results.append(engine.on_portfolio(book("a", ts, equity)))
    first = next(i for i, r in enumerate(results) if r.commands)
    # Returns are of final values: the value at a timestamp becomes one when the next timestamp arrives.
    returns = np.diff(values[:first]) / np.array(values[:first - 1])
    _, expected, _ = historical_var_es_nb(returns, 0.99)

    assert all(r.snapshot.account_es is None for r in results[:11])  # fewer than min_observations returns
    assert results[first].snapshot.account_es == pytest.approx(expected) and expected > 0.02
    assert all(r.snapshot.account_es <= 0.02 for r in results[11:first])
    assert "Expected Shortfall" in results[first].commands[0].command.reason


def test_account_measures_when_members_report_in_either_order_then_the_same_numbers():
    rng = np.random.default_rng(9)
    paths = 1_000_000.0 * np.cumprod(1.0 + rng.normal(0.0, 0.01, (40, 2)), axis=0)
    snapshots = []
    for order in (("a", "b"), ("b", "a")):
        engine = make_engine(account_drawdown_halt=0.0)
        on_account(engine, 2_000_000.0, "a", "b")
        for row, values in enumerate(paths):
            ts = T0 + row * NS_PER_DAY
            for strategy in order:
                result = engine.on_portfolio(book(strategy, ts, float(values[0 if strategy == "a" else 1])))
        snapshots.append(result.snapshot)

    first, second = snapshots
    assert first.account_es is not None
    assert (first.account_equity, first.account_drawdown_24h, first.account_es) == pytest.approx(
        (second.account_equity, second.account_drawdown_24h, second.account_es))
    assert first.account_equity == pytest.approx(2_000_000.0 + float((paths[-1] - paths[0]).sum()))


def test_account_measures_when_a_strategy_trades_from_no_account_then_none_and_no_breaker():
    engine = make_engine()
    on_account(engine, 100.0, "a")
    engine.accounts.follow("a", "")  # its rollout no longer names the account
    engine.on_portfolio(book("a", T0, 1_000_000.0))
    result = engine.on_portfolio(book("a", T0 + NS_PER_HOUR, 900_000.0))

    assert (result.snapshot.account, result.snapshot.account_equity, result.snapshot.account_es) == ("", None, None)
    assert not any(c.breaker == "account" for c in result.commands)
