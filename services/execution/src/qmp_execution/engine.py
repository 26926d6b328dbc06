"""Execution engine: strategies → target weights → sized, checked orders → paper fills → books. No I/O.

Per batch and per hosted strategy (each with its own id, capital, book, window and error state):
1. the strategy's window takes the batch's closes and volumes (a missing symbol carries its close);
2. the effective TradingState acts on working orders first: HALTED cancels them all, REDUCING cancels
   those that would grow |position| (cancels always pass);
3. once the window holds `lookback` + 1 rows, the strategy is called on it (`fit` on the first full
   window, again every `refit_every` batches when the strategy declares it) and its last row checked:
   finite, Σ|w| within its leverage limit, known symbols. A strategy that raises or returns bad weights
   is stopped (it keeps its positions; its working orders are cancelled; its implied orders, or a zero
   order per symbol, are denied with STRATEGY_ERROR) and the other strategies go on;
4. sizing (vectorised over the batch's symbols): target shares = w × equity × allocation ×
   size_multiplier × es_scale / close, where es_scale ≤ 1 keeps the projected 99% ES within the
   strategy's ES budget (from its latest RiskSnapshot, first key of `es_keys` present, scaled by target
   over current gross exposure); order = target − position (a working order on the symbol keeps working
   while the target wants at least as much; it is replaced when it would overshoot or go the wrong way),
   capped at max_order_fraction × equity and
   at participation_limit × ADV, rounded to the lot, skipped below the minimum notional;
5. gating: HALTED denies every new order, REDUCING lets only reductions of |position| through (clipped
   at flat); then pre-trade checks as NautilusTrader's risk engine: max notional per order, price band
   against the previous close, order rate (clock time), available cash (sells first; a buy larger than
   the cash is cut to what it affords, denied when that is below the minimum notional). Denials are
   OrderDenied events with a reason code; accepted orders carry how they were sized;
6. the paper broker (`paper.py`) fills working orders against the bar: volume limit, latency, dynamic
   slippage (`slippage.py`), fees; partial fills go on over the next bars.

Stop-loss (a risk `ClosePosition`, `on_close_position`): from the strategy's next batch the symbol's target
is 0 whatever its weight, until the position is flat; then the strategy's weights apply again (it may
re-enter). The close is the whole position in one order, free of the sizing caps (max_order_fraction,
participation limit, lot, minimum notional: they size entries, and a partial stop would leave the loss
open), checked first, with reason "stop-loss: ..." and reason code STOP_LOSS. It goes through the gate like
any order: REDUCING lets it through (it shrinks exposure); HALTED denies it (code HALTED) and cancels it
while working, and the stop stays in force, so the close goes out on the first batch after the resume. A
ClosePosition is applied once per command id; one for a strategy not hosted, a symbol not held, or a
position that has changed side since, is ignored and logged. The stop-losses in force travel in the
PortfolioSnapshot (`stop_losses`), so a restart restores them with the book; the service acknowledges a
ClosePosition only once a snapshot holding it is on the bus (handlers.StopLossAcks).

Ids are deterministic: order `<strategy>-<ts_event>-<symbol>`, fill `<order_id>-f<n>`. A batch whose
ts_event is not after the last processed one is not traded again: the same one returns the cached result
(a redelivery re-publishes the same messages, deduplicated downstream), an older one returns nothing.
"""

import dataclasses
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pandas as pd
from msgspec import Meta, Struct

from qmp_core import subjects
from qmp_core.clock import NS_PER_DAY, NS_PER_SECOND, Clock
from qmp_core.messages import (
    BarBatch,
    ClosePosition,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderEvent,
    PortfolioSnapshot,
    RiskSnapshot,
    Side,
    StopLossInForce,
    TradingState,
)
from qmp_core.strategy import InvalidWeights, Strategy, check_frame
from qmp_core.trading_state import ControlEntries, grows_exposure
from qmp_core.validation import ValidatedBatch, merge_chunks, validate_batch
from qmp_execution.adapters import OrderAck
from qmp_execution.book import QTY_EPSILON, Portfolio, Working
from qmp_execution.paper import Market, PaperBroker, PaperConfig
from qmp_execution.slippage import BPS, SlippageConfig, SlippageModel

log = logging.getLogger(__name__)

WEIGHT_TOLERANCE = 1e-9

CODE_HALTED = "HALTED"
CODE_REDUCING = "REDUCING"
CODE_STRATEGY_ERROR = "STRATEGY_ERROR"
CODE_MAX_NOTIONAL = "MAX_NOTIONAL"
CODE_PRICE_BAND = "PRICE_BAND"
CODE_RATE_LIMIT = "RATE_LIMIT"
CODE_INSUFFICIENT_CASH = "INSUFFICIENT_CASH"
CODE_REPLACED = "REPLACED"
CODE_BROKER_REJECTED = "BROKER_REJECTED"
CODE_STOP_LOSS = "STOP_LOSS"

# How many ClosePosition command ids are remembered to recognise a redelivery.
CLOSE_IDS_KEPT = 4096

DEFAULT_ES_KEYS = ("evt_99", "student_t_99", "historical_99")


