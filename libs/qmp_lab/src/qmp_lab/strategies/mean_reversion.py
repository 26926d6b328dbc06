"""Short-term cross-sectional mean reversion (Lehmann 1990, Lo & MacKinlay 1990): buy the recent losers.

Row t scores each symbol priced at t by minus its `window`-row return, demeaned across the symbols
(symbols that fell more than the average get positive scores), divides by the cross-sectional standard
deviation, clips at ±`clip` and centres again. Weights are the scores scaled to gross `gross`: a
dollar-neutral book;
with `long_only`, only the positive scores are held (scaled to `gross`). Rows with fewer than
`min_symbols` scored symbols, or no dispersion, are flat.

Strictly causal: the only window is the trailing `window`-row return; `lookback = window`.
"""

from collections.abc import Mapping
from typing import Annotated, Any

import pandas as pd
from msgspec import Meta, Struct

from qmp_core.strategy import BaseStrategy


class MeanReversionConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    window: Annotated[int, Meta(ge=1)] = 5
    gross: Annotated[float, Meta(gt=0.0, le=2.0)] = 1.0
    clip: Annotated[float, Meta(gt=0.0)] = 3.0
    long_only: bool = False
    min_symbols: Annotated[int, Meta(ge=2)] = 4


class MeanReversion(BaseStrategy):
    """Dollar-neutral (or long-only) book tilted towards the symbols that fell most over `window` rows."""

    Config = MeanReversionConfig
    config: MeanReversionConfig

    def __init__(self, config: Mapping[str, Any] | Struct | None = None) -> None:
        super().__init__(config)
        self.lookback = self.config.window
        self.leverage_limit = self.config.gross

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        """Return weights with the shape of `prices`; row t uses rows t − window … t only."""
        c = self.config
        valid = prices.where(prices > 0)
        past = -(valid / valid.shift(c.window) - 1.0)
        centred = past.sub(past.mean(axis=1), axis=0)
        spread = past.std(axis=1, ddof=0)
        scores = centred.div(spread.where(spread > 0), axis=0).clip(-c.clip, c.clip)
        # Clipping can tilt the book: centre again so that the long-short book stays dollar-neutral.
        scores = scores.clip(lower=0.0) if c.long_only else scores.sub(scores.mean(axis=1), axis=0)
        enough = past.notna().sum(axis=1) >= c.min_symbols
        gross = scores.abs().sum(axis=1)
        scale = (c.gross / gross.where(gross > 0)).where(enough)
        return scores.mul(scale, axis=0).fillna(0.0)
