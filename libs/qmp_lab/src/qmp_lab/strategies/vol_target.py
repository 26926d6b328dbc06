"""Volatility-targeted, trend-filtered equal-weight basket: the reference strategy.

Each row t holds an equal-weight long basket of the symbols priced at t, scaled so that the basket's
realised volatility (zero-mean EWMA of daily basket returns, annualised) matches `target_volatility`,
with gross leverage capped at `max_leverage`. A trend filter keeps the book flat while the basket's
level is at or below its `trend_window`-row mean, which is what takes it out of a prolonged crash such
as 2007-2009 (the S&P 500 fell 57% peak to trough).

Strictly causal: only `shift(1)`, trailing `rolling` and `ewm` windows; no centred windows, no back
fill; row t depends only on rows ≤ t. The trend filter is exact on any window of `lookback` + 1 rows
(the basket level is rescaled by a constant, which the level / mean ratio ignores); the EWMA keeps
`3 × volatility_span` extra rows so that truncating the history changes it by well under 1%.
"""

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pandas as pd
from msgspec import Meta, Struct

from qmp_core.strategy import BaseStrategy


class VolatilityTargetConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    target_volatility: Annotated[float, Meta(gt=0.0, le=2.0)] = 0.10
    volatility_span: Annotated[int, Meta(ge=2)] = 20
    trend_window: Annotated[int, Meta(ge=1)] = 200
    max_leverage: Annotated[float, Meta(gt=0.0)] = 1.0
    periods_per_year: Annotated[float, Meta(gt=0.0)] = 252.0


class VolatilityTarget(BaseStrategy):
    """Equal-weight long basket at a target annual volatility (default 10%), flat below its trend."""

    Config = VolatilityTargetConfig
    config: VolatilityTargetConfig

    def __init__(self, config: Mapping[str, Any] | Struct | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.lookback = max(c.trend_window, c.volatility_span) + 3 * c.volatility_span
        self.leverage_limit = c.max_leverage

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Return weights with the shape of `prices`; row t uses rows ≤ t only."""
        c = self.config
        priced = prices.notna() & (prices > 0)
        returns = prices / prices.shift(1) - 1.0
        basket = returns.mean(axis=1, skipna=True)
        variance = basket.pow(2).ewm(span=c.volatility_span, min_periods=c.volatility_span).mean()
        volatility = np.sqrt(variance * c.periods_per_year)
        scale = (c.target_volatility / volatility.where(volatility > 0)).clip(upper=c.max_leverage)
        level = (1.0 + basket.fillna(0.0)).cumprod()
        trend = level.rolling(c.trend_window, min_periods=c.trend_window).mean()
        scale = scale.where(level > trend, 0.0).fillna(0.0)
        count = priced.sum(axis=1).astype(float)
        each = (scale / count.where(count > 0)).fillna(0.0)
        return priced.astype(float).mul(each, axis=0)