class EngineConfig(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sizing, risk-budget, pre-trade and paper-broker parameters; one per execution service."""

    initial_capital: Annotated[float, Meta(gt=0.0)] = 1_000_000.0
    capital: dict[str, Annotated[float, Meta(gt=0.0)]] = {}  # per strategy id; others get initial_capital
    min_order_notional: Annotated[float, Meta(ge=0.0)] = 100.0
    lot_size: Annotated[float, Meta(ge=0.0)] = 0.0  # 0 trades fractional shares
    vol_window: Annotated[int, Meta(ge=2)] = 20
    adv_window: Annotated[int, Meta(ge=1)] = 20
    default_daily_vol: Annotated[float, Meta(gt=0.0)] = 0.02
    # An order may be at most this fraction of the symbol's average daily volume (0: no limit).
    participation_limit: Annotated[float, Meta(ge=0.0)] = 0.1
    # Risk budget: the largest 99% ES (fraction of equity) sizing may lead to (0: no budget).
    es_budget: Annotated[float, Meta(ge=0.0)] = 0.05
    es_budgets: dict[str, Annotated[float, Meta(ge=0.0)]] = {}  # per strategy id
    es_keys: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ES_KEYS))  # first present is used
    # Pre-trade checks (0 turns a check off).
    max_order_notional: Annotated[float, Meta(ge=0.0)] = 0.0
    max_order_rate: Annotated[int, Meta(ge=0)] = 10_000
    order_rate_interval_s: Annotated[float, Meta(gt=0.0)] = 1.0
    price_band: Annotated[float, Meta(ge=0.0)] = 0.5
    cash_borrow_limit: Annotated[float, Meta(ge=0.0)] = 0.0  # fraction of equity cash may go below zero
    paper: PaperConfig = PaperConfig()
    # "paper" fills against bars here; "external" leaves accepted orders working until `apply_acks`.
    broker: Literal["paper", "external"] = "paper"


@dataclass(frozen=True)
class StrategyResult:
    """One strategy's order events and fills for a batch, and its book after it."""

    strategy: str
    ts_event: int
    decisions: list[OrderEvent]
    fills: list[Fill]
    snapshot: PortfolioSnapshot
    error: str | None = None
    replayed: bool = False
    es_scale: float = 1.0


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one batch for every hosted strategy; `complete` is False while chunks are pending."""

    ts_event: int
    results: dict[str, StrategyResult]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True


# ---------------------------------------------------------------- price window
class PriceWindow:
    """The last `capacity` rows of closes and volumes per symbol, in ring buffers.

    A symbol missing from a batch keeps its last close (its volume that row is NaN); a symbol first seen
    later has NaN closes in the rows before it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"price window capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.symbols: list[str] = []
        self._column: dict[str, int] = {}
        self._close = np.full((capacity, 16), np.nan)
        self._volume = np.full((capacity, 16), np.nan)
        self._ts = np.zeros(capacity, dtype=np.int64)
        self._count = 0
        self._head = 0

    def __len__(self) -> int:
        return self._count

    @property
    def last_ts(self) -> int:
        return int(self._ts[(self._head - 1) % self.capacity]) if self._count else 0

    def columns(self, symbols: Sequence[str]) -> np.ndarray:
        """Return the column of each symbol (adding unknown ones)."""
        column = self._column
        for symbol in symbols:
            if symbol not in column:
                column[symbol] = len(self.symbols)
                self.symbols.append(symbol)
        width = len(self.symbols)
        if width > self._close.shape[1]:
            grow = max(width, 2 * self._close.shape[1])
            for name in ("_close", "_volume"):
                old = getattr(self, name)
                new = np.full((self.capacity, grow), np.nan)
                new[:, : old.shape[1]] = old
                setattr(self, name, new)
        return np.fromiter((column[s] for s in symbols), dtype=np.int64, count=len(symbols))

    def append(self, ts_event: int, symbols: Sequence[str], closes: np.ndarray,
               volumes: np.ndarray | None = None) -> None:
        """Add one row; ignored unless ts_event is after the last row (a replayed batch adds nothing)."""
        if self._count and ts_event <= self.last_ts:
            return
        cols = self.columns(symbols)
        row = self._head
        if self._count:
            self._close[row] = self._close[(row - 1) % self.capacity]
        else:
            self._close[row] = np.nan
        self._close[row, cols] = closes
        self._volume[row] = np.nan
        if volumes is not None:
            self._volume[row, cols] = volumes
        self._ts[row] = ts_event
        self._head = (row + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def _order(self, rows: int | None) -> np.ndarray:
        count = self._count if rows is None else min(rows, self._count)
        return (self._head - count + np.arange(count)) % self.capacity

    def closes(self, rows: int | None = None) -> np.ndarray:
        """Return the last `rows` rows of closes (oldest first), one column per symbol seen."""
        return self._close[self._order(rows), : len(self.symbols)]

    def volumes(self, rows: int | None = None) -> np.ndarray:
        return self._volume[self._order(rows), : len(self.symbols)]

    def timestamps(self, rows: int | None = None) -> np.ndarray:
        return self._ts[self._order(rows)]

    def frame(self, rows: int | None = None) -> pd.DataFrame:
        """Return the last `rows` rows (all by default) as a DataFrame: UTC timestamps × symbols."""
        index = pd.DatetimeIndex(pd.to_datetime(self.timestamps(rows), unit="ns", utc=True))
        return pd.DataFrame(self.closes(rows).copy(), index=index, columns=list(self.symbols))

    def bars_per_day(self) -> float:
        """Return how many bars make a day, from the median spacing of the window's timestamps."""
        stamps = self.timestamps()
        if stamps.size < 2:
            return 1.0
        spacing = float(np.median(np.diff(stamps)))
        return NS_PER_DAY / spacing if spacing > 0 else 1.0


def daily_vols(closes: np.ndarray, window: int) -> np.ndarray:
    """Return per column the sample std of the last `window` log returns; NaN with fewer than 2 returns."""
    tail = closes[-(window + 1) :]
    if tail.shape[0] < 3:
        return np.full(tail.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = np.diff(np.log(tail), axis=0)
    finite = np.isfinite(returns)
    count = finite.sum(axis=0)
    safe = np.where(finite, returns, 0.0)
    mean = safe.sum(axis=0) / np.maximum(count, 1)
    squares = np.where(finite, (returns - mean) ** 2, 0.0).sum(axis=0)
    return np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), np.nan)


def average_daily_volume(volumes: np.ndarray, window: int, bars_per_day: float) -> np.ndarray:
    """Return per column the mean positive bar volume of the last `window` rows × bars per day; NaN if none."""
    tail = volumes[-window:]
    known = np.isfinite(tail) & (tail > 0.0)
    count = known.sum(axis=0)
    total = np.where(known, tail, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1) * bars_per_day, np.nan)


