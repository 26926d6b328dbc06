"""Reference strategies, loadable by import path (`qmp_lab.strategies.<module>:<Class>`).

- `vol_target:VolatilityTarget`: equal-weight long basket scaled to a volatility target, trend-filtered.
- `momentum:CrossSectionalMomentum`: long the past year's winners (skipping the last month), optionally
  short the losers.
- `mean_reversion:MeanReversion`: short-term reversal, dollar-neutral (or long-only) towards recent losers.
- `ridge:RidgeReturns`: a small ML model, ridge regression of next-day returns on lagged returns (numpy),
  trained with `fit` and refitted every `refit_every` rows.
"""
