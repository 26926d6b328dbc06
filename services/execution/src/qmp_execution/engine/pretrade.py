"""What an order must pass before it is sent: the trading-state gate, weight checks, pre-trade checks.

The pre-trade checks are `PRE_TRADE_CHECKS`, in order: max notional and max quantity per order, price
band against the previous close, price collar against the mean close of a rolling window, restricted
symbols (only orders that reduce |position|), available cash (a buy it cannot afford is cut to what it
affords, or denied below the minimum notional), max position per symbol and max gross exposure (both
judged on the order as cash left it, with the orders already accepted counted: RTS 6 Art. 15, SEC
15c3-5's credit limit), order rate. Each is a function of the candidate order and the batch's `PreTrade`
context that returns a `Denial` (reason and reason code) or None; the first denial wins. The rate check
comes last because passing it spends a token. A limit of 0 is off and its check is not run. Adding a
check is adding a function to the tuple.
"""

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
    CODE_MAX_GROSS_EXPOSURE,
    CODE_MAX_NOTIONAL,
    CODE_MAX_POSITION,
    CODE_MAX_QUANTITY,
    CODE_PRICE_BAND,
    CODE_PRICE_COLLAR,
    CODE_RATE_LIMIT,
    CODE_REDUCING,
    CODE_RESTRICTED,
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
    # Where each symbol's position goes once its working orders fill (position + signed remaining), and
    # a price to value it at: what the exposure limits judge. Only built when one of them is on.
    exposure: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    gross: float = 0.0  # Σ |exposure| × mark
    reference: Mapping[str, float] = field(default_factory=dict)  # the price collar's mean close per symbol
    checks: tuple["PreTradeCheck", ...] = ()  # the checks this config turns on, in order (set after init)
    tracking: bool = False  # a check judges exposure: accepted orders are added to it

    def __post_init__(self) -> None:
        # A check whose limit is off (0) could never deny: leaving it out keeps the per-order path short.
        self.checks = tuple(check for check in PRE_TRADE_CHECKS if _enabled(check, self.config))
        self.tracking = tracks_exposure(self.config)
        self.gross = math.fsum(abs(q) * self.marks.get(s, 0.0) for s, q in self.exposure.items())

    def commit(self, order: Candidate) -> None:
        """Account for an accepted order in the cash and the exposure left to the next ones."""
        if order.allowed > 0.0:
            self.available -= order.allowed * order.price * (1.0 + self.fee + order.est_cost)
        else:
            self.available += -order.allowed * order.price * (1.0 - self.fee - order.est_cost)
        if self.tracking:
            self.exposure[order.symbol], self.gross = self.after(order)
            self.marks[order.symbol] = order.price  # what `after` valued it at

    def after(self, order: Candidate) -> tuple[float, float]:
        """Return (the symbol's exposure, the gross exposure) if the order were accepted as it stands."""
        before = self.exposure.get(order.symbol, 0.0)
        after = before + order.allowed
        gross = self.gross + abs(after) * order.price - abs(before) * self.marks.get(order.symbol, order.price)
        return after, gross


def max_notional(order: Candidate, ctx: PreTrade) -> Denial | None:
    limit = ctx.config.max_order_notional
    notional = abs(order.allowed) * order.price
    if limit > 0.0 and notional > limit:
        return Denial(f"{CODE_MAX_NOTIONAL}: notional {notional:,.0f} > max per order {limit:,.0f}",
                      CODE_MAX_NOTIONAL)
    return None


def max_quantity(order: Candidate, ctx: PreTrade) -> Denial | None:
    limit = ctx.config.max_order_quantity
    if abs(order.allowed) > limit:
        return Denial(f"{CODE_MAX_QUANTITY}: quantity {abs(order.allowed):,.6g} > max per order {limit:,.6g}",
                      CODE_MAX_QUANTITY)
    return None


def restricted(order: Candidate, ctx: PreTrade) -> Denial | None:
    if order.symbol in ctx.config.restricted_symbols and grows_exposure(order.allowed,
                                                                         ctx.exposure.get(order.symbol, 0.0)):
        return Denial(f"{CODE_RESTRICTED}: {order.symbol} is restricted; only orders that reduce |position| go",
                      CODE_RESTRICTED)
    return None


def max_position(order: Candidate, ctx: PreTrade) -> Denial | None:
    limit = ctx.config.max_position_notional
    before = ctx.exposure.get(order.symbol, 0.0)
    after, _ = ctx.after(order)
    value = abs(after) * order.price
    if value > limit and abs(after) > abs(before):
        return Denial(f"{CODE_MAX_POSITION}: {order.symbol} position would be {value:,.0f} > max {limit:,.0f}",
                      CODE_MAX_POSITION)
    return None


def max_gross_exposure(order: Candidate, ctx: PreTrade) -> Denial | None:
    limit = ctx.config.max_gross_exposure
    _, gross = ctx.after(order)
    if gross > limit and gross > ctx.gross:
        return Denial(f"{CODE_MAX_GROSS_EXPOSURE}: gross exposure would be {gross:,.0f} > credit limit "
                      f"{limit:,.0f}", CODE_MAX_GROSS_EXPOSURE)
    return None


def price_band(order: Candidate, ctx: PreTrade) -> Denial | None:
    band, last = ctx.config.price_band, ctx.previous.get(order.symbol)
    if band > 0.0 and last and abs(order.price / last - 1.0) > band:
        return Denial(f"{CODE_PRICE_BAND}: price {order.price:g} is {order.price / last - 1.0:+.1%} from the "
                      f"previous close {last:g}, outside ±{band:.0%}", CODE_PRICE_BAND)
    return None


def price_collar(order: Candidate, ctx: PreTrade) -> Denial | None:
    collar, reference = ctx.config.price_collar, ctx.reference.get(order.symbol)
    if reference and abs(order.price / reference - 1.0) > collar:
        return Denial(f"{CODE_PRICE_COLLAR}: price {order.price:g} is {order.price / reference - 1.0:+.1%} from the "
                      f"mean close of the last {ctx.config.price_collar_bars} bars {reference:g}, outside "
                      f"±{collar:.0%}", CODE_PRICE_COLLAR)
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
PRE_TRADE_CHECKS: tuple[PreTradeCheck, ...] = (max_notional, max_quantity, price_band, price_collar, restricted,
                                                available_cash, max_position, max_gross_exposure, order_rate)


def _enabled(check: PreTradeCheck, config: EngineConfig) -> bool:
    limits = {max_notional: config.max_order_notional, max_quantity: config.max_order_quantity,
              price_band: config.price_band, price_collar: config.price_collar,
              restricted: len(config.restricted_symbols),
              max_position: config.max_position_notional, max_gross_exposure: config.max_gross_exposure,
              order_rate: config.max_order_rate}
    return limits.get(check, 1) > 0


def tracks_exposure(config: EngineConfig) -> bool:
    """Return whether a check needs the exposure of the book (positions and working orders) to judge."""
    return bool(config.max_position_notional or config.max_gross_exposure or config.restricted_symbols)


def pre_trade(order: Candidate, ctx: PreTrade) -> Denial | None:
    """Run the enabled checks in order; return the first denial, or None when the order (as `allowed`) may go."""
    for check in ctx.checks:
        denial = check(order, ctx)
        if denial is not None:
            return denial
    return None