# ---------------------------------------------------------------- gating, checks
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
class StopLoss:
    """A risk stop-loss in force on one symbol: its target is 0 until the position is flat."""

    command_id: str
    symbol: str
    reason: str  # "stop-loss: <detail> (command <id>)", carried by the close order
    ts_event: int  # of the ClosePosition
    order_id: str = ""  # the close order once accepted

    def to_message(self) -> StopLossInForce:
        return StopLossInForce(command_id=self.command_id, symbol=self.symbol, reason=self.reason,
                               ts_event=self.ts_event, order_id=self.order_id)

    @classmethod
    def from_message(cls, stop: StopLossInForce) -> "StopLoss":
        return cls(command_id=stop.command_id, symbol=stop.symbol, reason=stop.reason, ts_event=stop.ts_event,
                   order_id=stop.order_id)


@dataclass
class _Candidate:
    symbol: str
    row: int
    quantity: float
    price: float
    weight: float
    caps: list[str]
    est_cost: float
    stop: StopLoss | None = None


# ---------------------------------------------------------------- strategy host
class StrategyHost:
    """One strategy with its own capital, window, book, paper broker, risk view and error state."""

    def __init__(self, strategy_id: str, strategy: Strategy, config: EngineConfig, clock: Clock) -> None:
        self.strategy_id = subjects.check_token(strategy_id, "strategy id")
        self.strategy = strategy
        self.config = config
        self.clock = clock
        self.capital = config.capital.get(strategy_id, config.initial_capital)
        self.es_budget = config.es_budgets.get(strategy_id, config.es_budget)
        self.window = PriceWindow(max(strategy.lookback, config.vol_window, config.adv_window) + 1)
        self.portfolio = Portfolio(strategy=strategy_id, cash=self.capital)
        self.broker = PaperBroker(strategy_id, config.paper)
        self.rate = RateLimiter(config.max_order_rate, round(config.order_rate_interval_s * NS_PER_SECOND))
        self.risk: RiskSnapshot | None = None
        self.es_scale = 1.0
        self.es_key = ""  # the risk snapshot's ES key (method_level) that scaled the last batch down, "" if none
        self.stop_losses: dict[str, StopLoss] = {}
        self.error: str | None = None
        self.error_at: int = 0
        self._fitted_at: int | None = None
        self._batches = 0
        self._last: StrategyResult | None = None
        self._last_market: Market | None = None

    @property
    def running(self) -> bool:
        return self.error is None

    def restore(self, snapshot: PortfolioSnapshot) -> None:
        """Take the book of a snapshot (recovery after a restart); the window is rebuilt by `warm`."""
        if snapshot.strategy != self.strategy_id:
            raise ValueError(f"snapshot of {snapshot.strategy!r} given to strategy {self.strategy_id!r}")
        self.portfolio = Portfolio.from_snapshot(snapshot)
        self.stop_losses = {stop.symbol: StopLoss.from_message(stop) for stop in snapshot.stop_losses}
        self._last = None

    def snapshot(self) -> PortfolioSnapshot:
        """Return the book with the stop-losses in force (what recovery after a restart needs)."""
        stops = [self.stop_losses[symbol].to_message() for symbol in sorted(self.stop_losses)]
        return msgspec.structs.replace(self.portfolio.to_snapshot(), stop_losses=stops)

    def warm(self, batch: ValidatedBatch) -> None:
        """Feed the window with a batch already traded before a restart; no orders, no book change."""
        if batch.ts_event <= self.portfolio.last_ts:
            self.window.append(batch.ts_event, batch.symbols, batch.close, batch.volume)

    def on_risk(self, snapshot: RiskSnapshot) -> None:
        if self.risk is None or snapshot.ts_event >= self.risk.ts_event:
            self.risk = snapshot

    def on_close_position(self, command: ClosePosition) -> bool:
        """Put a stop-loss on the symbol: target 0 from the next batch until flat. False if ignored."""
        symbol = command.symbol
        position = self.portfolio.positions.get(symbol, 0.0)
        about = {"strategy": self.strategy_id, "symbol": symbol, "command_id": command.command_id,
                 "position": position, "close_quantity": command.quantity}
        if abs(position) <= QTY_EPSILON:
            log.info("stop-loss ignored: symbol not held", extra=about)
            return False
        if command.quantity * position > 0.0:
            # Risk asks to sell a long (buy a short): the same sign means the position it saw is gone.
            log.info("stop-loss ignored: the position has changed side since", extra=about)
            return False
        if symbol in self.stop_losses:
            log.info("stop-loss ignored: the symbol is already being closed",
                     extra=about | {"closing_for": self.stop_losses[symbol].command_id})
            return False
        detail = command.reason if command.reason.startswith("stop-loss") else f"stop-loss: {command.reason}"
        self.stop_losses[symbol] = StopLoss(command_id=command.command_id, symbol=symbol, ts_event=command.ts_event,
                                            reason=f"{detail} (command {command.command_id})")
        log.warning("stop-loss: closing the position on the next batch", extra=about | {"reason": command.reason})
        return True

    def on_batch(self, batch: ValidatedBatch, seq: int, state: TradingState) -> StrategyResult | None:
        """Trade one batch; the last batch again returns its cached result, an older one None."""
        book = self.portfolio
        if batch.ts_event <= book.last_ts:
            last = self._last
            if last is not None and last.ts_event == batch.ts_event:
                return StrategyResult(last.strategy, last.ts_event, last.decisions, last.fills, last.snapshot,
                                      last.error, replayed=True, es_scale=last.es_scale)
            return None
        previous = {s: book.prices[s] for s in batch.symbols if s in book.prices}
        self.window.append(batch.ts_event, batch.symbols, batch.close, batch.volume)
        book.mark(batch.symbols, batch.close)
        market = self._market(batch)
        decisions = self._cancel_for_state(state, batch.ts_event)
        closing, replaced, closes = self._stop_loss_orders(batch, market)
        decisions += replaced
        if self.running and len(self.window) > self.strategy.lookback:
            decisions += self._trade(batch, state, market, previous, closing, closes)
        elif closes:  # a stopped or warming-up strategy still closes on a stop-loss
            decisions += self._check(closes, state, batch.ts_event, book.equity(), previous, "")
        fills = self.broker.execute(book, market) if self.config.broker == "paper" else []
        self._last_market = market
        book.last_ts, book.last_seq = batch.ts_event, seq
        self._batches += 1
        self._last = StrategyResult(self.strategy_id, batch.ts_event, decisions, fills, self.snapshot(),
                                    self.error, es_scale=self.es_scale)
        return self._last

    def use_slippage(self, config: SlippageConfig) -> None:
        """Price the paper broker's next fills with other coefficients (e.g. a calibration)."""
        self.broker.model = SlippageModel(config)

    def apply_acks(self, acks: Sequence[OrderAck]) -> StrategyResult:
        """Book an external broker's answers to the last batch's orders; return (and cache) the new result.

        Fill ids stay `<order_id>-f<n>`; an order the broker rejected is withdrawn (OrderCanceled).
        """
        last = self._last
        if last is None:
            raise RuntimeError(f"{self.strategy_id}: broker answers with no batch traded")
        book, market = self.portfolio, self._last_market
        by_id = {w.order_id: w for w in book.working.values()}
        events, fills = list(last.decisions), list(last.fills)
        fee_rate = self.config.paper.fee_bps * BPS
        for ack in acks:
            order = by_id.get(ack.order_id)
            if order is None:
                continue
            row = market.index.get(order.symbol) if market is not None else None
            for answer in ack.fills:
                quantity = min(answer.quantity, order.remaining)
                if quantity <= QTY_EPSILON:
                    continue
                order.filled += quantity
                order.fills += 1
                direction = 1.0 if order.side == "BUY" else -1.0
                slippage = direction * (answer.price - order.price) / order.price / BPS
                fill = Fill(
                    strategy=self.strategy_id, order_id=order.order_id, fill_id=f"{order.order_id}-f{order.fills}",
                    symbol=order.symbol, side=order.side, quantity=quantity, price=answer.price,
                    arrival_price=order.price, slippage_bps=slippage,
                    fee=answer.fee or quantity * answer.price * fee_rate, ts_event=last.ts_event,
                    daily_vol=float(market.sigma[row]) if market is not None and row is not None else 0.0,
                    remaining=order.remaining,
                )
                book.apply(fill)
                fills.append(fill)
            if ack.status in ("rejected", "canceled") and order.remaining > QTY_EPSILON:
                code = CODE_BROKER_REJECTED
                events.append(self._cancel(order, last.ts_event, f"{code}: {ack.reason or ack.status}", code))
            elif order.remaining <= QTY_EPSILON * max(1.0, order.quantity):
                book.working.pop(order.symbol, None)
        self._last = dataclasses.replace(last, decisions=events, fills=fills, snapshot=self.snapshot())
        return self._last

    def _market(self, batch: ValidatedBatch) -> Market:
        window = self.window
        per_day = window.bars_per_day()
        cols = window.columns(batch.symbols)
        # Volatility per bar scaled to a day: the impact model's sigma is daily.
        sigma = daily_vols(window.closes(self.config.vol_window + 1), self.config.vol_window)[cols]
        sigma = np.where(np.isfinite(sigma), sigma * math.sqrt(per_day), self.config.default_daily_vol)
        adv = average_daily_volume(window.volumes(self.config.adv_window), self.config.adv_window, per_day)[cols]
        return Market(ts_event=batch.ts_event, symbols=batch.symbols, close=batch.close, volume=batch.volume,
                      sigma=sigma, adv=adv, exec_days=1.0 / per_day,
                      index={s: i for i, s in enumerate(batch.symbols)})

    # ------------------------------------------------------------ working orders under the trading state
    def _cancel_for_state(self, state: TradingState, ts_event: int) -> list[OrderEvent]:
        book = self.portfolio
        events: list[OrderEvent] = []
        for symbol in sorted(book.working):
            order = book.working[symbol]
            position = book.positions.get(symbol, 0.0)
            stop = self.stop_losses.get(symbol)
            if not self.running and not (stop is not None and stop.order_id == order.order_id):
                code, why = CODE_STRATEGY_ERROR, f"{CODE_STRATEGY_ERROR}: {self.error}"
            elif state.status == "HALTED":
                code, why = CODE_HALTED, f"HALTED: {state.reason or 'trading halted'}"
            elif state.status == "REDUCING" and grows_exposure(1.0 if order.side == "BUY" else -1.0, position):
                why = f"REDUCING: {state.reason or 'reducing only'}; the working order grows |position|"
                code = CODE_REDUCING
            else:
                continue
            events.append(self._cancel(order, ts_event, why, code))
        return events

    def _cancel(self, order: Working, ts_event: int, reason: str, code: str) -> OrderCanceled:
        del self.portfolio.working[order.symbol]
        return OrderCanceled(strategy=self.strategy_id, order_id=order.order_id, symbol=order.symbol,
                             side=order.side, quantity=order.remaining, price=order.price, ts_event=ts_event,
                             reason=reason, reason_code=code, filled_quantity=order.filled)

    # ------------------------------------------------------------ stop-loss closes
    def _stop_loss_orders(self, batch: ValidatedBatch, market: Market) -> tuple[
        frozenset[str], list[OrderEvent], list[_Candidate]
    ]:
        """Release the stop-losses whose position is flat; return (symbols still closing, cancels, closes).

        A close already working keeps working; another working order on the symbol is cancelled, and a new
        close of the whole position is proposed.
        """
        if not self.stop_losses:
            return frozenset(), [], []
        book = self.portfolio
        closing: set[str] = set()
        events: list[OrderEvent] = []
        candidates: list[_Candidate] = []
        for symbol in sorted(self.stop_losses):
            stop = self.stop_losses[symbol]
            position = book.positions.get(symbol, 0.0)
            if abs(position) <= QTY_EPSILON:
                del self.stop_losses[symbol]
                log.info("stop-loss done: position flat", extra={"strategy": self.strategy_id, "symbol": symbol,
                                                                 "command_id": stop.command_id})
                continue
            closing.add(symbol)
            row = market.index.get(symbol)
            if row is None:  # not priced in this batch: the close waits for a bar of it
                continue
            working = book.working.get(symbol)
            if working is not None:
                if working.order_id == stop.order_id:
                    continue
                events.append(self._cancel(working, batch.ts_event, f"{CODE_STOP_LOSS}: replaced by the close; "
                                                                    f"{stop.reason}", CODE_STOP_LOSS))
            candidates.append(_Candidate(symbol, row, -position, float(batch.close[row]), 0.0, [], 0.0, stop))
        if candidates:
            rows = np.fromiter((c.row for c in candidates), dtype=np.int64, count=len(candidates))
            quantity = np.fromiter((c.quantity for c in candidates), dtype=np.float64, count=len(candidates))
            cost, _ = self.broker.model.costs(quantity, market.sigma[rows], market.adv[rows],
                                              np.full(len(candidates), market.exec_days))
            for candidate, est_cost in zip(candidates, cost.tolist(), strict=True):
                candidate.est_cost = est_cost
        return frozenset(closing), events, candidates

    # ------------------------------------------------------------ strategy → orders
    def _trade(self, batch: ValidatedBatch, state: TradingState, market: Market, previous: Mapping[str, float],
               closing: frozenset[str] = frozenset(), closes: Sequence[_Candidate] = ()) -> list[OrderEvent]:
        prices = self.window.frame(self.strategy.lookback + 1)
        row: np.ndarray | None = None
        try:
            self._fit(prices)
            raw = self.strategy.target_weights(prices)
            row = _last_row(raw, prices)
            weights = checked_weights(raw, prices, self.strategy.leverage_limit)
        except Exception as error:  # a plug-in may raise anything; it must not take execution down
            events = self._stop(batch, state, error, row, prices.columns, closing)
            return events + self._check(list(closes), state, batch.ts_event, self.portfolio.equity(), previous, "")
        if closing:  # their target is 0: they count neither in the gross exposure nor in the orders
            weights = np.where(prices.columns.isin(list(closing)), 0.0, weights)
        cols = self.window.columns(batch.symbols)
        targets = weights[cols] if len(weights) else np.zeros(len(batch.symbols))
        return self._orders(batch, targets, float(np.abs(weights).sum()), state, market, previous, closing, closes)

    def _fit(self, prices: pd.DataFrame) -> None:
        """Let a model strategy train on the window (rows ≤ now only): once, then every `refit_every` batches."""
        fit = getattr(self.strategy, "fit", None)
        if not callable(fit):
            return
        every = int(getattr(self.strategy, "refit_every", 0) or 0)
        if self._fitted_at is None or (every > 0 and self._batches - self._fitted_at >= every):
            fit(prices)
            self._fitted_at = self._batches

    def _risk_scale(self, target_gross: float, equity: float) -> tuple[float, str, str]:
        """Return (scale ≤ 1, note, the ES key that bound or "") keeping the projected 99% ES within the budget."""
        snapshot = self.risk
        if self.es_budget <= 0.0 or snapshot is None or equity <= 0.0 or target_gross <= 0.0:
            return 1.0, "", ""
        key = next((k for k in self.config.es_keys
                    if math.isfinite(snapshot.es.get(k, math.nan)) and snapshot.es[k] > 0.0), None)
        current_gross = self.portfolio.gross_exposure() / equity
        if key is None or current_gross <= 1e-9:
            return 1.0, "", ""
        projected = snapshot.es[key] / current_gross * target_gross
        if projected <= self.es_budget:
            return 1.0, "", ""
        return self.es_budget / projected, f"ES {key} projected {projected:.2%} > budget {self.es_budget:.2%}", key

    def _orders(self, batch: ValidatedBatch, weights: np.ndarray, gross: float, state: TradingState,
                market: Market, previous: Mapping[str, float], closing: frozenset[str] = frozenset(),
                closes: Sequence[_Candidate] = ()) -> list[OrderEvent]:
        config, book = self.config, self.portfolio
        symbols = batch.symbols
        n = len(symbols)
        price = batch.close
        equity = book.equity()
        size = state.allocation * state.size_multiplier
        self.es_scale, es_note, self.es_key = self._risk_scale(gross * size, equity)
        scale = equity * size * self.es_scale
        position = np.fromiter((book.positions.get(s, 0.0) for s in symbols), dtype=np.float64, count=n)
        working = np.fromiter((book.working[s].signed_remaining if s in book.working else 0.0 for s in symbols),
                              dtype=np.float64, count=n)
        target = weights * scale / price
        floor = max(config.min_order_notional, QTY_EPSILON)
        need = target - position
        # A working order keeps working while the target still wants at least as much in its direction
        # (the rest is traded once it is done: re-issuing would restart its latency every bar); it is
        # replaced when it would overshoot the target or go the wrong way.
        closed = np.fromiter((s in closing for s in symbols), dtype=bool, count=n)
        has = (working != 0.0) & ~closed
        keep = has & ((np.abs(need - working) * price < floor)
                      | ((np.sign(need) == np.sign(working)) & (np.abs(need) > np.abs(working))))
        replace = has & ~keep
        events: list[OrderEvent] = []
        for i in np.flatnonzero(replace).tolist():
            events.append(self._cancel(book.working[symbols[i]], batch.ts_event,
                                       "REPLACED: the working order overshoots the new target", CODE_REPLACED))
        quantity = np.where(keep, 0.0, need)
        cap_fraction = state.max_order_fraction * max(equity, 0.0) / price
        cap_volume = np.full(n, np.inf)
        if config.participation_limit > 0.0:
            cap_volume = np.where(np.isfinite(market.adv), config.participation_limit * market.adv, np.inf)
        cap = np.minimum(cap_fraction, cap_volume)
        capped = np.abs(quantity) > cap
        quantity = np.clip(quantity, -cap, cap)
        if config.lot_size > 0.0:
            quantity = np.trunc(quantity / config.lot_size) * config.lot_size
        trade = (np.abs(quantity) * price >= floor) & ~closed
        est_cost, _ = self.broker.model.costs(quantity, market.sigma, market.adv,
                                              np.full(n, market.exec_days))
        candidates = [
            _Candidate(symbols[i], i, float(quantity[i]), float(price[i]), float(weights[i]),
                       (["max_order_fraction" if cap_fraction[i] <= cap_volume[i] else "participation_limit"]
                        if capped[i] else []), float(est_cost[i]))
            for i in np.flatnonzero(trade).tolist()
        ]
        candidates += closes
        context = (f"target w={{w:+.4f}} × equity {equity:,.0f} × allocation {state.allocation:.2f} × size "
                   f"{state.size_multiplier:.2f} × ES scale {self.es_scale:.3f}")
        if es_note:
            context += f" ({es_note})"
        decisions = self._check(candidates, state, batch.ts_event, equity, previous, context)
        decisions.sort(key=lambda d: d.symbol)
        return events + decisions

    def _check(self, candidates: list[_Candidate], state: TradingState, ts_event: int, equity: float,
               previous: Mapping[str, float], context: str) -> list[OrderEvent]:
        """Gate and pre-trade-check candidates, sells first (they free cash); accept into the working book."""
        config, book = self.config, self.portfolio
        fee = config.paper.fee_bps * BPS
        committed = math.fsum(w.remaining * w.price * (1.0 + fee) for w in book.working.values() if w.side == "BUY")
        available = book.cash - committed + config.cash_borrow_limit * max(equity, 0.0)
        now = self.clock.now_ns()
        decisions: list[OrderEvent] = []
        # Stop-loss closes first (the rate limit must not hold them back), then sells (they free cash).
        for c in sorted(candidates, key=lambda c: (c.stop is None, c.quantity > 0.0, c.symbol)):
            position = book.positions.get(c.symbol, 0.0)
            allowed, reason, code = gate(c.quantity, position, state)
            if not reason and allowed != c.quantity:
                c.caps.append("reducing (clipped at flat)")
            notional = abs(allowed) * c.price
            last = previous.get(c.symbol)
            if reason:
                pass
            elif config.max_order_notional > 0.0 and notional > config.max_order_notional:
                reason, code = (f"{CODE_MAX_NOTIONAL}: notional {notional:,.0f} > max per order "
                                f"{config.max_order_notional:,.0f}"), CODE_MAX_NOTIONAL
            elif config.price_band > 0.0 and last and abs(c.price / last - 1.0) > config.price_band:
                reason, code = (f"{CODE_PRICE_BAND}: price {c.price:g} is {c.price / last - 1.0:+.1%} from the "
                                f"previous close {last:g}, outside ±{config.price_band:.0%}"), CODE_PRICE_BAND
            elif allowed > 0.0:
                unit = c.price * (1.0 + fee + c.est_cost)
                if allowed * unit > available:
                    affordable = max(available, 0.0) / unit
                    if config.lot_size > 0.0:
                        affordable = math.floor(affordable / config.lot_size) * config.lot_size
                    if affordable * c.price < max(config.min_order_notional, QTY_EPSILON):
                        reason, code = (f"{CODE_INSUFFICIENT_CASH}: buy of {allowed * unit:,.0f} with "
                                        f"{available:,.0f} available"), CODE_INSUFFICIENT_CASH
                    else:
                        allowed = affordable
                        c.caps.append("available cash")
            if not reason and not self.rate.allow(now):
                reason, code = (f"{CODE_RATE_LIMIT}: more than {config.max_order_rate} orders in "
                                f"{config.order_rate_interval_s:g}s"), CODE_RATE_LIMIT
            if reason:
                if c.stop is not None:
                    reason = f"{reason}; {c.stop.reason}"
                decisions.append(self._denied(ts_event, c.symbol, allowed or c.quantity, c.price, reason, code))
                continue
            if allowed > 0.0:
                available -= allowed * c.price * (1.0 + fee + c.est_cost)
            else:
                available += -allowed * c.price * (1.0 - fee - c.est_cost)
            decisions.append(self._accept(ts_event, c, allowed, context))
        return decisions

    def _accept(self, ts_event: int, c: _Candidate, quantity: float, context: str) -> OrderAccepted:
        order_id = self._order_id(ts_event, c.symbol)
        side = _side(quantity)
        self.portfolio.working[c.symbol] = Working(order_id=order_id, symbol=c.symbol, side=side,
                                                   quantity=abs(quantity), price=c.price, ts_event=ts_event)
        self.portfolio.orders_total += 1
        caps = f"; capped by {', '.join(c.caps)}" if c.caps else ""
        if c.stop is not None:
            c.stop.order_id = order_id
            return OrderAccepted(strategy=self.strategy_id, order_id=order_id, symbol=c.symbol, side=side,
                                 quantity=abs(quantity), price=c.price, ts_event=ts_event,
                                 reason=c.stop.reason + caps, reason_code=CODE_STOP_LOSS)
        return OrderAccepted(strategy=self.strategy_id, order_id=order_id, symbol=c.symbol, side=side,
                             quantity=abs(quantity), price=c.price, ts_event=ts_event,
                             reason=context.format(w=c.weight) + caps, es_key=self.es_key)

    def _stop(self, batch: ValidatedBatch, state: TradingState, error: BaseException, row: np.ndarray | None,
              columns: pd.Index, closing: frozenset[str] = frozenset()) -> list[OrderEvent]:
        """Stop the strategy; cancel its working orders; deny the orders its weights imply (zero where none).

        Symbols under a stop-loss (`closing`) are left to their close.
        """
        self.error = f"strategy {self.strategy_id} stopped: {type(error).__name__}: {error}"
        self.error_at = self.clock.now_ns()
        log.error("strategy stopped", extra={"strategy": self.strategy_id, "error": self.error,
                                             "ts_event": batch.ts_event})
        events = self._cancel_for_state(state, batch.ts_event)
        implied: dict[str, float] = {}
        if row is not None and row.shape[0] == len(columns):
            implied = {str(s): float(w) for s, w in zip(columns, row.tolist(), strict=True) if math.isfinite(w)}
        equity = self.portfolio.equity()
        scale = equity * state.allocation * state.size_multiplier
        reason = f"{CODE_STRATEGY_ERROR}: {self.error}"
        for i in _by_symbol(batch.symbols):
            symbol, price = batch.symbols[i], float(batch.close[i])
            if symbol in closing:
                continue
            quantity = 0.0
            if symbol in implied:
                quantity = implied[symbol] * scale / price - self.portfolio.positions.get(symbol, 0.0)
            events.append(self._denied(batch.ts_event, symbol, quantity, price, reason, CODE_STRATEGY_ERROR))
        return events

    def _denied(self, ts_event: int, symbol: str, quantity: float, price: float, reason: str,
                code: str) -> OrderDenied:
        self.portfolio.orders_total += 1
        self.portfolio.denied_total += 1
        return OrderDenied(
            strategy=self.strategy_id, order_id=self._order_id(ts_event, symbol), symbol=symbol,
            side=_side(quantity), quantity=abs(quantity), price=price, ts_event=ts_event, reason=reason,
            reason_code=code,
        )

    def _order_id(self, ts_event: int, symbol: str) -> str:
        return f"{self.strategy_id}-{ts_event}-{symbol}"

    def status(self, state: TradingState) -> dict[str, Any]:
        book = self.portfolio
        return {
            "running": self.running, "error": self.error, "status": state.status, "reason": state.reason,
            "allocation": state.allocation, "size_multiplier": state.size_multiplier,
            "orders": book.orders_total, "denied": book.denied_total, "fills": book.fills_total,
            "working": len(book.working), "capital": self.capital, "equity": book.equity(),
            "realized_pnl": book.realized_pnl, "unrealized_pnl": book.unrealized_pnl(), "fees": book.fees,
            "es_budget": self.es_budget, "es_scale": self.es_scale,
            "risk_ts": self.risk.ts_event if self.risk else 0, "last_ts": book.last_ts, "last_seq": book.last_seq,
            "window_rows": len(self.window), "lookback": self.strategy.lookback,
            "stop_losses": sorted(self.stop_losses),
        }


