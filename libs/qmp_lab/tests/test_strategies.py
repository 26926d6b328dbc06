"""Reference strategies: zero look-ahead, leverage within limits, the behaviour each one promises, and that
execution can host them side by side."""

from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from qmp_core.clock import NS_PER_DAY, TestClock
from qmp_core.messages import BarBatch
from qmp_core.strategy import BaseStrategy, load_strategy
from qmp_execution.engine import EngineConfig, ExecutionEngine
from qmp_lab.strategies.mean_reversion import MeanReversion
from qmp_lab.strategies.momentum import CrossSectionalMomentum
from qmp_lab.strategies.ridge import RidgeReturns

PATHS = {
    "momentum": "qmp_lab.strategies.momentum:CrossSectionalMomentum",
    "mean_reversion": "qmp_lab.strategies.mean_reversion:MeanReversion",
    "ridge": "qmp_lab.strategies.ridge:RidgeReturns",
}
SMALL = {"momentum": {"formation": 60, "skip": 5}, "mean_reversion": {"window": 5},
         "ridge": {"train_rows": 120, "lags": 3, "refit_every": 10}}


@cache
def history(start: str = "2003-01-01", end: str = "2006-12-31") -> pd.DataFrame:
    with (resources.files("qmp_core") / "data" / "sp500_prices.csv.gz").open("rb") as handle:
        frame = pd.read_csv(handle, compression="gzip", parse_dates=["Date"], index_col="Date")
    return frame.loc[start:end]


def built(name: str) -> BaseStrategy:
    strategy = load_strategy(PATHS[name], SMALL[name])
    if isinstance(strategy, RidgeReturns):
        strategy.fit(history().iloc[:300])
    return strategy  # type: ignore[return-value]


@pytest.mark.parametrize("name", sorted(PATHS))
def test_target_weights_when_history_truncated_at_t_then_row_t_unchanged(name: str) -> None:
    prices = history()
    strategy = built(name)
    full = strategy.target_weights(prices)

    for t in range(320, len(prices), 137):
        window = prices.iloc[t - strategy.lookback : t + 1]
        np.testing.assert_allclose(strategy.target_weights(window).iloc[-1].to_numpy(), full.iloc[t].to_numpy(),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_target_weights_when_future_perturbed_then_past_rows_unchanged(name: str) -> None:
    prices = history()
    strategy = built(name)
    t = 500
    shocked = prices.copy()
    shocked.iloc[t + 1 :] *= np.random.default_rng(2).uniform(0.5, 1.5, size=shocked.iloc[t + 1 :].shape)

    pd.testing.assert_frame_equal(strategy.target_weights(prices).iloc[: t + 1],
                                  strategy.target_weights(shocked).iloc[: t + 1])


@pytest.mark.parametrize("name", sorted(PATHS))
def test_target_weights_when_any_history_then_finite_and_within_leverage_limit(name: str) -> None:
    prices = history()
    strategy = built(name)

    weights = strategy.target_weights(prices)

    assert weights.shape == prices.shape and np.isfinite(weights.to_numpy()).all()
    gross = weights.abs().sum(axis=1)
    assert gross.max() <= strategy.leverage_limit + 1e-9
    assert gross.iloc[strategy.lookback + 1 :].mean() > 0.5 * strategy.leverage_limit


def test_momentum_when_ranked_then_long_only_past_winners() -> None:
    prices = history()
    strategy = CrossSectionalMomentum({"formation": 60, "skip": 5, "fraction": 0.25})
    t = 400
    past = prices.iloc[t - 5] / prices.iloc[t - 60] - 1.0

    row = strategy.target_weights(prices).iloc[t]

    held = set(row[row > 0].index)
    assert held == set(past.nlargest(5).index)
    assert (row >= 0).all() and row.sum() == pytest.approx(1.0)


def test_momentum_when_long_short_then_dollar_neutral() -> None:
    weights = CrossSectionalMomentum({"formation": 60, "skip": 5, "long_short": True}).target_weights(history())

    active = weights.iloc[61:]
    np.testing.assert_allclose(active.sum(axis=1).to_numpy(), 0.0, atol=1e-12)
    assert (active < 0).any().any()


def test_mean_reversion_when_symbol_fell_most_then_largest_long_weight() -> None:
    prices = history()
    t = 700
    row = MeanReversion({"window": 5}).target_weights(prices).iloc[t]
    change = prices.iloc[t] / prices.iloc[t - 5] - 1.0

    assert row.idxmax() == change.idxmin() and row.idxmin() == change.idxmax()
    assert row.sum() == pytest.approx(0.0, abs=1e-12)


def test_ridge_when_returns_have_planted_reversal_then_model_finds_it_and_trades_it() -> None:
    rng = np.random.default_rng(5)
    rows, symbols = 900, 12
    returns = np.zeros((rows, symbols))
    noise = rng.normal(0.0, 0.01, (rows, symbols))
    for t in range(1, rows):
        returns[t] = -0.4 * returns[t - 1] + noise[t]
    index = pd.date_range("2001-01-01", periods=rows, freq="D")
    prices = pd.DataFrame(100 * np.cumprod(1 + returns, axis=0), index=index, columns=[f"S{i}" for i in range(12)])
    strategy = RidgeReturns({"lags": 2, "train_rows": 500, "ridge": 0.01})

    assert strategy.target_weights(prices).abs().sum().sum() == 0.0  # flat before fit
    strategy.fit(prices.iloc[:600])
    weights = strategy.target_weights(prices).iloc[600:-1]
    realised = (weights.to_numpy() * returns[601:]).sum(axis=1)

    assert strategy.coefficients is not None and strategy.coefficients[0] < -0.2
    assert realised.mean() > 0 and realised.mean() / realised.std() > 0.2


def test_engine_when_hosting_all_reference_strategies_then_each_trades_and_none_stops() -> None:
    strategies = {name: load_strategy(PATHS[name], SMALL[name]) for name in PATHS}
    strategies["vol_target"] = load_strategy("qmp_lab.strategies.vol_target:VolatilityTarget",
                                             {"trend_window": 20, "volatility_span": 5})
    engine = ExecutionEngine(strategies, EngineConfig(es_budget=0.0), TestClock(0))
    prices = history("2004-01-01", "2004-12-31")
    symbols = list(prices.columns)
    for day, (_, row) in enumerate(prices.iterrows()):
        closes = row.to_numpy().tolist()
        batch = BarBatch(venue="hist", ts_event=(day + 1) * NS_PER_DAY, symbols=symbols, open=closes, high=closes,
                         low=closes, close=closes, volume=[5e8 / c for c in closes], seq=day)
        engine.process(batch)

    for name, host in engine.hosts.items():
        assert host.running, host.error
        assert host.portfolio.fills_total > 0, name
