"""Unit tests of the execution engine: sizing, gating, paper fills, idempotency and recovery."""

import math
from typing import ClassVar

import msgspec
import numpy as np
import pandas as pd
import pytest

from qmp_core.clock import NS_PER_DAY, TestClock
from qmp_core.messages import (
    BarBatch,
    Fill,
    OrderAccepted,
    OrderDenied,
    OrderEvent,
    PortfolioSnapshot,
    TradingState,
    codec,
    encode,
)
from qmp_core.validation import BatchRejected
from qmp_execution.engine import (
    CODE_HALTED,
    CODE_REDUCING,
    CODE_STRATEGY_ERROR,
    EngineConfig,
    ExecutionEngine,
    StrategyResult,
)

CAPITAL = 1_000_000.0
SID = "alpha"


class FixedWeights:
    """Asks for the same weights on every row; `weights` may be changed between batches."""

    def __init__(self, weights: dict[str, float], lookback: int = 1, leverage_limit: float = 1.0) -> None:
        self.weights = dict(weights)
        self.lookback = lookback
        self.leverage_limit = leverage_limit
        self.config: dict[str, float] = {}

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        row = [self.weights.get(s, 0.0) for s in prices.columns]
        return pd.DataFrame([row] * len(prices), index=prices.index, columns=prices.columns)


class Momentum:
    """Long symbols above their 3-row mean, short those below: output depends on the prices."""

    lookback = 3
    leverage_limit = 1.0
    config: ClassVar[dict[str, float]] = {}

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        signal = np.sign(prices - prices.rolling(3, min_periods=1).mean())
        return signal.div(len(prices.columns)).fillna(0.0)


class Exploding:
    lookback = 1
    leverage_limit = 1.0
    config: ClassVar[dict[str, float]] = {}

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        raise ZeroDivisionError("model blew up")


def bar(day: int, closes: dict[str, float], volume: float = 1e6, chunk: int = 0, chunks: int = 1) -> BarBatch:
    symbols = list(closes)
    values = [closes[s] for s in symbols]
    return BarBatch(venue="test", ts_event=(day + 1) * NS_PER_DAY, symbols=symbols, open=values, high=values,
                    low=values, close=values, volume=[volume] * len(symbols), seq=day, chunk=chunk, chunks=chunks)


def config(paper: dict[str, object] | None = None, **overrides: object) -> EngineConfig:
    """Engine config for tests: no volume limits, no ES budget, unless asked for."""
    values: dict[str, object] = {"initial_capital": CAPITAL, "min_order_notional": 0.0, "participation_limit": 0.0,
                                 "es_budget": 0.0}
    values.update(overrides)
    values["paper"] = {"max_bar_participation": 0.0} | (paper or {})
    return msgspec.convert(values, EngineConfig)


def engine_with(strategies: dict[str, object], cfg: EngineConfig | None = None) -> ExecutionEngine:
    return ExecutionEngine(strategies, cfg or config(), TestClock(0))  # type: ignore[arg-type]


def set_state(engine: ExecutionEngine, key: str, **fields: object) -> None:
    strategy = key.partition(".")[0]
    engine.controls.put(key, encode(TradingState(strategy=strategy, **fields)))  # type: ignore[arg-type]


def orders(result: StrategyResult) -> dict[str, float]:
    """Return symbol → signed quantity of the accepted orders."""
    signed: dict[str, float] = {}
    for decision in result.decisions:
        if isinstance(decision, OrderAccepted):
            signed[decision.symbol] = decision.quantity * (1 if decision.side == "BUY" else -1)
    return signed


PRICES = {"AAA": 50.0, "BBB": 200.0}


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


def test_process_when_all_strategies_halted_then_orders_denied() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    set_state(engine, "ALL.operator", status="HALTED", reason="market closed")
    engine.process(bar(0, PRICES))

    result = engine.process(bar(1, PRICES)).results[SID]

    assert [(type(d).__name__, d.reason_code) for d in result.decisions] == [("OrderDenied", CODE_HALTED)]


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


def test_process_when_buy_and_sell_then_buy_pays_more_and_sell_receives_less() -> None:
    strategy = FixedWeights({"AAA": 0.5})
    sqrt_law = {"model": "sqrt", "half_spread_bps": 2.0, "sqrt_y": 0.5}
    engine = engine_with({SID: strategy}, config(paper={"fee_bps": 1.0, "slippage": sqrt_law}))
    closes = [50.0, 51.0, 49.5, 50.5]
    for day, close in enumerate(closes[:-1]):
        engine.process(bar(day, {"AAA": close}, volume=20_000.0))
    buy_fill = engine.hosts[SID]._last.fills[0]  # type: ignore[union-attr]
    strategy.weights = {"AAA": 0.0}

    sold = engine.process(bar(3, {"AAA": closes[3]}, volume=20_000.0)).results[SID]
    sell_decision, sell_fill = sold.decisions[0], sold.fills[0]

    assert buy_fill.side == "BUY" and sell_fill.side == "SELL"
    assert buy_fill.price > buy_fill.arrival_price
    assert sell_fill.price < sell_fill.arrival_price
    assert buy_fill.slippage_bps > 0 and sell_fill.slippage_bps > 0
    sigma = float(np.std(np.diff(np.log(closes)), ddof=1))
    cost = 2.0e-4 + 0.5 * sigma * math.sqrt(sell_decision.quantity / 20_000.0)
    assert sell_fill.price == pytest.approx(closes[3] * (1 - cost), rel=1e-12)
    assert sell_fill.slippage_bps == pytest.approx(cost * 1e4, rel=1e-9)
    assert sell_fill.fee == pytest.approx(sell_fill.quantity * sell_fill.price * 1e-4, rel=1e-12)
    assert codec(Fill).decode(encode(sell_fill)) == sell_fill
    assert codec(OrderEvent).decode(encode(sell_decision)) == sell_decision


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


