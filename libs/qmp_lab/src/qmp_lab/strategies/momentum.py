"""Cross-sectional momentum (Jegadeesh & Titman 1993): hold the winners of the last months, skip the last one.

Row t ranks the symbols priced at t by their return from t − `formation` to t − `skip` rows (12-1 month
momentum with the defaults on daily bars: the most recent month is skipped because short horizons
revert). The top `fraction` of the ranked symbols get equal long weights; with `long_short`, the bottom
`fraction` get equal short weights. The book's gross weight is `gross` (split evenly between the legs
when long-short); with fewer than `min_symbols` ranked symbols the row is flat.

Strictly causal: only `shift` by positive lags; row t depends on rows t − formation … t. The strategy
declares `lookback = formation`, so execution's window of lookback + 1 rows gives it exactly that.
"""

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
import pandas as pd
from msgspec import Meta, Struct

from qmp_core.strategy import BaseStrategy


class MomentumConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    formation: Annotated[int, Meta(ge=2)] = 252
    skip: Annotated[int, Meta(ge=0)] = 21
    fraction: Annotated[float, Meta(gt=0.0, le=0.5)] = 0.3
    long_short: bool = False
    gross: Annotated[float, Meta(gt=0.0, le=2.0)] = 1.0
    min_symbols: Annotated[int, Meta(ge=2)] = 4


class CrossSectionalMomentum(BaseStrategy):
    """Long the top `fraction` of symbols by formation-period return (short the bottom with `long_short`)."""

    Config = MomentumConfig
    config: MomentumConfig

    def __init__(self, config: Mapping[str, Any] | Struct | None = None) -> None:
        super().__init__(config)
        c = self.config
        if c.skip >= c.formation:
            raise ValueError(f"skip ({c.skip}) must be shorter than formation ({c.formation})")
        self.lookback = c.formation
        self.leverage_limit = c.gross

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Return weights with the shape of `prices`; row t uses rows t − formation … t only."""
        c = self.config
        valid = prices.where(prices > 0)
        signal = valid.shift(c.skip) / valid.shift(c.formation) - 1.0
        signal = signal.where(valid.notna())
        ranks = signal.rank(axis=1, pct=True, method="first")
        count = signal.notna().sum(axis=1)
        enough = count >= c.min_symbols
        longs = (ranks > 1.0 - c.fraction) & enough.to_numpy()[:, None]
        leg = c.gross / 2.0 if c.long_short else c.gross
        weights = _equal_weights(longs, leg)
        if c.long_short:
            weights -= _equal_weights((ranks <= c.fraction) & enough.to_numpy()[:, None], leg)
        return weights


def _equal_weights(chosen: pd.DataFrame, total: float) -> pd.DataFrame:
    """Return `total` split equally over each row's chosen symbols (0 elsewhere, and in rows with none)."""
    each = (total / chosen.sum(axis=1).replace(0, np.nan)).fillna(0.0)
    return chosen.astype(float).mul(each, axis=0)
