"""The risk engine: bars in, portfolio snapshots in, risk snapshots, breaker events and commands out.

Synchronous and free of I/O; the clock and settings are injected. Handlers feed it decoded messages and
carry out what it returns, in order: control commands first, then stop-loss orders, breaker events, and
the snapshot.

Measures, on every portfolio snapshot (formulas in the kernels' docstrings, qmp_kernels/*):
- VaR / ES by seven methods at every level in `var_levels` (keys `<method>_<level>`: historical_99,
  normal_95, student_t_975, cornish_fisher_99, fhs_ewma_99, fhs_garch_99, evt_99, ...), by full
  revaluation of the current positions over the kept bar history: scenario k's P&L is
  sum_i q_i p_i r_ik / equity. The window is the complete scenarios among the last `var_window` bar-to-bar
  returns with ts <= the snapshot's (so a replay gives the same numbers however bars and snapshots
  interleave); the FHS filters warm up on the older kept rows. h-day keys `<key>_<h>d` scale by sqrt(h).
  `pnl_historical_<level>` is historical VaR of the strategy's own equity returns, for comparison.
  Fewer than `min_observations` scenarios: status `insufficient_data` and no VaR entries, never a 0.
  A method that cannot give a number is left out, and `errors[method]` says why.
- Per position: VaR / ES of the position alone; drawdown from entry (average entry price) and from its
  best price since entry. Per held symbol (the `symbol_risk_positions` largest): the symbol's own return
  VaR by every method, realized vol and its ratio (kept for the whole universe on every batch by
  `symbols.SymbolRisk`; the health reply names the riskiest symbols of the universe).
- Drawdown: since inception (current and maximum) and over a trailing event-time window (24h).
- Volatility: realized vol of the strategy's equity returns over `vol_window` snapshots and its ratio to
  its own average over `vol_average_window` estimates (1.0 while unknown).
- Backtests of its own forecasts: each snapshot's VaR / ES is compared with the next snapshot's
  hypothetical return (yesterday's positions at today's prices: Basel's "hypothetical P&L", free of
  intraday trading), over the last `backtest_window` days: exceptions, Kupiec, Christoffersen, Basel
  zone, Acerbi-Szekely Z2.

Breakers (every trip and release is a BreakerTripped / BreakerReleased event with the values and words
that caused it):
- `drawdown_24h` > drawdown_halt: Halt. `stale_data`: a held symbol without a bar (or, once bars have
  been seen, the whole feed silent) for longer than stale_data_s: Halt (fail closed). Both are latched
  until the strategy is seen halted and then no longer halted (an explicit resume).
- `volatility`: ratio > limit sets order size to vol_size_multiplier; released below vol_ratio_release.
- `news`: a high-impact NewsEvent window is open: Defensive(on, max_order_fraction) until it closes.
- `stop_loss:<symbol>`: a position down stop_loss from its entry: one ClosePosition, recorded; released
  when the position is closed.
- `account`: the account the strategy trades from (engine/accounts.py) over its drawdown or ES limit: Halt
  for every strategy of the account seen so far (the others' in `RiskResult.others`), latched like drawdown.
Stale data and news windows also change without input: `check(now)` evaluates them on a timer.
"""

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import numpy as np

from qmp_core import subjects
from qmp_core.breakers import (
    BREAKER_ACCOUNT,
    BREAKER_DRAWDOWN,
    BREAKER_NEWS,
    BREAKER_STALE,
    BREAKER_VOLATILITY,
    account_breach,
    drawdown_trips,
    stop_loss_breaker,
    stop_loss_trips,
    volatility_releases,
    volatility_trips,
)
from qmp_core.clock import NS_PER_HOUR, NS_PER_SECOND, Clock, to_datetime
from qmp_core.messages import (
    BarBatch,
    BreakerEvent,
    BreakerReleased,
    BreakerTripped,
    ClosePosition,
    ControlCommand,
    Defensive,
    Halt,
    NewsEvent,
    PortfolioSnapshot,
    PositionRisk,
    ReduceOrderSize,
    RiskSnapshot,
    TradingState,
    VarBacktest,
)
from qmp_core.validation import BatchRejected, ValidatedBatch, validate_batch
from qmp_kernels import backtest as bt
from qmp_kernels import status as kernel_status
from qmp_kernels.methods import METHOD_NAMES, N_METHODS, all_methods, level_key, var_es_methods_nb
from qmp_kernels.var import historical_var_es_columns_nb, historical_var_es_levels_nb
from qmp_kernels.vol import vol_ratio_1d_nb
from qmp_risk.config import RiskSettings
from qmp_risk.engine.accounts import AccountBook, AccountReading
from qmp_risk.engine.history import PriceHistory
from qmp_risk.engine.symbols import SymbolParams, SymbolRisk

HALTING_BREAKERS = (BREAKER_DRAWDOWN, BREAKER_STALE, BREAKER_ACCOUNT)
STATUS_OK = "ok"
STATUS_INSUFFICIENT = "insufficient_data"
STATUS_NON_POSITIVE_EQUITY = "non_positive_equity"
RELEASE_PENDING = "?"  # a news release whose command failed: the next check sends it again

# A halt latch: tripped (halt sent), confirmed (the strategy was seen halted), or clear ("").
Latch = Literal["", "tripped", "confirmed"]

__all__ = ["BatchRejected", "BreakerCommand", "CheckResult", "RiskEngine", "RiskResult", "SnapshotRejected"]


def listing(venue: str, symbol: str) -> str:
    """The key of a symbol's prices on one venue (a venue name holds no dot, so the key is unambiguous)."""
    return f"{venue}.{symbol}"


