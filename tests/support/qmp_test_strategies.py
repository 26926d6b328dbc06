"""Strategies for system tests and benchmarks: they trade on every bar, so every batch makes orders.

Importable by child processes when this folder is on PYTHONPATH.
"""

import numpy as np
import pandas as pd

from qmp_core.strategy import BaseStrategy


class DailyRebalancer(BaseStrategy):
    """Hold 5% or 10% of equity in each of the first five symbols, switching every bar (by timestamp)."""

    lookback = 1
    leverage_limit = 1.0
    step_seconds = 86_400
    symbols_held = 5

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        ns = np.asarray(pd.DatetimeIndex(prices.index), dtype="datetime64[ns]").astype(np.int64)
        seconds = ns // 1_000_000_000
        level = 0.05 + 0.05 * ((seconds // self.step_seconds) % 2)
        weights = np.zeros(prices.shape)
        held = min(self.symbols_held, prices.shape[1])
        weights[:, :held] = level[:, None]
        return pd.DataFrame(weights, index=prices.index, columns=prices.columns)


class MinuteRebalancer(DailyRebalancer):
    """The same on one-minute bars."""

    step_seconds = 60


class SecondRebalancer(DailyRebalancer):
    """The same every second: on a live feed of a bar a second or faster, every bar orders."""

    step_seconds = 1


class InstrumentMomentum(BaseStrategy):
    """Time-series momentum per instrument: hold gross/N of equity in each symbol whose return over the last
    `lookback` bars is positive, nothing in the others (the benchmark replay's strategy)."""

    lookback = 20
    leverage_limit = 1.0
    gross = 0.9

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        values = prices.to_numpy(dtype=float)
        weights = np.zeros_like(values)
        if len(values) > self.lookback:
            past = values[: -self.lookback]
            rising = (values[self.lookback :] > past) & (past > 0)
            weights[self.lookback :] = np.where(rising, self.gross / max(values.shape[1], 1), 0.0)
        return pd.DataFrame(weights, index=prices.index, columns=prices.columns)


class EveryBarHolder(BaseStrategy):
    """Hold half the equity spread evenly over every symbol: from flat, each bar orders every symbol."""

    lookback = 1
    leverage_limit = 1.0

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(0.5 / max(prices.shape[1], 1), index=prices.index, columns=prices.columns)
