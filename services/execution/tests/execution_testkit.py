"""Shared helpers of execution's engine tests: test strategies, bars, configs, an engine, its trading state."""

from typing import ClassVar

import msgspec
import numpy as np
import pandas as pd

from qmp_core.clock import NS_PER_DAY, TestClock
from qmp_core.messages import (
    BarBatch,
    OrderAccepted,
    RiskSnapshot,
    TradingState,
    encode,
)
from qmp_execution.engine import (
    EngineConfig,
    ExecutionEngine,
    StrategyResult,
)

CAPITAL = 1_000_000.0
SID = "alpha"
PRICES = {"AAA": 50.0, "BBB": 200.0}


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


def engine_with(strategies: dict[str, object], cfg: EngineConfig | None = None,
                clock: TestClock | None = None) -> ExecutionEngine:
    return ExecutionEngine(strategies, cfg or config(), clock or TestClock(0))  # type: ignore[arg-type]


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


def random_walk(days: int, symbols: list[str], seed: int) -> list[BarBatch]:
    rng = np.random.default_rng(seed)
    paths = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, size=(days, len(symbols))), axis=0))
    volumes = rng.uniform(5e4, 2e5, size=days)
    return [bar(d, dict(zip(symbols, paths[d].tolist(), strict=True)), volume=float(volumes[d]))
            for d in range(days)]


NO_COST = {"model": "fixed", "fixed_bps": 0.0}  # a paper broker that fills at the close


def risk(strategy: str, es: dict[str, float], ts_event: int = 1) -> RiskSnapshot:
    return RiskSnapshot(strategy=strategy, ts_event=ts_event, equity=CAPITAL, var={}, es=es, drawdown_24h=0.0,
                        drawdown_max=0.0, volatility_ratio=1.0, breakers=[])


def events_of(result: StrategyResult, kind: type) -> list:
    return [d for d in result.decisions if isinstance(d, kind)]


class RandomWeights:
    """Different long weights every bar (seeded by the bar's time), so order sizes vary widely."""

    lookback = 1
    leverage_limit = 1.0

    def __init__(self, config: dict | None = None) -> None:
        self.config = dict(config or {})

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        seed = int(prices.index[-1].value) % 2**32
        rng = np.random.default_rng(seed)
        row = rng.uniform(0.0, 1.0, prices.shape[1]) ** 3
        row *= 0.9 / row.sum()
        return pd.DataFrame(np.tile(row, (len(prices), 1)), index=prices.index, columns=prices.columns)


def batches(days: int, symbols: int, seed: int) -> list[BarBatch]:
    rng = np.random.default_rng(seed)
    paths = 50.0 * np.exp(np.cumsum(rng.normal(0.0, rng.uniform(0.005, 0.03, symbols), (days, symbols)), axis=0))
    volume = rng.uniform(2e3, 2e5, symbols)  # thin names: participations from tiny to large
    names = [f"S{i:02d}" for i in range(symbols)]
    return [BarBatch(venue="cal", ts_event=(d + 1) * NS_PER_DAY, symbols=names, open=paths[d].tolist(),
                     high=paths[d].tolist(), low=paths[d].tolist(), close=paths[d].tolist(),
                     volume=(volume * rng.uniform(0.8, 1.2, symbols)).tolist(), seq=d) for d in range(days)]