class SnapshotRejected(ValueError):
    """A portfolio snapshot is unusable (malformed or out of order); the message says why."""


@dataclass(frozen=True)
class BreakerCommand:
    """A control command a breaker transition requires; `trip` is False for a release."""

    breaker: str
    trip: bool
    command: ControlCommand


@dataclass(frozen=True)
class RiskResult:
    snapshot: RiskSnapshot
    events: tuple[BreakerEvent, ...] = ()
    commands: tuple[BreakerCommand, ...] = ()
    closes: tuple[ClosePosition, ...] = ()
    duplicate: bool = False
    others: tuple["CheckResult", ...] = ()  # transitions of other strategies it caused (their account's breaker)


@dataclass(frozen=True)
class CheckResult:
    """Breaker transitions found by a timed check, without a snapshot."""

    strategy: str
    events: tuple[BreakerEvent, ...]
    commands: tuple[BreakerCommand, ...]


@dataclass
class _Position:
    quantity: float
    entry: float
    peak: float
    stopped: bool = False


@dataclass
class _Forecasts:
    """The last `size` (realized return, VaR, ES) triples of every method and level, as a ring."""

    realized: np.ndarray
    var: np.ndarray
    es: np.ndarray
    count: int = 0
    next: int = 0

    @classmethod
    def empty(cls, size: int, levels: int) -> "_Forecasts":
        return cls(np.full(size, np.nan), np.full((size, N_METHODS, levels), np.nan),
                   np.full((size, N_METHODS, levels), np.nan))

    def push(self, realized: float, var: np.ndarray, es: np.ndarray) -> None:
        self.realized[self.next], self.var[self.next], self.es[self.next] = realized, var, es
        self.next = (self.next + 1) % self.realized.shape[0]
        self.count = min(self.count + 1, self.realized.shape[0])

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = np.roll(np.arange(self.realized.shape[0]), -self.next)[-self.count:] if self.count else []
        return self.realized[order], self.var[order], self.es[order]


@dataclass
class _Book:
    """The previous snapshot's positions: the hypothetical P&L of a backtest day revalues them."""

    prices: dict[str, float]
    quantities: dict[str, float]
    equity: float
    var: np.ndarray | None  # forecasts made with them, (N_METHODS, L)
    es: np.ndarray | None


@dataclass
class _StrategyState:
    """What the engine remembers of one strategy between snapshots."""

    returns: deque[float]
    equity_returns: deque[float]
    forecasts: _Forecasts
    last_ts: int | None = None
    last_result: RiskResult | None = None
    last_equity: float = math.nan
    peak: float = -math.inf
    drawdown: float = 0.0
    drawdown_max: float = 0.0
    drawdown_24h: float = 0.0
    # (ts, equity) with decreasing equity: the front is the trailing window's peak.
    window_peaks: deque[tuple[int, float]] = field(default_factory=deque)
    latches: dict[str, Latch] = field(default_factory=lambda: dict.fromkeys(HALTING_BREAKERS, ""))
    volatility_active: bool = False
    news_event: str = ""  # the open news window's event id, RELEASE_PENDING, or ""
    positions: dict[str, _Position] = field(default_factory=dict)
    book: _Book | None = None
    venue: str = ""  # the venue whose prices mark the book (its snapshots say which)


