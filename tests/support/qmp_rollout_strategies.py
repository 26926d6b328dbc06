"""A strategy for the rollout system test: equal weights in every symbol, so the portfolio moves with the
market and the autumn 2008 crash shows in its daily losses. Importable by child processes when this folder
is on PYTHONPATH."""

import pandas as pd

from qmp_core.strategy import BaseStrategy

INVESTED = 0.98  # leave cash for fees


class EqualWeight(BaseStrategy):
    """Hold every priced symbol at the same weight, rebalanced every bar."""

    lookback = 1
    leverage_limit = 1.0

    def target_weights(self, prices: pd.DataFrame) -> pd.DataFrame:
        priced = prices.notna().astype(float)
        counts = priced.sum(axis=1).where(lambda n: n > 0)
        return priced.div(counts, axis=0).fillna(0.0) * INVESTED
