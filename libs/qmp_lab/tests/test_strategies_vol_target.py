"""The reference VolatilityTarget strategy: causality, leverage, and risk control through 2007-2009."""

from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from qmp_lab.strategies.vol_target import VolatilityTarget


@cache
def bundled(name: str) -> pd.DataFrame:
    with (resources.files("qmp_core") / "data" / name).open("rb") as handle:
        return pd.read_csv(handle, compression="gzip", parse_dates=["Date"], index_col="Date")


def prices(start: str, end: str) -> pd.DataFrame:
    return bundled("sp500_prices.csv.gz").loc[start:end]


def max_drawdown(levels: pd.Series) -> float:
    return float((levels / levels.cummax() - 1.0).min())


def test_target_weights_when_history_truncated_at_t_then_row_t_unchanged() -> None:
    history = prices("2004-01-01", "2009-12-31")
    strategy = VolatilityTarget()
    full = strategy.target_weights(history)

    for t in range(250, len(history), 157):
        prefix = strategy.target_weights(history.iloc[: t + 1])
        np.testing.assert_allclose(prefix.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=0, atol=1e-12)


def test_target_weights_when_future_perturbed_then_past_rows_unchanged() -> None:
    history = prices("2004-01-01", "2008-12-31")
    strategy = VolatilityTarget()
    t = 600
    shocked = history.copy()
    shocked.iloc[t + 1 :] *= np.random.default_rng(1).uniform(0.5, 1.5, size=shocked.iloc[t + 1 :].shape)

    before = strategy.target_weights(history).iloc[: t + 1]
    after = strategy.target_weights(shocked).iloc[: t + 1]

    pd.testing.assert_frame_equal(before, after)


def test_target_weights_when_given_only_lookback_window_then_matches_full_history() -> None:
    history = prices("2003-01-01", "2008-06-30")
    strategy = VolatilityTarget()
    full = strategy.target_weights(history).iloc[-1]

    window = strategy.target_weights(history.iloc[-(strategy.lookback + 1) :]).iloc[-1]

    np.testing.assert_allclose(window.to_numpy(), full.to_numpy(), rtol=1e-6, atol=1e-9)


def test_target_weights_when_any_history_then_long_only_within_leverage_cap() -> None:
    history = prices("1995-01-01", "2012-12-31")
    strategy = VolatilityTarget({"max_leverage": 0.8})

    weights = strategy.target_weights(history)

    assert weights.shape == history.shape
    assert np.isfinite(weights.to_numpy()).all()
    assert (weights >= 0).all().all()
    assert weights.abs().sum(axis=1).max() <= 0.8 + 1e-12
    assert weights.abs().sum(axis=1).max() > 0.5


def test_target_weights_when_replaying_2007_to_2009_then_drawdown_far_below_index() -> None:
    history = prices("2005-06-01", "2009-12-31")
    weights = VolatilityTarget().target_weights(history)
    returns = history / history.shift(1) - 1.0
    strategy_returns = (weights.shift(1) * returns).sum(axis=1).loc["2007-01-01":]
    index = bundled("sp500_index.csv.gz")["SP500"].loc["2007-01-01":"2009-12-31"]

    strategy_drawdown = max_drawdown((1.0 + strategy_returns).cumprod())
    index_drawdown = max_drawdown(index)

    assert index_drawdown < -0.5
    assert strategy_drawdown > -0.20
    assert strategy_drawdown > index_drawdown / 3


def test_target_weights_when_invested_then_realised_volatility_near_target() -> None:
    history = prices("1996-01-01", "2019-12-31")
    weights = VolatilityTarget({"target_volatility": 0.10}).target_weights(history)
    returns = (weights.shift(1) * (history / history.shift(1) - 1.0)).sum(axis=1)
    invested = weights.shift(1).sum(axis=1) > 0.05

    realised = float(returns[invested].std() * np.sqrt(252))

    assert realised == pytest.approx(0.10, abs=0.03)
