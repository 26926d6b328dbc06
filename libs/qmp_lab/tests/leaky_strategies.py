"""Test strategies for `qmp verify walk_forward`: one clean, one that fits, and four with planted leaks.

Each leak is one line away from its clean twin, as it would be in real research code:
- NextDayReturn: `shift(-1)`, tomorrow's return in today's signal;
- CentredMean: `rolling(..., center=True)`, a window that reaches into the future;
- FullSampleZScore: a z-score with the mean and deviation of the whole sample;
- BackFilled: `bfill()`, a later price copied into a missing one (visible only where data are missing).
Weights are continuous (tanh), so any change in a signal shows in the weights.
"""

import numpy as np
import pandas as pd
from msgspec import Struct

from qmp_core.strategy import BaseStrategy

WINDOW = 20


def spread_weights(signal: pd.DataFrame, priced: pd.DataFrame) -> pd.DataFrame:
    """Return tanh(signal) per symbol divided by the number of priced symbols; 0 where unpriced."""
    count = priced.sum(axis=1).where(lambda c: c > 0)
    raw = np.tanh(signal.where(priced)).fillna(0.0)
    return raw.div(count, axis=0).fillna(0.0)


def momentum(prices: pd.DataFrame, window: int = WINDOW) -> pd.DataFrame:
    return (prices / prices.shift(window) - 1.0) * 10.0


class CleanMomentum(BaseStrategy):
    """Trailing 20-day momentum: causal."""

    lookback = WINDOW

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return spread_weights(momentum(prices), prices.notna())


class NextDayReturn(BaseStrategy):
    """Leak: tomorrow's return through shift(-1)."""

    lookback = WINDOW

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        tomorrow = prices.shift(-1) / prices - 1.0
        return spread_weights(momentum(prices) + 50.0 * tomorrow.fillna(0.0), prices.notna())


class CentredMean(BaseStrategy):
    """Leak: distance to a centred rolling mean (half the window is in the future)."""

    lookback = WINDOW

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        mean = prices.rolling(WINDOW + 1, center=True, min_periods=1).mean()
        return spread_weights((prices / mean - 1.0) * 10.0, prices.notna())


class FullSampleZScore(BaseStrategy):
    """Leak: momentum z-scored with the whole sample's mean and standard deviation."""

    lookback = WINDOW

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        signal = momentum(prices)
        return spread_weights((signal - signal.mean()) / signal.std(), prices.notna())


class BackFilled(BaseStrategy):
    """Leak: momentum on back-filled prices, equal-weighted over the symbols the filled frame has."""

    lookback = WINDOW

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        filled = prices.bfill()
        return spread_weights(momentum(filled), filled.notna())


class FittedMomentumConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    windows: tuple[int, ...] = (5, 20, 60)


class FittedMomentum(BaseStrategy):
    """Causal, with a fit: picks the momentum window with the best in-sample return on its training rows."""

    Config = FittedMomentumConfig
    lookback = 60
    label_horizon = 1

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.window = self.config.windows[0]
        self.fitted_on: list[pd.DatetimeIndex] = []

    def fit(self, train: pd.DataFrame) -> None:
        self.fitted_on.append(pd.DatetimeIndex(train.dropna(how="all").index))
        returns = train / train.shift(1) - 1.0
        best, best_score = self.window, -np.inf
        for window in self.config.windows:
            held = spread_weights(momentum(train, window), train.notna()).shift(1)
            score = float((held * returns).sum(axis=1).mean())
            if score > best_score:
                best, best_score = window, score
        self.window = best

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return spread_weights(momentum(prices, self.window), prices.notna())


class NoConfigMomentum:
    """A plain class, no BaseStrategy and a constructor without `config=`: what the Strategy API accepts."""

    lookback = WINDOW
    leverage_limit = 1.0

    def __init__(self) -> None:
        self.config: dict = {}  # nothing to configure

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        return spread_weights(momentum(prices), prices.notna())
