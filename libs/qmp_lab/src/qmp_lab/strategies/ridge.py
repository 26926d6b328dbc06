"""A small ML strategy: ridge regression of next-day returns on lagged returns, pooled across symbols.

Features at row t for a symbol: its last `lags` one-row returns (r_t, r_{t-1}, …), each standardised
by the symbol's trailing `vol_window`-row volatility, and the same for the cross-sectional average
return (the market). The label is the symbol's next return r_{t+1}, standardised the same way.
`fit(train)` solves ridge in closed form, w = (XᵀX + λ n I)⁻¹ Xᵀy, with numpy only, on every (row, symbol)
of `train` whose features and label exist: it uses `train` and nothing else, so the caller decides what
the model may have seen (execution fits on its window of past rows; walk-forward fits on each training
split). `target_weights` predicts r_{t+1} for each row t and holds the predictions, demeaned across the
symbols and scaled to gross `gross` (long-only: the positive ones); it is flat before the first `fit`.

Causal given the fitted coefficients: row t uses rows t − lags − vol_window … t. Execution refits every
`refit_every` rows (on its window of `lookback` + 1 rows, which is the training set).
"""

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pandas as pd
from msgspec import Meta, Struct

from qmp_core.strategy import BaseStrategy


class RidgeConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    lags: Annotated[int, Meta(ge=1, le=20)] = 5
    vol_window: Annotated[int, Meta(ge=2)] = 20
    ridge: Annotated[float, Meta(ge=0.0)] = 1.0  # λ, per observation
    train_rows: Annotated[int, Meta(ge=30)] = 504
    refit_every: Annotated[int, Meta(ge=0)] = 21
    gross: Annotated[float, Meta(gt=0.0, le=2.0)] = 1.0
    long_only: bool = False
    min_symbols: Annotated[int, Meta(ge=2)] = 4


class RidgeReturns(BaseStrategy):
    """Pooled ridge on standardised lagged own and market returns; trades the cross-section of forecasts."""

    Config = RidgeConfig
    config: RidgeConfig

    def __init__(self, config: Mapping[str, Any] | Struct | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.lookback = max(c.train_rows, c.lags + c.vol_window + 1)
        self.leverage_limit = c.gross
        self.refit_every = c.refit_every
        self.coefficients: np.ndarray | None = None
        self.observations = 0

    def _features(self, prices: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (features (T, N, 2·lags), standardised returns (T, N), vol (T, N))."""
        c = self.config
        valid = prices.where(prices > 0)
        returns = (valid / valid.shift(1) - 1.0).to_numpy(dtype=np.float64)
        vol = (valid / valid.shift(1) - 1.0).rolling(c.vol_window, min_periods=c.vol_window).std().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            scaled = returns / np.where(vol > 0, vol, np.nan)
        market = _row_mean(scaled)[:, None]
        t, n = scaled.shape
        features = np.full((t, n, 2 * c.lags), np.nan)
        for k in range(c.lags):
            features[k:, :, k] = scaled[: t - k]
            features[k:, :, c.lags + k] = np.broadcast_to(market[: t - k], (t - k, n))
        return features, scaled, vol

    def fit(self, train: pd.DataFrame) -> None:
        """Fit the coefficients on `train` only (features at t, label at t + 1, both inside `train`)."""
        features, scaled, _ = self._features(train)
        x = features[:-1].reshape(-1, features.shape[2])
        y = scaled[1:].reshape(-1)
        keep = np.isfinite(x).all(axis=1) & np.isfinite(y)
        x, y = x[keep], y[keep]
        self.observations = int(y.shape[0])
        if self.observations < 2 * features.shape[2]:
            self.coefficients = None
            return
        gram = x.T @ x + self.config.ridge * self.observations * np.eye(x.shape[1])
        self.coefficients = np.linalg.solve(gram, x.T @ y)

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Return weights with the shape of `prices`; flat until fitted."""
        c = self.config
        weights = np.zeros(prices.shape)
        if self.coefficients is not None and prices.shape[1]:
            features, _, vol = self._features(prices)
            forecast = features @ self.coefficients * vol  # back to return units: favours confident names
            forecast = np.where(np.isfinite(forecast), forecast, np.nan)
            counted = np.isfinite(forecast).sum(axis=1)
            centred = forecast - _row_mean(forecast)[:, None]
            if c.long_only:
                centred = np.clip(centred, 0.0, None)
            centred = np.where(np.isfinite(centred), centred, 0.0)
            gross = np.abs(centred).sum(axis=1, keepdims=True)
            ok = (counted[:, None] >= c.min_symbols) & (gross > 0)
            weights = np.where(ok, centred * c.gross / np.where(gross > 0, gross, 1.0), 0.0)
        return pd.DataFrame(weights, index=prices.index, columns=prices.columns)


def _row_mean(values: np.ndarray) -> np.ndarray:
    """Return each row's mean of its finite entries (NaN for a row without any), without warnings."""
    finite = np.isfinite(values)
    count = finite.sum(axis=1)
    total = np.where(finite, values, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