def test_process_when_batch_replayed_then_same_result_and_no_double_fill() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.3})})
    engine.process(bar(0, PRICES))
    first = engine.process(bar(1, PRICES)).results[SID]
    book = engine.hosts[SID].portfolio.to_snapshot()

    again = engine.process(bar(1, PRICES)).results[SID]
    older = engine.process(bar(0, PRICES)).results

    assert again.replayed is True
    assert again.decisions == first.decisions
    assert again.snapshot == first.snapshot
    assert codec(PortfolioSnapshot).decode(encode(first.snapshot)) == first.snapshot
    assert older == {}
    assert engine.hosts[SID].portfolio.to_snapshot() == book
    assert [d.order_id for d in first.decisions] == [f"{SID}-{2 * NS_PER_DAY}-AAA", f"{SID}-{2 * NS_PER_DAY}-BBB"]
    assert [f.fill_id for f in first.fills] == [f"{d.order_id}-f1" for d in first.decisions]


def random_walk(days: int, symbols: list[str], seed: int) -> list[BarBatch]:
    rng = np.random.default_rng(seed)
    paths = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, size=(days, len(symbols))), axis=0))
    volumes = rng.uniform(5e4, 2e5, size=days)
    return [bar(d, dict(zip(symbols, paths[d].tolist(), strict=True)), volume=float(volumes[d]))
            for d in range(days)]


def test_restore_when_from_snapshot_then_subsequent_orders_identical() -> None:
    batches = random_walk(60, ["AAA", "BBB", "CCC"], seed=7)
    original = engine_with({SID: Momentum()})
    results = [original.process(b).results[SID] for b in batches]
    cut = 35
    assert any(r.decisions for r in results[cut + 1 :])

    restarted = engine_with({SID: Momentum()})
    restarted.restore(results[cut].snapshot)
    restarted.warm(reversed(batches[: cut + 1]))
    replayed = [restarted.process(b).results[SID] for b in batches[cut + 1 :]]

    assert [r.decisions for r in replayed] == [r.decisions for r in results[cut + 1 :]]
    assert [r.fills for r in replayed] == [r.fills for r in results[cut + 1 :]]
    assert replayed[-1].snapshot == results[-1].snapshot


def test_restore_when_last_batch_redelivered_then_nothing_traded_again() -> None:
    batches = random_walk(10, ["AAA", "BBB"], seed=3)
    original = engine_with({SID: Momentum()})
    snapshot = [original.process(b).results[SID] for b in batches][-1].snapshot

    restarted = engine_with({SID: Momentum()})
    restarted.restore(snapshot)

    assert restarted.process(batches[-1]).results == {}
    assert restarted.hosts[SID].portfolio.to_snapshot() == snapshot


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


def test_process_when_chunks_arrive_then_trades_once_all_have_arrived() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.5})})
    for day in (0, 1):
        first = engine.process(bar(day, {"AAA": 50.0}, chunk=0, chunks=2))
        second = engine.process(bar(day, {"BBB": 200.0}, chunk=1, chunks=2))
        assert first.complete is False and first.results == {}
        assert second.complete is True

    assert set(orders(second.results[SID])) == {"AAA", "BBB"}


def test_process_when_batch_malformed_then_rejected() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    broken = msgspec.structs.replace(bar(0, PRICES), close=[1.0])

    with pytest.raises(BatchRejected, match="column lengths differ"):
        engine.process(broken)


def test_process_when_row_invalid_then_row_reported_and_rest_traded() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5, "BBB": 0.5})})
    engine.process(bar(0, PRICES))
    bad = msgspec.structs.replace(bar(1, PRICES), close=[PRICES["AAA"], -1.0])

    result = engine.process(bad)

    assert [symbol for symbol, _ in result.rejected] == ["BBB"]
    assert set(orders(result.results[SID])) == {"AAA"}


# ---------------------------------------------------------------- one venue per strategy
def test_process_when_other_venue_sends_far_future_batch_then_strategy_keeps_trading_its_own() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})})
    engine.process(bar(0, PRICES))
    poisoned = msgspec.structs.replace(bar(0, {"AAA": 1e6}), venue="other", ts_event=4_102_444_800 * 10**9)
    assert engine.process(poisoned).results == {}  # not its venue: neither its time nor its prices
    result = engine.process(bar(1, PRICES)).results[SID]
    assert result.snapshot.ts_event == bar(1, PRICES).ts_event
    assert result.snapshot.equity == pytest.approx(CAPITAL, rel=1e-3)  # marked at 50, not at 1e6
    assert result.snapshot.venue == "test"


def test_process_when_venue_configured_then_batches_of_others_ignored_even_first() -> None:
    engine = engine_with({SID: FixedWeights({"AAA": 0.5})}, config(venue="test"))
    other = msgspec.structs.replace(bar(0, PRICES), venue="other")
    assert engine.process(other).results == {} and not engine.follows("other")
    assert SID in engine.process(bar(1, PRICES)).results


def test_restore_when_snapshot_names_venue_then_strategy_stays_bound_to_it() -> None:
    first = engine_with({SID: FixedWeights({"AAA": 0.5})})
    snapshot = first.process(bar(0, PRICES)).results[SID].snapshot
    restarted = engine_with({SID: FixedWeights({"AAA": 0.5})})
    restarted.restore(codec(PortfolioSnapshot).decode(encode(snapshot)))
    assert restarted.process(msgspec.structs.replace(bar(1, PRICES), venue="other")).results == {}
    assert SID in restarted.process(bar(1, PRICES)).results
