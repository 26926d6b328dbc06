"""The circuit breakers: their names on the bus and the conditions that trip and release them.

One statement of each condition, used by the risk service (which trips the breakers on every portfolio
snapshot) and by `qmp stress` (which says which breakers a scenario would trip), so the two can never
disagree about a boundary. Thresholds come from `qmp_core.config.RiskDefaults` unless configured.

- drawdown_24h: the drawdown over the trailing window above `drawdown_halt` halts the strategy;
- volatility: realized vol / its average above `vol_ratio_limit` cuts order size, released below
  `vol_ratio_release` (hysteresis);
- stop_loss:<symbol>: a position down `stop_loss` or more from its entry price is closed, once;
- stale_data: a held symbol without a bar for `stale_data_s` of event time halts;
- news: a high-impact news window makes the strategy defensive;
- account: the account a strategy trades from, over its trailing-window drawdown limit or its Expected
  Shortfall limit, halts every strategy of the account.
"""

BREAKER_DRAWDOWN = "drawdown_24h"
BREAKER_STALE = "stale_data"
BREAKER_VOLATILITY = "volatility"
BREAKER_NEWS = "news"
BREAKER_STOP_LOSS = "stop_loss"
BREAKER_ACCOUNT = "account"


def drawdown_trips(drawdown: float, drawdown_halt: float) -> bool:
    """Return True when the trailing-window drawdown halts the strategy (strictly above the threshold)."""
    return drawdown > drawdown_halt


def volatility_trips(ratio: float, vol_ratio_limit: float) -> bool:
    """Return True when the volatility ratio cuts order size (strictly above the limit)."""
    return ratio > vol_ratio_limit


def volatility_releases(ratio: float, vol_ratio_release: float) -> bool:
    """Return True when a tripped volatility breaker lets go (strictly below the release level)."""
    return ratio < vol_ratio_release


def stop_loss_trips(pnl_from_entry: float, stop_loss: float) -> bool:
    """Return True when a position's return from its entry price closes it (a loss of `stop_loss` or more)."""
    return pnl_from_entry <= -stop_loss


def stop_loss_breaker(symbol: str) -> str:
    """Return the breaker name of one position's stop-loss, as it appears in snapshots and events."""
    return f"{BREAKER_STOP_LOSS}:{symbol}"


def account_breach(drawdown_24h: float, es: float | None, drawdown_halt: float, es_limit: float) -> str:
    """Return why an account's measures halt its strategies ('' when they do not; a limit of 0 is off)."""
    if drawdown_halt > 0.0 and drawdown_trips(drawdown_24h, drawdown_halt):
        return f"drawdown {drawdown_24h:.2%} > {drawdown_halt:.2%}"
    if es_limit > 0.0 and es is not None and es > es_limit:
        return f"Expected Shortfall {es:.2%} > {es_limit:.2%}"
    return ""