class RiskEngine:
    """Risk of every strategy from its portfolio snapshots and the market's bars."""

    def __init__(self, settings: RiskSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.history = PriceHistory(settings.var_window + 1 + settings.history_margin + settings.history_lookahead)
        self.levels = np.array(settings.var_levels, dtype=np.float64)
        self.level_keys = [level_key(alpha) for alpha in settings.var_levels]
        self._historical_keys = [f"historical_{key}" for key in self.level_keys]  # a position's VaR / ES keys
        self.symbols: SymbolRisk | None = None
        if settings.symbol_risk:
            self.symbols = SymbolRisk(SymbolParams(
                window=settings.var_window, alphas=tuple(settings.var_levels), ewma_lambda=settings.ewma_lambda,
                evt_threshold=settings.evt_threshold, vol_window=settings.vol_window,
                vol_average_window=settings.vol_average_window, refit_every=settings.garch_refit_every,
                max_refits_per_batch=settings.garch_max_refits_per_batch))
        self._methods = all_methods()
        self._no_garch = np.full(3, np.nan)
        self._window_ns = int(settings.drawdown_window_hours * NS_PER_HOUR)
        self._stale_ns = int(settings.stale_data_s * NS_PER_SECOND)
        self._last_bar_ts: dict[tuple[str, int], int] = {}
        self._listing_cache: dict[tuple[str, int], tuple[list[str], list[str]]] = {}
        self._chunks: dict[str, tuple[int, set[int]]] = {}
        self._complete_ts: dict[str, int] = {}
        self._strategies: dict[str, _StrategyState] = {}
        self._calendar: dict[str, NewsEvent] = {}
        self._first_ts = 0
        self.accounts = AccountBook(self._window_ns, settings.var_window, settings.min_observations,
                                    settings.account_es_level)

    # ------------------------------------------------------------------ market data
    @property
    def bar_watermark(self) -> int:
        """The latest timestamp for which some venue has delivered every chunk (0 before any)."""
        return max(self._complete_ts.values(), default=0)

    def on_bars(self, batch: BarBatch) -> ValidatedBatch | None:
        """Record a batch's valid closes and update per-symbol risk; return them, None for a redelivery.

        Raises BatchRejected for a batch that is malformed or older than its source's last one.
        """
        source = (batch.venue, batch.chunk)
        last = self._last_bar_ts.get(source)
        if last is not None and batch.ts_event == last:
            return None
        validated = validate_batch(batch, last)
        self._last_bar_ts[source] = batch.ts_event
        self._observe(batch.ts_event)
        validated, listings = self._within_capacity(source, validated)
        if listings:  # every row refused: nothing to record
            self.history.record(batch.ts_event, listings, validated.close, key=source)
            if self.symbols is not None:
                self.symbols.on_closes(batch.ts_event, listings, validated.close, key=source)
        self._mark_chunk(batch)
        return validated

    def _within_capacity(self, source: tuple[str, int], validated: ValidatedBatch) -> tuple[ValidatedBatch,
                                                                                             list[str]]:
        """Return the batch's rows risk tracks and their listings; new listings beyond `max_listings` are
        rejected rows (with the reason), so a flood of symbols cannot grow the process without bound.

        Prices are kept per (venue, symbol): a book is revalued with its own venue's prices only, so
        another venue's quote of the same symbol (a stale feed, a bad print) never enters its scenarios.
        The listings of a source that repeats its symbol list are reused.
        """
        cached = self._listing_cache.get(source)
        if cached is not None and cached[0] == validated.symbols:
            return validated, cached[1]
        listings = [listing(source[0], symbol) for symbol in validated.symbols]
        new = [i for i, name in enumerate(listings) if not self.history.has(name)]
        room = max(0, self.settings.max_listings - self.history.symbols)
        if len(new) > room:
            refused = set(new[room:])
            keep = np.array([i not in refused for i in range(len(listings))])
            reason = (f"risk tracks at most {self.settings.max_listings} listings (QMP_MAX_LISTINGS): "
                      "a new one is not tracked")
            validated = dataclasses.replace(
                validated, symbols=[s for i, s in enumerate(validated.symbols) if keep[i]],
                open=validated.open[keep], high=validated.high[keep], low=validated.low[keep],
                close=validated.close[keep], volume=validated.volume[keep],
                rejected=[*validated.rejected, *[(validated.symbols[i], reason) for i in sorted(refused)]])
            return validated, [name for i, name in enumerate(listings) if keep[i]]  # checked again next batch
        self._listing_cache[source] = (list(validated.symbols), listings)
        return validated, listings

    def _mark_chunk(self, batch: BarBatch) -> None:
        ts, seen = self._chunks.get(batch.venue, (batch.ts_event, set()))
        if ts != batch.ts_event:
            ts, seen = batch.ts_event, set()
        seen.add(batch.chunk)
        self._chunks[batch.venue] = (ts, seen)
        if len(seen) >= batch.chunks and ts > self._complete_ts.get(batch.venue, 0):
            self._complete_ts[batch.venue] = ts

    def _observe(self, ts: int) -> None:
        if self._first_ts == 0 or ts < self._first_ts:
            self._first_ts = ts

    # ------------------------------------------------------------------ news calendar
    def on_news(self, event: NewsEvent) -> None:
        """Add (or replace, by event id) a calendar entry. Raises ValueError for an empty window."""
        if event.end <= event.start:
            raise ValueError(f"news event {event.event_id}: end must be after start, got {event.start}..{event.end}")
        self._calendar[event.event_id] = event

    def _open_news(self, strategy: str, now: int) -> NewsEvent | None:
        for event in self._calendar.values():
            if (event.impact in self.settings.news_impacts and event.start <= now < event.end
                    and (not event.strategies or strategy in event.strategies
                         or subjects.ALL_STRATEGIES in event.strategies)):
                return event
        return None

    # ------------------------------------------------------------------ portfolios
    def last_ts(self, strategy: str) -> int | None:
        """Return the timestamp of the strategy's latest snapshot handled, None if none."""
        state = self._strategies.get(strategy)
        return None if state is None else state.last_ts

    def on_portfolio(self, snapshot: PortfolioSnapshot) -> RiskResult:
        """Return the risk snapshot of a portfolio and the breaker transitions it causes.

        A redelivered snapshot (same ts as the last one) returns the same result again, marked duplicate,
        so its side effects can be repeated idempotently. Raises SnapshotRejected for bad input.
        """
        self._validate(snapshot)
        state = self._strategies.get(snapshot.strategy)
        if state is None:
            if snapshot.equity <= 0.0:
                raise SnapshotRejected(f"first snapshot of {snapshot.strategy} must have positive equity, "
                                       f"got {snapshot.equity}")
            state = _StrategyState(returns=deque(maxlen=self._returns_kept()),
                                   equity_returns=deque(maxlen=self.settings.var_window),
                                   forecasts=_Forecasts.empty(self.settings.backtest_window, len(self.levels)))
            self._strategies[snapshot.strategy] = state
        if state.last_ts is not None:
            if snapshot.ts_event == state.last_ts and state.last_result is not None:
                return dataclasses.replace(state.last_result, duplicate=True)
            if snapshot.ts_event < state.last_ts:
                raise SnapshotRejected(f"out-of-order snapshot of {snapshot.strategy}: ts_event="
                                       f"{snapshot.ts_event} is before {state.last_ts}")
        if not snapshot.venue:  # a book that names no venue: the only one trading, if there is one only
            venues = {venue for venue, _chunk in self._last_bar_ts}
            snapshot = msgspec.structs.replace(snapshot, venue=next(iter(venues))) if len(venues) == 1 else snapshot
        state.venue = snapshot.venue or state.venue
        self._observe(snapshot.ts_event)
        ts = snapshot.ts_event
        prices = dict(zip(snapshot.symbols, snapshot.prices, strict=True))
        realized = self._realize_backtest(state, prices)
        self._update_equity(state, ts, snapshot.equity)
        account = self.accounts.on_equity(snapshot.strategy, ts, snapshot.equity)
        ratio = self._volatility_ratio(state)
        events: list[BreakerEvent] = []
        positions, closes = self._update_positions(state, snapshot, events)
        positions = self.position_var(snapshot, positions)
        var, es, observations, status, errors, forecast = self._value_at_risk(snapshot, state)
        state.book = _Book(prices, {s: q for s, q in zip(snapshot.symbols, snapshot.quantities, strict=True)
                                    if q != 0.0}, snapshot.equity, *forecast)
        commands = self._breakers(state, snapshot, ratio, events)
        others = self._account_breaker(account, snapshot.strategy, ts, events, commands)
        result = RiskResult(
            snapshot=RiskSnapshot(
                strategy=snapshot.strategy, ts_event=ts, equity=snapshot.equity, var=var, es=es,
                drawdown_24h=state.drawdown_24h, drawdown_max=state.drawdown_max, volatility_ratio=ratio,
                breakers=self._active_breakers(state), observations=observations, status=status,
                drawdown=state.drawdown, volatility=self._volatility(state), positions=positions,
                symbol_risk=self._symbol_risk(snapshot.venue, positions), backtests=self._backtests(state),
                errors=errors, realized_return=realized,
                account=account.account if account else "", account_equity=account.equity if account else None,
                account_drawdown_24h=account.drawdown_24h if account else None,
                account_es=account.es if account else None,
            ),
            events=tuple(events),
            commands=tuple(commands),
            closes=tuple(closes),
            others=others,
        )
        state.last_ts = ts
        state.last_result = result
        return result

    def _validate(self, snapshot: PortfolioSnapshot) -> None:
        try:
            subjects.check_token(snapshot.strategy, "strategy")
        except ValueError as error:
            raise SnapshotRejected(str(error)) from error
        n = len(snapshot.symbols)
        if len(snapshot.quantities) != n or len(snapshot.prices) != n:
            raise SnapshotRejected(f"column lengths differ: symbols={n}, quantities={len(snapshot.quantities)}, "
                                   f"prices={len(snapshot.prices)}")
        if len(set(snapshot.symbols)) != n:
            raise SnapshotRejected("duplicate symbol in snapshot")
        if snapshot.ts_event <= 0:
            raise SnapshotRejected(f"ts_event must be a positive int ns, got {snapshot.ts_event}")
        values = np.array([snapshot.cash, snapshot.equity, *snapshot.quantities, *snapshot.prices])
        if not np.isfinite(values).all():
            raise SnapshotRejected("non-finite cash, equity, quantity or price")
        if any(price <= 0.0 for price in snapshot.prices):
            raise SnapshotRejected(f"prices must be positive, got {snapshot.prices}")

    def _returns_kept(self) -> int:
        return self.settings.vol_window + self.settings.vol_average_window - 1

    # ------------------------------------------------------------------ equity, drawdown, volatility
    def _update_equity(self, state: _StrategyState, ts: int, equity: float) -> None:
        if state.last_ts is not None:
            previous = state.last_equity
            change = equity / previous - 1.0 if previous > 0.0 else math.nan
            state.returns.append(change)
            state.equity_returns.append(change)
        state.last_equity = equity
        state.peak = max(state.peak, equity)
        state.drawdown = 1.0 - equity / state.peak
        state.drawdown_max = max(state.drawdown_max, state.drawdown)
        peaks = state.window_peaks
        while peaks and peaks[-1][1] <= equity:
            peaks.pop()
        peaks.append((ts, equity))
        while peaks[0][0] < ts - self._window_ns:
            peaks.popleft()
        window_peak = peaks[0][1]
        # A window whose best equity is not positive has lost everything there was: report a full loss.
        state.drawdown_24h = 1.0 - equity / window_peak if window_peak > 0.0 else 1.0

    def _volatility_ratio(self, state: _StrategyState) -> float:
        if len(state.returns) < self._returns_kept():
            return 1.0
        ratio, code = vol_ratio_1d_nb(np.fromiter(state.returns, dtype=np.float64, count=len(state.returns)),
                                      self.settings.vol_window, self.settings.vol_average_window)
        last = float(ratio[-1])
        return last if code == kernel_status.OK and math.isfinite(last) else 1.0

    def _volatility(self, state: _StrategyState) -> float | None:
        window = self.settings.vol_window
        if len(state.returns) < window:
            return None
        recent = np.fromiter(state.returns, dtype=np.float64)[-window:]
        value = float(np.std(recent, ddof=1))
        return value if math.isfinite(value) else None

    # ------------------------------------------------------------------ positions and stop-loss
    def _update_positions(self, state: _StrategyState, snapshot: PortfolioSnapshot,
                          events: list[BreakerEvent]) -> tuple[list[PositionRisk], list[ClosePosition]]:
        """Track entry and best prices; fire each position's stop-loss once; release it when closed."""
        ts, strategy, limit = snapshot.ts_event, snapshot.strategy, self.settings.stop_loss
        held = {s: (q, p) for s, q, p in zip(snapshot.symbols, snapshot.quantities, snapshot.prices, strict=True)
                if q != 0.0}
        for symbol in [s for s in state.positions if s not in held]:
            gone = state.positions.pop(symbol)
            if gone.stopped:
                events.append(BreakerReleased(strategy=strategy, breaker=stop_loss_breaker(symbol), value=0.0,
                                              threshold=-limit, action="position closed", ts_event=ts,
                                              detail=f"{symbol} flat after its stop-loss"))
        positions: list[PositionRisk] = []
        closes: list[ClosePosition] = []
        for symbol, (quantity, price) in held.items():
            position = state.positions.get(symbol)
            if position is None or (position.quantity > 0.0) != (quantity > 0.0):
                position = _Position(quantity, price, price)
                state.positions[symbol] = position
            else:
                if abs(quantity) > abs(position.quantity):
                    added = abs(quantity) - abs(position.quantity)
                    position.entry = (abs(position.quantity) * position.entry + added * price) / abs(quantity)
                position.quantity = quantity
                position.peak = max(position.peak, price) if quantity > 0.0 else min(position.peak, price)
            side = 1.0 if quantity > 0.0 else -1.0
            pnl = side * (price / position.entry - 1.0)
            from_peak = 1.0 - price / position.peak if side > 0 else price / position.peak - 1.0
            if stop_loss_trips(pnl, limit) and not position.stopped:
                position.stopped = True
                command_id = _command_id(stop_loss_breaker(symbol), strategy, ts)
                detail = (f"{symbol} {'long' if side > 0 else 'short'} {abs(quantity):g} from {position.entry:.6g} "
                          f"to {price:.6g}: {pnl:.2%}")
                closes.append(ClosePosition(strategy=strategy, symbol=symbol, quantity=-quantity,
                                            reason=f"stop-loss: {detail} <= {-limit:.2%}", command_id=command_id,
                                            price=price, entry_price=position.entry, loss=-pnl, ts_event=ts))
                events.append(BreakerTripped(strategy=strategy, breaker=stop_loss_breaker(symbol), value=pnl,
                                             threshold=-limit, action=f"close {symbol}", ts_event=ts, detail=detail))
            positions.append(PositionRisk(
                symbol=symbol, quantity=quantity, price=price, weight=quantity * price / snapshot.equity
                if snapshot.equity > 0.0 else 0.0, entry_price=position.entry, peak_price=position.peak,
                pnl_from_entry=pnl, drawdown_from_peak=max(from_peak, 0.0), stop_loss=position.stopped))
        return positions, closes

    # ------------------------------------------------------------------ VaR, ES, backtests
    def _value_at_risk(self, snapshot: PortfolioSnapshot, state: _StrategyState) -> tuple[
        dict[str, float], dict[str, float], int, str, dict[str, str], tuple[np.ndarray | None, np.ndarray | None]
    ]:
        """Return (VaR, ES, observations, status, errors, forecasts kept for the backtest)."""
        var: dict[str, float] = {}
        es: dict[str, float] = {}
        errors: dict[str, str] = {}
        self._pnl_var(state, var, es)
        if snapshot.equity <= 0.0:
            return var, es, 0, STATUS_NON_POSITIVE_EQUITY, errors, (None, None)
        held = [i for i, q in enumerate(snapshot.quantities) if q != 0.0]
        symbols = [listing(snapshot.venue, snapshot.symbols[i]) for i in held]
        window = self.history.returns(symbols, snapshot.ts_event, self.settings.var_window)
        if window is None:
            missing = [snapshot.symbols[i] for i, s in zip(held, symbols, strict=True) if not self.history.has(s)]
            errors["all"] = (f"insufficient_data: no bars yet on {snapshot.venue or 'its venue'} for "
                             f"{', '.join(missing)}")
            return var, es, 0, STATUS_INSUFFICIENT, errors, (None, None)
        observations = int(window.shape[0])
        if observations < self.settings.min_observations:
            errors["all"] = (f"insufficient_data: {observations} complete scenarios, "
                             f"{self.settings.min_observations} needed")
            return var, es, observations, STATUS_INSUFFICIENT, errors, (None, None)
        # A fixed count, not all the rows kept: rows of bars that ran ahead must not change the warm-up.
        kept = self.settings.var_window + self.settings.history_margin
        scenarios = self.history.returns(symbols, snapshot.ts_event, kept)
        assert scenarios is not None  # the same symbols have bars: checked just above
        exposure = np.array([snapshot.quantities[i] * snapshot.prices[i] for i in held], dtype=np.float64)
        pnl = scenarios @ exposure / snapshot.equity
        values, shortfalls, codes, _ = var_es_methods_nb(pnl, observations, self.levels, self.settings.ewma_lambda,
                                                         self.settings.evt_threshold, self._no_garch, self._methods)
        for m, name in enumerate(METHOD_NAMES):
            if codes[m] != kernel_status.OK:
                errors[name] = _reason(int(codes[m]), name, observations)
            for level, key in enumerate(self.level_keys):
                self._put(var, es, f"{name}_{key}", float(values[m, level]), float(shortfalls[m, level]))
        return var, es, observations, STATUS_OK, errors, (values, shortfalls)

    def _put(self, var: dict[str, float], es: dict[str, float], key: str, value: float, shortfall: float) -> None:
        """Store a 1-day figure and its scaled horizons; NaN stays out (JSON has no NaN)."""
        for days in self.settings.var_horizons:
            name = key if days == 1 else f"{key}_{days}d"
            scale = math.sqrt(days)
            if math.isfinite(value):
                var[name] = value * scale
            if math.isfinite(shortfall):
                es[name] = shortfall * scale

    def _pnl_var(self, state: _StrategyState, var: dict[str, float], es: dict[str, float]) -> None:
        """Historical VaR of the strategy's own equity returns (`pnl_historical_<level>`), once there are enough."""
        if len(state.equity_returns) < self.settings.min_observations:
            return
        series = np.fromiter(state.equity_returns, dtype=np.float64)
        values, shortfalls, code = historical_var_es_levels_nb(series, self.levels)
        if code == kernel_status.OK:
            for level, key in enumerate(self.level_keys):
                self._put(var, es, f"pnl_historical_{key}", float(values[level]), float(shortfalls[level]))

    def _realize_backtest(self, state: _StrategyState, prices: dict[str, float]) -> float | None:
        """Pair the previous snapshot's forecasts with the hypothetical return of its positions since then;
        return that return, or None when this snapshot is not a backtest observation."""
        book = state.book
        if book is None or book.var is None or book.es is None or book.equity <= 0.0:
            return None
        pnl = 0.0
        for symbol, quantity in book.quantities.items():
            now = prices.get(symbol)
            if now is None:
                return None  # the position cannot be revalued: this day is not a backtest observation
            pnl += quantity * (now - book.prices[symbol])
        state.forecasts.push(pnl / book.equity, book.var, book.es)
        return pnl / book.equity

    def _backtests(self, state: _StrategyState) -> dict[str, VarBacktest]:
        if state.forecasts.count < self.settings.min_observations:
            return {}
        realized, var, es = state.forecasts.ordered()
        out: dict[str, VarBacktest] = {}
        for m, name in enumerate(METHOD_NAMES):
            for level, key in enumerate(self.level_keys):
                fields, code = bt.backtest_nb(realized, np.ascontiguousarray(var[:, m, level]),
                                              np.ascontiguousarray(es[:, m, level]), float(self.levels[level]))
                if code != kernel_status.OK:
                    continue
                out[f"{name}_{key}"] = msgspec.convert(bt.backtest_record(fields), VarBacktest)
        return out

    def _symbol_risk(self, venue: str, positions: list[PositionRisk]) -> dict[str, dict[str, float]]:
        """Return each large position's symbol VaR keys, vol and vol_ratio (ES left out: snapshots stay small)."""
        if self.symbols is None:
            return {}
        largest = sorted(positions, key=lambda p: -abs(p.weight))[: self.settings.symbol_risk_positions]
        out: dict[str, dict[str, float]] = {}
        for position in largest:
            measures = self.symbols.measures(listing(venue, position.symbol), with_es=False)
            if measures:
                out[position.symbol] = measures
        return out

    def position_var(self, snapshot: PortfolioSnapshot, positions: list[PositionRisk]) -> list[PositionRisk]:
        """Return positions with their own historical VaR / ES (each revalued alone over the window).

        One returns matrix for the positions' symbols and one kernel call for all of them; a position whose
        symbol never had a bar, or has fewer than `min_observations` returns in the window, is left as is.
        """
        keys = [listing(snapshot.venue, position.symbol) for position in positions]
        known = [i for i, key in enumerate(keys) if self.history.has(key)]
        if not known:
            return positions
        window = self.history.returns_by_symbol([keys[i] for i in known], snapshot.ts_event,
                                                self.settings.var_window)
        weights = np.array([positions[i].weight for i in known])
        values, shortfalls, codes = historical_var_es_columns_nb(
            np.ascontiguousarray(window), weights, self.levels, self.settings.min_observations)
        out = list(positions)
        names = self._historical_keys
        for column, i in enumerate(known):
            if codes[column] != kernel_status.OK:
                continue
            out[i] = msgspec.structs.replace(
                positions[i], var=dict(zip(names, values[column].tolist(), strict=True)),
                es=dict(zip(names, shortfalls[column].tolist(), strict=True)))
        return out

    # ------------------------------------------------------------------ breakers
    def _active_breakers(self, state: _StrategyState) -> list[str]:
        names = [name for name in HALTING_BREAKERS if state.latches[name] != ""]
        if state.volatility_active:
            names.append(BREAKER_VOLATILITY)
        if state.news_event not in ("", RELEASE_PENDING):
            names.append(BREAKER_NEWS)
        names += [stop_loss_breaker(s) for s, p in state.positions.items() if p.stopped]
        return names

    def _breakers(self, state: _StrategyState, snapshot: PortfolioSnapshot, ratio: float,
                  events: list[BreakerEvent]) -> list[BreakerCommand]:
        settings = self.settings
        strategy, ts = snapshot.strategy, snapshot.ts_event
        commands: list[BreakerCommand] = []
        if drawdown_trips(state.drawdown_24h, settings.drawdown_halt):
            reason = (f"drawdown over {settings.drawdown_window_hours:g}h {state.drawdown_24h:.2%} > "
                      f"{settings.drawdown_halt:.2%}")
            self._trip_halt(state, strategy, ts, BREAKER_DRAWDOWN, state.drawdown_24h, settings.drawdown_halt,
                            reason, events, commands)
        self._check_stale(state, strategy, ts, events, commands)
        if not state.volatility_active and volatility_trips(ratio, settings.vol_ratio_limit):
            state.volatility_active = True
            factor = settings.vol_size_multiplier
            events.append(BreakerTripped(strategy=strategy, breaker=BREAKER_VOLATILITY, value=ratio,
                                         threshold=settings.vol_ratio_limit, action=f"size_multiplier={factor:g}",
                                         ts_event=ts, detail=f"realized vol {ratio:.2f}x its average"))
            commands.append(BreakerCommand(BREAKER_VOLATILITY, True, ReduceOrderSize(
                issued_by="risk", size_multiplier=factor, command_id=_command_id(BREAKER_VOLATILITY, strategy, ts),
                ts_event=ts)))
        elif state.volatility_active and volatility_releases(ratio, settings.vol_ratio_release):
            state.volatility_active = False
            events.append(BreakerReleased(strategy=strategy, breaker=BREAKER_VOLATILITY, value=ratio,
                                          threshold=settings.vol_ratio_release, action="size_multiplier=1.0",
                                          ts_event=ts, detail=f"realized vol back to {ratio:.2f}x its average"))
            commands.append(BreakerCommand(BREAKER_VOLATILITY, False, ReduceOrderSize(
                issued_by="risk", size_multiplier=1.0,
                command_id=_command_id(BREAKER_VOLATILITY, strategy, ts, release=True), ts_event=ts)))
        self._check_news(state, strategy, ts, events, commands)
        return commands

    def _account_breaker(self, reading: AccountReading | None, strategy: str, ts: int, events: list[BreakerEvent],
                         commands: list[BreakerCommand]) -> tuple[CheckResult, ...]:
        """Halt every strategy of an account in breach: this one into `events` / `commands`, the others (those
        risk has seen) as their own results. A member already halted by it is not halted again until resumed."""
        if reading is None:
            return ()
        settings = self.settings
        why = account_breach(reading.drawdown_24h, reading.es, settings.account_drawdown_halt,
                             settings.account_es_limit)
        if not why:
            return ()
        reason = f"account {reading.account}: {why} (strategies {', '.join(reading.members)})"
        value = reading.drawdown_24h if why.startswith("drawdown") else (reading.es or 0.0)
        threshold = settings.account_drawdown_halt if why.startswith("drawdown") else settings.account_es_limit
        others: list[CheckResult] = []
        for member in reading.members:
            state = self._strategies.get(member)
            if state is None:
                continue  # not seen yet: its first snapshot finds the account in breach and halts it then
            if member == strategy:
                self._trip_halt(state, member, ts, BREAKER_ACCOUNT, value, threshold, reason, events, commands)
                continue
            their_events: list[BreakerEvent] = []
            their_commands: list[BreakerCommand] = []
            self._trip_halt(state, member, ts, BREAKER_ACCOUNT, value, threshold, reason, their_events,
                            their_commands)
            if their_commands:
                others.append(CheckResult(member, tuple(their_events), tuple(their_commands)))
        return tuple(others)

    def _trip_halt(self, state: _StrategyState, strategy: str, ts: int, breaker: str, value: float,
                   threshold: float, reason: str, events: list[BreakerEvent], commands: list[BreakerCommand]) -> None:
        if state.latches[breaker] != "":
            return
        state.latches[breaker] = "tripped"
        events.append(BreakerTripped(strategy=strategy, breaker=breaker, value=value, threshold=threshold,
                                     action="halt", ts_event=ts, detail=reason))
        commands.append(BreakerCommand(breaker, True, Halt(
            issued_by="risk", reason=reason, command_id=_command_id(breaker, strategy, ts), ts_event=ts)))

    def _check_stale(self, state: _StrategyState, strategy: str, now: int, events: list[BreakerEvent],
                     commands: list[BreakerCommand]) -> None:
        """Halt when a held symbol (or, once bars were seen, the whole feed) has been silent too long."""
        oldest, symbol = None, ""
        for held in state.positions:
            last = self.history.last_bar_ts(listing(state.venue, held))
            seen = last if last is not None else self._first_ts
            if oldest is None or seen < oldest:
                oldest, symbol = seen, held
        if oldest is None and self.bar_watermark > 0:
            oldest, symbol = self.bar_watermark, "*"
        if oldest is None or now - oldest <= self._stale_ns:
            return
        age_s = (now - oldest) / NS_PER_SECOND
        what = "any symbol" if symbol == "*" else symbol
        since = to_datetime(oldest).isoformat(timespec="seconds")
        reason = (f"stale data: no bar for {what} since {since} ({age_s / 3600:.1f}h > "
                  f"{self.settings.stale_data_s / 3600:.1f}h)")
        self._trip_halt(state, strategy, now, BREAKER_STALE, age_s, self.settings.stale_data_s, reason, events,
                        commands)

    def _check_news(self, state: _StrategyState, strategy: str, now: int, events: list[BreakerEvent],
                    commands: list[BreakerCommand]) -> None:
        event = self._open_news(strategy, now)
        cap = self.settings.news_max_order_fraction
        if event is not None and state.news_event in ("", RELEASE_PENDING):
            if state.news_event == RELEASE_PENDING:
                state.news_event = event.event_id  # the window reopened before the release got through
                return
            state.news_event = event.event_id
            start, end = (to_datetime(ts).isoformat(timespec="seconds") for ts in (event.start, event.end))
            detail = f"{event.name} ({event.event_id}, {event.impact}) {start} .. {end}"
            remaining_s = (event.end - now) / NS_PER_SECOND
            events.append(BreakerTripped(strategy=strategy, breaker=BREAKER_NEWS, value=remaining_s, threshold=0.0,
                                         action=f"defensive, max_order_fraction={cap:g}", ts_event=now, detail=detail))
            commands.append(BreakerCommand(BREAKER_NEWS, True, Defensive(
                issued_by="risk", on=True, max_order_fraction=cap,
                command_id=_command_id(BREAKER_NEWS, strategy, now), ts_event=now)))
        elif event is None and state.news_event != "":
            ended = self._calendar.get(state.news_event)
            state.news_event = ""
            detail = f"{ended.name} ({ended.event_id}) window closed" if ended else "news window closed"
            events.append(BreakerReleased(strategy=strategy, breaker=BREAKER_NEWS, value=0.0, threshold=0.0,
                                          action="defensive off", ts_event=now, detail=detail))
            commands.append(BreakerCommand(BREAKER_NEWS, False, Defensive(
                issued_by="risk", on=False, command_id=_command_id(BREAKER_NEWS, strategy, now, release=True),
                ts_event=now)))

    def check(self, now: int) -> list[CheckResult]:
        """Evaluate the breakers that change without input (stale data, news windows) for every strategy."""
        out: list[CheckResult] = []
        for strategy, state in self._strategies.items():
            events: list[BreakerEvent] = []
            commands: list[BreakerCommand] = []
            self._check_stale(state, strategy, now, events, commands)
            self._check_news(state, strategy, now, events, commands)
            if events or commands:
                out.append(CheckResult(strategy, tuple(events), tuple(commands)))
        return out

    def on_trading_state(self, state: TradingState) -> list[BreakerEvent]:
        """Track the effective trading state: a halted-then-resumed strategy clears its halt latches.

        A non-halted state clears a latch only after the strategy has been seen halted since the trip, so
        a state published before our halt took effect cannot undo it. `ALL` applies to every strategy.
        """
        names = list(self._strategies) if state.strategy == subjects.ALL_STRATEGIES else [state.strategy]
        events: list[BreakerEvent] = []
        for name in names:
            tracked = self._strategies.get(name)
            if tracked is None:
                continue
            for breaker in HALTING_BREAKERS:
                latch = tracked.latches[breaker]
                if latch == "":
                    continue
                if state.status == "HALTED":
                    tracked.latches[breaker] = "confirmed"
                elif latch == "confirmed":
                    tracked.latches[breaker] = ""
                    value = tracked.drawdown_24h if breaker == BREAKER_DRAWDOWN else 0.0
                    threshold = {BREAKER_DRAWDOWN: self.settings.drawdown_halt,
                                 BREAKER_STALE: self.settings.stale_data_s,
                                 BREAKER_ACCOUNT: self.settings.account_drawdown_halt}[breaker]
                    events.append(BreakerReleased(
                        strategy=name, breaker=breaker, value=value, threshold=threshold,
                        action=f"resumed:{state.status.lower()}",
                        ts_event=state.ts_event if state.ts_event > 0 else self.clock.now_ns(),
                        detail=f"explicit resume ({state.issued_by or 'unknown'})"))
        return events

    def on_control_reply(self, strategy: str, command: BreakerCommand, accepted: bool) -> None:
        """Record the deployer's answer: an accepted halt means the strategy is now halted."""
        tracked = self._strategies.get(strategy)
        if tracked is None or not accepted:
            return
        if command.breaker in HALTING_BREAKERS and command.trip and tracked.latches[command.breaker] == "tripped":
            tracked.latches[command.breaker] = "confirmed"

    def on_command_failed(self, strategy: str, command: BreakerCommand) -> None:
        """Undo a transition whose command never got an answer, so the next evaluation tries again."""
        tracked = self._strategies.get(strategy)
        if tracked is None:
            return
        if command.breaker in HALTING_BREAKERS:
            if command.trip and tracked.latches[command.breaker] == "tripped":
                tracked.latches[command.breaker] = ""
        elif command.breaker == BREAKER_VOLATILITY:
            tracked.volatility_active = not command.trip
        elif command.breaker == BREAKER_NEWS:
            tracked.news_event = "" if command.trip else RELEASE_PENDING

    # ------------------------------------------------------------------ start-up
    def warm_up(self) -> None:
        """Run every kernel the engine uses once on made-up data, so that none compiles inside a handler.

        With numba's cache warm this only loads compiled code (a fraction of a second); on a fresh machine
        it compiles (tens of seconds), before the service consumes anything rather than on its first batch.
        """
        settings = self.settings
        x = np.random.default_rng(0).standard_t(4, 64) * 0.01
        var_es_methods_nb(x, 48, self.levels, settings.ewma_lambda, settings.evt_threshold, self._no_garch,
                          self._methods)
        historical_var_es_levels_nb(x, self.levels)
        historical_var_es_columns_nb(x.reshape(-1, 2), np.ones(2), self.levels, 5)
        bt.backtest_nb(x, np.abs(x), np.abs(x), float(self.levels[0]))
        vol_ratio_1d_nb(x, settings.vol_window, settings.vol_average_window)
        if self.symbols is not None:
            scratch = SymbolRisk(self.symbols.params)
            cols = scratch.columns(["a", "b"])
            for row in x.reshape(-1, 2):
                scratch.update(cols, row)
            scratch.refit(cols)

    # ------------------------------------------------------------------ health
    def detail(self) -> dict[str, object]:
        out: dict[str, object] = {"strategies": len(self._strategies), "symbols": self.history.symbols,
                                  "bar_rows": self.history.length, "news_events": len(self._calendar)}
        if self.symbols is not None:
            out["riskiest_historical_99"] = dict(self.symbols.riskiest(5))
            out["garch_refits"] = self.symbols.refits
        return out


def _reason(code: int, method: str, observations: int) -> str:
    name = kernel_status.NAMES.get(code, str(code))
    if code == kernel_status.INSUFFICIENT_DATA:
        return f"{name}: {method} cannot fit {observations} scenarios"
    if code == kernel_status.UNBOUNDED:
        return f"{name}: the fitted GPD tail has shape >= 1, so ES is infinite"
    return f"{name}: {method} rejected its input"



def _command_id(breaker: str, strategy: str, ts: int, release: bool = False) -> str:
    """Return a deterministic command id, so a replay or a redelivery sends the same command again."""
    verb = ":release" if release else ""
    return f"risk:{breaker}{verb}:{strategy}:{ts}"
