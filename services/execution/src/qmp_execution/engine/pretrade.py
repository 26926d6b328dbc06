"""What an order must pass before it is sent: the trading-state gate, weight checks, pre-trade checks.

The pre-trade checks are `PRE_TRADE_CHECKS`, in order: max notional per order, price band against the
previous close, available cash (a buy it cannot afford is cut to what it affords, or denied below the
minimum notional), order rate. Each is a function of the candidate order and the batch's `PreTrade`
context that returns a `Denial` (reason and reason code) or None; the first denial wins. The rate check
comes last because passing it spends a token. Adding a check is adding a function to the tuple.
"""

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from qmp_core.messages import (
    TradingState,
)
from qmp_core.strategy import InvalidWeights, check_frame
from qmp_core.trading_state import grows_exposure
from qmp_execution.engine.book import QTY_EPSILON
from qmp_execution.engine.codes import (
    CODE_HALTED,
    CODE_INSUFFICIENT_CASH,
    CODE_MAX_NOTIONAL,
    CODE_PRICE_BAND,
    CODE_RATE_LIMIT,
    CODE_REDUCING,
    WEIGHT_TOLERANCE,
)
from qmp_execution.engine.config import EngineConfig
from qmp_execution.engine.stoploss import StopLoss


def gate(quantity: float, position: float, state: TradingState) -> tuple[float, str, str]:
    """Return (allowed signed quantity, denial reason, reason code); the reason is empty when allowed."""
    if state.status == "HALTED":
        return 0.0, f"HALTED: {state.reason or 'trading halted'}", CODE_HALTED
    if state.status == "REDUCING":
        if grows_exposure(quantity, position):
            why = state.reason or "reducing only"
            return 0.0, f"REDUCING: {why}; order would increase |position| {position:g}", CODE_REDUCING
        if abs(quantity) > abs(position):
            return -position, "", ""
    return quantity, "", ""


def checked_weights(weights: Any, prices: pd.DataFrame, leverage_limit: float) -> np.ndarray:
    """Return the last row of a strategy's weights as floats aligned with `prices`; raise InvalidWeights."""
    if isinstance(weights, pd.DataFrame):
        unknown = sorted(str(s) for s in weights.columns.difference(prices.columns))
        if unknown:
            raise InvalidWeights(f"weights for unknown symbols {unknown[:10]} (expected a subset of the universe)")
    frame = check_frame(weights, prices)
    try:
        row = frame.iloc[-1].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidWeights(f"weights must be finite numbers: {error}") from error
    bad = ~np.isfinite(row)
    if bad.any():
        shown = ", ".join(f"{prices.columns[i]}={row[i]}" for i in np.flatnonzero(bad)[:10])
        raise InvalidWeights(f"weights must be finite numbers, got {shown}")
    gross = float(np.abs(row).sum())
    if gross > leverage_limit + WEIGHT_TOLERANCE:
        raise InvalidWeights(f"gross weight {gross:.6g} exceeds the leverage limit {leverage_limit:.6g}")
    return row


class RateLimiter:
    """At most `limit` orders per `interval_ns` of clock time (0: no limit)."""

    def __init__(self, limit: int, interval_ns: int) -> None:
        self.limit = limit
        self.interval_ns = interval_ns
        self._times: deque[int] = deque()

    def allow(self, now_ns: int) -> bool:
        if self.limit <= 0:
            return True
        times = self._times
        while times and times[0] <= now_ns - self.interval_ns:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now_ns)
        return True


@dataclass
class Candidate:
    """An order before its checks: `quantity` as sized, `allowed` what the gate and the checks leave of it."""

    symbol: str
    row: int
    quantity: float
    price: float
    weight: float
    caps: list[str]  # what cut it (shown in the accepted order's reason)
    est_cost: float  # expected cost per unit of price (slippage and impact), for the cash check
    stop: StopLoss | None = None  # a stop-loss close
    allowed: float = 0.0


@dataclass(frozen=True)
class Denial:
    reason: str
    code: str


@dataclass
class PreTrade:
    """What the checks of one batch share; `available` falls as buys are accepted and rises with sells."""

    config: EngineConfig
    previous: Mapping[str, float]  # the previous close per symbol
    available: float
    fee: float
    now_ns: int
    rate: RateLimiter
    checks: tuple["PreTradeCheck", ...] = ()  # the checks this config turns on, in order (set after init)

    def __post_init__(self) -> None:
        # A check whose limit is off (0) could never deny: leaving it out keeps the per-order path short.
        self.checks = tuple(check for check in PRE_TRADE_CHECKS if _enabled(check, self.config))

    def commit(self, order: Candidate) -> None:
        """Account for an accepted order in the cash still available to the next ones."""
        if order.allowed > 0.0:
            self.available -= order.allowed * order.price * (1.0 + self.fee + order.est_cost)
        else:
            self.available += -order.allowed * order.price * (1.0 - self.fee - order.est_cost)


def max_notional(order: Candidate, ctx: PreTrade) -> Denial | None:
    limit = ctx.config.max_order_notional
    notional = abs(order.allowed) * order.price
    if limit > 0.0 and notional > limit:
        return Denial(f"{CODE_MAX_NOTIONAL}: notional {notional:,.0f} > max per order {limit:,.0f}",
                      CODE_MAX_NOTIONAL)
    return None


def price_band(order: Candidate, ctx: PreTrade) -> Denial | None:
    band, last = ctx.config.price_band, ctx.previous.get(order.symbol)
    if band > 0.0 and last and abs(order.price / last - 1.0) > band:
        return Denial(f"{CODE_PRICE_BAND}: price {order.price:g} is {order.price / last - 1.0:+.1%} from the "
                      f"previous close {last:g}, outside ±{band:.0%}", CODE_PRICE_BAND)
    return None


def available_cash(order: Candidate, ctx: PreTrade) -> Denial | None:
    if order.allowed <= 0.0:
        return None  # sells free cash
    config = ctx.config
    unit = order.price * (1.0 + ctx.fee + order.est_cost)
    if order.allowed * unit <= ctx.available:
        return None
    affordable = max(ctx.available, 0.0) / unit
    if config.lot_size > 0.0:
        affordable = math.floor(affordable / config.lot_size) * config.lot_size
    if affordable * order.price < max(config.min_order_notional, QTY_EPSILON):
        return Denial(f"{CODE_INSUFFICIENT_CASH}: buy of {order.allowed * unit:,.0f} with {ctx.available:,.0f} "
                      "available", CODE_INSUFFICIENT_CASH)
    order.allowed = affordable
    order.caps.append("available cash")
    return None


def order_rate(order: Candidate, ctx: PreTrade) -> Denial | None:
    if ctx.rate.allow(ctx.now_ns):
        return None
    return Denial(f"{CODE_RATE_LIMIT}: more than {ctx.config.max_order_rate} orders in "
                  f"{ctx.config.order_rate_interval_s:g}s", CODE_RATE_LIMIT)


PreTradeCheck = Callable[[Candidate, PreTrade], Denial | None]
PRE_TRADE_CHECKS: tuple[PreTradeCheck, ...] = (max_notional, price_band, available_cash, order_rate)


def _enabled(check: PreTradeCheck, config: EngineConfig) -> bool:
    limits = {max_notional: config.max_order_notional, price_band: config.price_band, order_rate: config.max_order_rate}
    return limits.get(check, 1) > 0


def pre_trade(order: Candidate, ctx: PreTrade) -> Denial | None:
    """Run the enabled checks in order; return the first denial, or None when the order (as `allowed`) may go."""
    for check in ctx.checks:
        denial = check(order, ctx)
        if denial is not None:
            return denial
    return None