def _last_row(weights: Any, prices: pd.DataFrame) -> np.ndarray | None:
    """Return the last row of whatever a strategy returned, as floats aligned with prices, if it can be read."""
    if not isinstance(weights, pd.DataFrame) or weights.empty:
        return None
    try:
        return pd.to_numeric(weights.iloc[-1].reindex(prices.columns), errors="coerce").to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _side(quantity: float) -> Side:
    return "BUY" if quantity >= 0.0 else "SELL"


def _by_symbol(symbols: Sequence[str]) -> list[int]:
    """Return row positions in symbol order, so that decisions come out in a deterministic order."""
    return sorted(range(len(symbols)), key=symbols.__getitem__)


# ---------------------------------------------------------------- control entries
# ---------------------------------------------------------------- engine
class ExecutionEngine:
    """Hosts strategies and turns bar batches into gated orders, paper fills and portfolio snapshots."""

    def __init__(self, strategies: Mapping[str, Strategy], config: EngineConfig, clock: Clock,
                 controls: ControlEntries | None = None) -> None:
        if not strategies:
            raise ValueError("execution needs at least one strategy")
        unknown = sorted((set(config.capital) | set(config.es_budgets)) - set(strategies))
        if unknown:
            raise ValueError(f"capital / ES budgets given for strategies that are not hosted: {unknown}")
        self.config = config
        self.clock = clock
        self.controls = controls or ControlEntries()
        self.hosts = {sid: StrategyHost(sid, strategy, config, clock) for sid, strategy in strategies.items()}
        self._pending: dict[tuple[str, int], dict[int, ValidatedBatch]] = {}
        self._close_ids: set[str] = set()
        self._close_order: deque[str] = deque()

    def state(self, strategy: str) -> TradingState:
        return self.controls.effective(strategy)

    def window_rows(self) -> int:
        """Return how many past batches rebuild every strategy's window after a restart."""
        return max(host.window.capacity for host in self.hosts.values())

    def restore(self, snapshot: PortfolioSnapshot) -> None:
        host = self.hosts.get(snapshot.strategy)
        if host is None:
            raise ValueError(f"no hosted strategy {snapshot.strategy!r} for this snapshot")
        host.restore(snapshot)
        for stop in snapshot.stop_losses:  # a redelivery of a stop-loss the snapshot holds is applied once
            self._remember_close(stop.command_id)

    def on_risk(self, snapshot: RiskSnapshot) -> bool:
        """Take a strategy's latest RiskSnapshot (its ES sizes the next orders); False if not hosted here."""
        host = self.hosts.get(snapshot.strategy)
        if host is None:
            return False
        host.on_risk(snapshot)
        return True

    def on_close_position(self, command: ClosePosition) -> bool:
        """Apply a risk stop-loss (see the module docstring) once per command id; False if not applied."""
        about = {"strategy": command.strategy, "symbol": command.symbol, "command_id": command.command_id}
        if command.command_id in self._close_ids:
            log.info("stop-loss ignored: command id already seen (a redelivery)", extra=about)
            return False
        host = self.hosts.get(command.strategy)
        if host is None:
            log.info("stop-loss ignored: strategy not hosted here", extra=about)
            return False
        # Remembered even when ignored: a late redelivery must not close a position opened since.
        self._remember_close(command.command_id)
        return host.on_close_position(command)

    def _remember_close(self, command_id: str) -> None:
        if command_id and command_id not in self._close_ids:
            self._close_ids.add(command_id)
            self._close_order.append(command_id)
            if len(self._close_order) > CLOSE_IDS_KEPT:
                self._close_ids.discard(self._close_order.popleft())

    def apply_acks(self, strategy: str, acks: Sequence[OrderAck]) -> StrategyResult:
        """Book an external broker's answers to a strategy's orders of the last batch."""
        return self.hosts[strategy].apply_acks(acks)

    def warm(self, batches: Iterable[BarBatch]) -> int:
        """Rebuild windows from batches traded before a restart (any order); return timestamps used."""
        groups: dict[tuple[int, str], dict[int, ValidatedBatch]] = {}
        for batch in batches:
            try:
                groups.setdefault((batch.ts_event, batch.venue), {})[batch.chunk] = validate_batch(batch)
            except ValueError:
                continue
        for _, parts in sorted(groups.items()):
            merged = merge_chunks([parts[c] for c in sorted(parts)])
            for host in self.hosts.values():
                host.warm(merged)
        return len(groups)

    def process(self, batch: BarBatch) -> BatchResult:
        """Trade one batch for every strategy; raise BatchRejected (a ValueError) for an unusable batch."""
        validated = validate_batch(batch)
        merged = self._assemble(batch, validated)
        if merged is None:
            return BatchResult(batch.ts_event, {}, validated.rejected, complete=False)
        results: dict[str, StrategyResult] = {}
        for sid, host in self.hosts.items():
            result = host.on_batch(merged, batch.seq, self.state(sid))
            if result is not None:
                results[sid] = result
        return BatchResult(batch.ts_event, results, validated.rejected)

    def _assemble(self, batch: BarBatch, validated: ValidatedBatch) -> ValidatedBatch | None:
        """Return the whole timestamp once every chunk of it has arrived (chunks never trade alone).

        Chunks wait in memory: a restart between two chunks of one timestamp skips that timestamp.
        """
        if batch.chunks <= 1:
            return validated
        if all(batch.ts_event <= host.portfolio.last_ts for host in self.hosts.values()):
            return validated  # already traded: the hosts answer with their cached results
        key = (batch.venue, batch.ts_event)
        parts = self._pending.setdefault(key, {})
        parts[batch.chunk] = validated
        if len(parts) < batch.chunks:
            return None
        del self._pending[key]
        for stale in [k for k in self._pending if k[1] < batch.ts_event]:
            del self._pending[stale]
        return merge_chunks([parts[c] for c in sorted(parts)])

    def status(self) -> dict[str, Any]:
        return {sid: host.status(self.state(sid)) for sid, host in self.hosts.items()}
