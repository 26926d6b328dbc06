"""The risk engine: measures and breakers per strategy portfolio, pure and synchronous.

`risk` holds the engine (portfolio VaR / ES by every method, drawdowns, volatility ratio, backtests, the
breakers and the commands they issue); `history` the price window shared by every strategy; `symbols`
the per-symbol incremental measures. The news calendar file is read outside (`qmp_risk.news`).
"""

from qmp_risk.engine.risk import (
    BREAKER_DRAWDOWN,
    BREAKER_NEWS,
    BREAKER_STALE,
    BREAKER_VOLATILITY,
    BatchRejected,
    BreakerCommand,
    RiskEngine,
    SnapshotRejected,
)

__all__ = ["BREAKER_DRAWDOWN", "BREAKER_NEWS", "BREAKER_STALE", "BREAKER_VOLATILITY", "BatchRejected",
           "BreakerCommand", "RiskEngine", "SnapshotRejected"]
