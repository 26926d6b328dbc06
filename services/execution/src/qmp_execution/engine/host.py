"""One hosted strategy: its window, book, broker, risk view, stop-losses and error state."""

import dataclasses
import logging
import math
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qmp_core import subjects
from qmp_core.clock import NS_PER_SECOND, Clock
from qmp_core.messages import (
    ClosePosition,
    Fill,
    OrderAccepted,
    OrderCanceled,
    OrderDenied,
    OrderEvent,
    PortfolioSnapshot,
    RiskSnapshot,
    Side,
    TradingState,
)
from qmp_core.strategy import Strategy
from qmp_core.trading_state import grows_exposure
from qmp_core.validation import ValidatedBatch
from qmp_execution.engine.book import QTY_EPSILON, Portfolio, Working
from qmp_execution.engine.broker import BrokerOrder, OrderAck, broker_order
from qmp_execution.engine.codes import (
    CODE_BROKER_REJECTED,
    CODE_CANCEL_RATE_LIMIT,
    CODE_HALTED,
    CODE_KILLED,
    CODE_REDUCING,
    CODE_REPEATED_EXECUTION,
    CODE_REPLACED,
    CODE_STOP_LOSS,
    CODE_STRATEGY_ERROR,
)
from qmp_execution.engine.config import EngineConfig, StrategyResult, limit_values
from qmp_execution.engine.denials import RepeatedDenials
from qmp_execution.engine.paper import Market, PaperBroker
from qmp_execution.engine.pretrade import (
    Candidate,
    Denial,
    PreTrade,
    RateLimiter,
    checked_weights,
    gate,
    pre_trade,
    tracks_exposure,
)
from qmp_execution.engine.sizing import es_scale
from qmp_execution.engine.slippage import BPS, SlippageConfig, SlippageModel
from qmp_execution.engine.stoploss import StopLoss
from qmp_execution.engine.window import PriceWindow, average_daily_volume, daily_vols

WITHDRAWN_KEPT = 4096  # withdrawn orders remembered until the venue is seen to end them

log = logging.getLogger(__name__)

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
        # Room for the price collar's bars even while it is off: an operator may turn it on (`configure`).
        collar_rows = config.price_collar_bars + 1
        self.window = PriceWindow(max(strategy.lookback, config.vol_window, config.adv_window, collar_rows) + 1)
        self.portfolio = Portfolio(strategy=strategy_id, cash=self.capital, venue=config.venue)
        self.broker = PaperBroker(strategy_id, config.paper)
        self.rate = RateLimiter(config.max_order_rate, round(config.order_rate_interval_s * NS_PER_SECOND))
        self.cancel_rate = RateLimiter(config.max_cancel_rate, round(config.cancel_rate_interval_s * NS_PER_SECOND))
        self.risk: RiskSnapshot | None = None
        self.es_scale = 1.0
        self.es_key = ""  # the risk snapshot's ES key (method_level) that scaled the last batch down, "" if none
        self.deployment_id = ""  # the strategy's rollout (rollout_id) new orders go out under; "" if none
        # Its budget within its account over the book's capital, at most 1: a strategy deployed with a budget of
        # 250,000 on a book of 1,000,000 sizes as a book of 250,000 would (the same returns, a quarter the size).
        self.budget_share = 1.0
        self.stop_losses: dict[str, StopLoss] = {}
        self.error: str | None = None
        self.error_at: int = 0
        self._fitted_at: int | None = None
        self._batches = 0
        self._last: StrategyResult | None = None
        self._last_market: Market | None = None
        self.denials = RepeatedDenials()
        # An external broker's: orders withdrawn here that it may still fill, and what `reconcile` booked
        # between batches (published with the next batch's result).
        self._withdrawn: dict[str, Working] = {}
        self._unpriced: set[str] = set()  # symbols of adopted working orders that have no arrival price yet
        self._late_fills: list[Fill] = []
        self._late_events: list[OrderEvent] = []
        # The kill switch's closing orders (symbol -> order id): they work under the halt until filled.
        self._flattening: dict[str, str] = {}
        # The repeated-execution throttle: fill times per (symbol, side); once tripped (`throttled` says why)
        # the strategy trades as halted, and asks for a halt, until it has been halted and resumed.
        self._fill_times: dict[tuple[str, str], deque[int]] = {}
        self.throttled = ""
        self._throttle_halted = False
        self._halt_request = ""

    @property
    def venue(self) -> str:
        return self.portfolio.venue

    def trades(self, venue: str) -> bool:
        """Return whether a batch of this venue is the strategy's; bind it to the venue if it has none yet."""
        if not self.portfolio.venue:
            self.portfolio.venue = venue
            log.info("strategy bound to a venue", extra={"strategy": self.strategy_id, "venue": venue})
        return self.portfolio.venue == venue

    @property
    def running(self) -> bool:
        return self.error is None

    def restore(self, snapshot: PortfolioSnapshot) -> None:
        """Take the book of a snapshot (recovery after a restart); the window is rebuilt by `warm`."""
        if snapshot.strategy != self.strategy_id:
            raise ValueError(f"snapshot of {snapshot.strategy!r} given to strategy {self.strategy_id!r}")
        self.portfolio = Portfolio.from_snapshot(snapshot)
        if not self.portfolio.venue:  # a snapshot written before books knew their venue
            self.portfolio.venue = self.config.venue
        self.stop_losses = {stop.symbol: StopLoss.from_message(stop) for stop in snapshot.stop_losses}
        self._withdrawn = {w.order_id: Working.from_message(w) for w in snapshot.withdrawn}
        self._last = None

    def snapshot(self) -> PortfolioSnapshot:
        """Return the book with the stop-losses in force and the withdrawn orders the venue may still fill (what
        recovery after a restart needs)."""
        stops = [self.stop_losses[symbol].to_message() for symbol in sorted(self.stop_losses)]
        withdrawn = [order.to_message() for order in self._withdrawn.values()]
        return msgspec.structs.replace(self.portfolio.to_snapshot(), stop_losses=stops, withdrawn=withdrawn)

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
        if symbol in self._flattening:
            log.info("stop-loss ignored: the kill switch is closing the position", extra=about)
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
        state = self._under_throttle(state)
        previous = {s: book.prices[s] for s in batch.symbols if s in book.prices}
        self.window.append(batch.ts_event, batch.symbols, batch.close, batch.volume)
        book.mark(batch.symbols, batch.close)
        if self._unpriced:  # adopted orders with no arrival price: the first close seen stands for it
            self._price_adopted()
        market = self._market(batch)
        self._flattening = {s: i for s, i in self._flattening.items()
                            if s in book.working and book.working[s].order_id == i}
        decisions, self._late_events = self._late_events + self._cancel_for_state(state, batch.ts_event), []
        closing, replaced, closes = self._stop_loss_orders(batch, market)
        closing |= frozenset(self._flattening)  # their target is 0 until the closing order has filled
        decisions += replaced
        if self.running and len(self.window) > self.strategy.lookback:
            decisions += self._trade(batch, state, market, previous, closing, closes)
        elif closes:  # a stopped or warming-up strategy still closes on a stop-loss
            decisions += self._check(closes, state, batch.ts_event, book.equity(), previous, "")
        decisions = self.denials.select(state, decisions)
        self._last_market = market
        if self.config.broker == "paper":
            fills, settled = self._book_answers(self.broker.execute(book.working, market), batch.ts_event)
            decisions += settled
        else:
            fills, self._late_fills = self._late_fills, []
        book.last_ts, book.last_seq = batch.ts_event, seq
        self._batches += 1
        self._last = StrategyResult(self.strategy_id, batch.ts_event, decisions, fills, self.snapshot(),
                                    self.error, es_scale=self.es_scale, halt_request=self._take_halt_request())
        return self._last

    def use_slippage(self, config: SlippageConfig) -> None:
        """Price the paper broker's next fills with other coefficients (e.g. a calibration)."""
        self.broker.model = SlippageModel(config)

    def apply_acks(self, acks: Sequence[OrderAck]) -> StrategyResult:
        """Book an external broker's answers to the last batch's orders; return (and cache) the new result.

        An answer holds everything the broker filled so far (`_book_answer`), so an order sent again after a
        restart, which the broker answers with fills booked before it, books only what is new. An order the
        broker rejected is withdrawn (OrderCanceled).
        """
        last = self._last
        if last is None:
            raise RuntimeError(f"{self.strategy_id}: broker answers with no batch traded")
        self._last = self.settle(last, acks)
        return self._last

    def settle(self, result: StrategyResult, acks: Sequence[OrderAck]) -> StrategyResult:
        """Return `result` with a broker's answers to its orders booked (fills, and withdrawals)."""
        fills, events = self._book_answers(acks, result.ts_event)
        return dataclasses.replace(result, decisions=list(result.decisions) + events,
                                   fills=list(result.fills) + fills, snapshot=self.snapshot(),
                                   halt_request=result.halt_request or self._take_halt_request())

    def adopt(self, changes: Sequence[tuple[str, float]], ts_event: int) -> StrategyResult:
        """Book positions found at the venue and not here (symbol, quantity to add), each as a fill at the
        book's last price with no fee: what reconciliation adopts. Its order id says where it came from."""
        fills = []
        for symbol, quantity in changes:
            price = self.portfolio.prices[symbol]
            order_id = f"{self.strategy_id}-adopted-{ts_event}-{symbol}"
            fill = Fill(strategy=self.strategy_id, order_id=order_id, fill_id=f"{order_id}-f1", symbol=symbol,
                        side=_side(quantity), quantity=abs(quantity), price=price, arrival_price=price,
                        slippage_bps=0.0, fee=0.0, ts_event=ts_event, deployment_id=self.deployment_id)
            self.portfolio.apply(fill)
            fills.append(fill)
        log.warning("positions adopted from the venue", extra={"strategy": self.strategy_id,
                                                                "changes": dict(changes)})
        return StrategyResult(self.strategy_id, ts_event, [], fills, self.snapshot(), self.error,
                              es_scale=self.es_scale)

    def adopt_orders(self, orders: Sequence[BrokerOrder], ts_event: int) -> tuple[list[str], list[str]]:
        """Take open orders found at the venue under this strategy's ids, unknown to the book, as working
        orders (what they filled is booked by the next reconciliation, from the venue's answer). Their
        arrival price is the order's, else the book's last price, else the first close seen. An order on a
        symbol that already has a working order here is not taken. Return (ids taken, ids not taken)."""
        taken: list[str] = []
        refused: list[str] = []
        book = self.portfolio
        for order in orders:
            if order.symbol in book.working or order.quantity <= QTY_EPSILON:
                refused.append(order.order_id)
                continue
            price = order.price if order.price > 0.0 else book.prices.get(order.symbol, 0.0)
            book.working[order.symbol] = Working(order_id=order.order_id, symbol=order.symbol, side=order.side,
                                                 quantity=order.quantity, price=price, ts_event=ts_event,
                                                 deployment_id=self.deployment_id)
            if not price > 0.0:
                self._unpriced.add(order.symbol)
            taken.append(order.order_id)
        if taken:
            log.warning("open orders adopted from the venue", extra={"strategy": self.strategy_id, "orders": taken})
        return taken, refused

    def _price_adopted(self) -> None:
        book = self.portfolio
        for symbol in list(self._unpriced):
            order, price = book.working.get(symbol), book.prices.get(symbol, 0.0)
            if order is None or order.price > 0.0:
                self._unpriced.discard(symbol)
            elif price > 0.0:
                order.price = price
                self._unpriced.discard(symbol)

    def kill(self, kill_id: str, flatten: bool, reason: str, ts_event: int) -> StrategyResult:
        """The kill switch, now rather than at the next batch: withdraw every working order; with `flatten`,
        send an order closing each position (it only reduces exposure, so it works under the halt until
        filled; a stop-loss in force gives way to it). Return what it did as a result of its own."""
        book = self.portfolio
        why = f"{CODE_KILLED}: {reason}"
        events: list[OrderEvent] = [self._cancel(book.working[symbol], ts_event, why, CODE_KILLED)
                                    for symbol in sorted(book.working)]
        if flatten:
            self.stop_losses.clear()
            for symbol in sorted(book.positions):
                position, price = book.positions[symbol], book.prices.get(symbol, 0.0)
                if abs(position) <= QTY_EPSILON or not price > 0.0:
                    continue
                order_id = f"{self.strategy_id}-kill-{kill_id}-{symbol}"
                side = _side(-position)
                book.working[symbol] = Working(order_id=order_id, symbol=symbol, side=side, quantity=abs(position),
                                               price=price, ts_event=ts_event, deployment_id=self.deployment_id)
                self._flattening[symbol] = order_id
                book.orders_total += 1
                events.append(OrderAccepted(strategy=self.strategy_id, order_id=order_id, symbol=symbol, side=side,
                                            quantity=abs(position), price=price, ts_event=ts_event,
                                            reason=f"{why} (flatten)", reason_code=CODE_KILLED,
                                            deployment_id=self.deployment_id))
        log.warning("kill switch", extra={"strategy": self.strategy_id, "kill_id": kill_id, "flatten": flatten,
                                          "events": len(events)})
        return StrategyResult(self.strategy_id, ts_event, events, [], self.snapshot(), self.error,
                              es_scale=self.es_scale)

    def open_orders(self) -> list[BrokerOrder]:
        """Orders an external broker may still fill: those working here, and those withdrawn here that the
        broker has not yet been seen to end (a cancel can cross a fill at the venue)."""
        return [broker_order(self.strategy_id, w)
                for w in (*self.portfolio.working.values(), *self._withdrawn.values())]

    def reconcile(self, acks: Sequence[OrderAck], ts_event: int) -> list[Fill]:
        """Book what an external broker filled beyond what is booked; forget the orders it has ended.

        Asking twice books nothing twice (`_book_answer`). The fills, and the cancels of orders the venue
        ended unfilled, go out with the next batch's result.
        """
        by_id = {w.order_id: w for w in self.portfolio.working.values()}
        booked: list[Fill] = []
        for ack in acks:
            order = by_id.get(ack.order_id) or self._withdrawn.get(ack.order_id)
            if order is None:
                continue
            booked += self._book_answer(order, ack, ts_event)
            if order.order_id in by_id:
                self._late_events += self._settle(order, ack, ts_event)
            elif ack.status in ("filled", "canceled", "rejected") or order.remaining <= QTY_EPSILON:
                del self._withdrawn[order.order_id]
        self._late_fills += booked
        return booked

    def _book_answers(self, acks: Sequence[OrderAck], ts_event: int) -> tuple[list[Fill], list[OrderEvent]]:
        """Book a broker's answers about working orders (the paper broker's, an external broker's alike);
        return the fills booked and the cancels of the orders it ended unfilled."""
        by_id = {w.order_id: w for w in self.portfolio.working.values()}
        fills: list[Fill] = []
        events: list[OrderEvent] = []
        for ack in acks:
            order = by_id.get(ack.order_id)
            if order is not None:
                fills += self._book_answer(order, ack, ts_event)
                events += self._settle(order, ack, ts_event)
        return fills, events

    def _book_answer(self, order: Working, ack: OrderAck, ts_event: int) -> list[Fill]:
        """Book the part of a broker's answer not booked yet (an answer holds everything filled so far).

        Where what is booked ends on one of the answer's fills (a broker that reports each execution, the
        paper broker), each later fill is booked at its own price and fee. Otherwise (a venue that reports one
        growing average) the rest is booked as one fill at the price that makes the booked fills' value equal
        the broker's, with its share of the broker's fees.
        """
        tolerance = QTY_EPSILON * max(1.0, order.quantity)
        seen = 0.0
        for i, reported in enumerate(ack.fills):
            if abs(seen - order.filled) <= tolerance:
                booked = []
                for later in ack.fills[i:]:
                    quantity = min(later.quantity, order.remaining)  # never more than the order
                    share = quantity / later.quantity if later.quantity > 0.0 else 0.0
                    fill = self._book_fill(order, quantity, later.price, later.fee * share, ts_event,
                                           later.participation, later.model_bps)
                    if fill is not None:
                        booked.append(fill)
                return booked
            if seen > order.filled:
                break
            seen += reported.quantity
        total = math.fsum(f.quantity for f in ack.fills)
        missing = min(total, order.quantity) - order.filled
        if missing <= tolerance:
            return []
        value = math.fsum(f.quantity * f.price for f in ack.fills)
        price = (value - order.filled_value) / missing if order.filled_value > 0.0 else value / total
        if not (math.isfinite(price) and price > 0.0):  # a venue average that moved oddly: take its mean
            price = value / total
        fee = math.fsum(f.fee for f in ack.fills) * missing / total
        fill = self._book_fill(order, missing, price, fee, ts_event)
        return [fill] if fill is not None else []

    def _book_fill(self, order: Working, quantity: float, price: float, fee: float, ts_event: int,
                   participation: float = 0.0, model_bps: float | None = None) -> Fill | None:
        """Book one fill of a broker's on the order and the book; None for a quantity of nothing. A venue's
        fill (no `model_bps`) is priced by the slippage model here, at the last bar's volatility and volume."""
        if quantity <= QTY_EPSILON:
            return None
        market = self._last_market
        row = market.index.get(order.symbol) if market is not None else None
        sigma = float(market.sigma[row]) if market is not None and row is not None else 0.0
        adv = float(market.adv[row]) if market is not None and row is not None else 0.0
        if model_bps is None and market is not None:
            model_bps = self.broker.model.cost(quantity, sigma, adv, market.exec_days) / BPS
        order.filled += quantity
        order.filled_value += quantity * price
        order.fills += 1
        remaining = order.remaining
        if remaining <= QTY_EPSILON * max(1.0, order.quantity):
            remaining = 0.0
        direction = 1.0 if order.side == "BUY" else -1.0
        arrival = order.price if order.price > 0.0 else price  # an adopted order no bar has priced yet
        fill = Fill(
            strategy=self.strategy_id, order_id=order.order_id, fill_id=f"{order.order_id}-f{order.fills}",
            symbol=order.symbol, side=order.side, quantity=quantity, price=price, arrival_price=arrival,
            slippage_bps=direction * (price - arrival) / arrival / BPS,
            fee=fee or quantity * price * self.config.paper.fee_bps * BPS, ts_event=ts_event,
            participation=participation, daily_vol=sigma if math.isfinite(sigma) else 0.0,
            adv=adv if math.isfinite(adv) else 0.0, remaining=remaining, deployment_id=order.deployment_id,
            model_slippage_bps=model_bps if model_bps is not None and math.isfinite(model_bps) else None,
        )
        self.portfolio.apply(fill)
        self._count_fill(fill)
        return fill

    # ------------------------------------------------------------ the repeated-execution throttle
    def _count_fill(self, fill: Fill) -> None:
        """Trip the throttle when a symbol and side fill `max_repeated_fills` times within the window."""
        limit = self.config.max_repeated_fills
        if limit <= 0:
            return
        window_ns = round(self.config.repeated_fills_window_s * NS_PER_SECOND)
        times = self._fill_times.setdefault((fill.symbol, fill.side), deque())
        times.append(fill.ts_event)
        while times and times[0] < fill.ts_event - window_ns:
            times.popleft()
        if len(times) >= limit and not self.throttled:
            self.throttled = (f"{CODE_REPEATED_EXECUTION}: {len(times)} fills of {fill.symbol} {fill.side} within "
                              f"{self.config.repeated_fills_window_s:g}s")
            self._halt_request = self.throttled
            log.error("repeated executions: the strategy stops until a person resumes it",
                      extra={"strategy": self.strategy_id, "reason": self.throttled})

    def _under_throttle(self, state: TradingState) -> TradingState:
        """The state to trade under: halted while the throttle holds; it holds until the strategy has been
        halted (by the deployer, on this host's request) and then resumed."""
        if not self.throttled:
            return state
        if state.status == "HALTED":
            self._throttle_halted = True
            return state
        if self._throttle_halted:  # halted, then resumed by a person: the throttle is lifted
            self.throttled, self._throttle_halted = "", False
            self._fill_times.clear()
            return state
        return msgspec.structs.replace(state, status="HALTED", reason=self.throttled)

    def _take_halt_request(self) -> str:
        request, self._halt_request = self._halt_request, ""
        return request

    def _settle(self, order: Working, ack: OrderAck, ts_event: int) -> list[OrderEvent]:
        """Withdraw a working order the broker ended unfilled (OrderCanceled); drop one filled to the end."""
        if ack.status in ("rejected", "canceled") and order.remaining > QTY_EPSILON:
            code = CODE_BROKER_REJECTED
            canceled = self._cancel(order, ts_event, f"{code}: {ack.reason or ack.status}", code)
            self._withdrawn.pop(order.order_id, None)  # the broker has ended it: nothing more will fill
            return [canceled]
        if order.remaining <= QTY_EPSILON * max(1.0, order.quantity):
            self.portfolio.working.pop(order.symbol, None)
        return []

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
            if self._flattening.get(symbol) == order.order_id:
                continue  # the kill switch's closing order: it reduces exposure, and works until filled
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
        if self.config.broker == "external":  # the cancel may cross a fill at the venue: `reconcile` asks
            self._withdrawn[order.order_id] = order
            while len(self._withdrawn) > WITHDRAWN_KEPT:
                del self._withdrawn[next(iter(self._withdrawn))]
        return OrderCanceled(strategy=self.strategy_id, order_id=order.order_id, symbol=order.symbol,
                             side=order.side, quantity=order.remaining, price=order.price, ts_event=ts_event,
                             reason=reason, reason_code=code, filled_quantity=order.filled,
                             deployment_id=order.deployment_id)

    # ------------------------------------------------------------ stop-loss closes
    def _stop_loss_orders(self, batch: ValidatedBatch, market: Market) -> tuple[
        frozenset[str], list[OrderEvent], list[Candidate]
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
        candidates: list[Candidate] = []
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
            candidates.append(Candidate(symbol, row, -position, float(batch.close[row]), 0.0, [], 0.0, stop))
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
               closing: frozenset[str] = frozenset(), closes: Sequence[Candidate] = ()) -> list[OrderEvent]:
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

    def _orders(self, batch: ValidatedBatch, weights: np.ndarray, gross: float, state: TradingState,
                market: Market, previous: Mapping[str, float], closing: frozenset[str] = frozenset(),
                closes: Sequence[Candidate] = ()) -> list[OrderEvent]:
        config, book = self.config, self.portfolio
        symbols = batch.symbols
        n = len(symbols)
        price = batch.close
        equity = book.equity()
        size = state.allocation * state.size_multiplier * self.budget_share
        sizing = es_scale(self.risk, self.config.es_keys, self.es_budget, gross * size,
                          book.gross_exposure() / equity if equity > 0.0 else 0.0)
        self.es_scale, es_note, self.es_key = sizing.scale, sizing.note, sizing.key
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
        now_ns = self.clock.now_ns()
        for i in np.flatnonzero(replace).tolist():
            order = book.working[symbols[i]]
            if not self.cancel_rate.allow(now_ns):  # the working order stays; the new order is not sent
                keep[i] = True
                events.append(self._denied(
                    batch.ts_event, symbols[i], float(need[i]), float(price[i]),
                    f"{CODE_CANCEL_RATE_LIMIT}: more than {config.max_cancel_rate} cancels in "
                    f"{config.cancel_rate_interval_s:g}s; the working order {order.order_id} stays",
                    CODE_CANCEL_RATE_LIMIT))
                continue
            events.append(self._cancel(order, batch.ts_event, "REPLACED: the working order overshoots the new target",
                                       CODE_REPLACED))
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
            Candidate(symbols[i], i, float(quantity[i]), float(price[i]), float(weights[i]),
                       (["max_order_fraction" if cap_fraction[i] <= cap_volume[i] else "participation_limit"]
                        if capped[i] else []), float(est_cost[i]))
            for i in np.flatnonzero(trade).tolist()
        ]
        candidates += closes
        context = (f"target w={{w:+.4f}} × equity {equity:,.0f} × allocation {state.allocation:.2f} × size "
                   f"{state.size_multiplier:.2f} × ES scale {self.es_scale:.3f}")
        if self.budget_share != 1.0:
            context += f" × budget share {self.budget_share:.4f}"
        if es_note:
            context += f" ({es_note})"
        decisions = self._check(candidates, state, batch.ts_event, equity, previous, context)
        decisions.sort(key=lambda d: d.symbol)
        return events + decisions

    def _check(self, candidates: list[Candidate], state: TradingState, ts_event: int, equity: float,
               previous: Mapping[str, float], context: str) -> list[OrderEvent]:
        """Gate and pre-trade-check candidates, sells first (they free cash); accept into the working book."""
        config, book = self.config, self.portfolio
        fee = config.paper.fee_bps * BPS
        committed = math.fsum(w.remaining * w.price * (1.0 + fee) for w in book.working.values() if w.side == "BUY")
        exposure: dict[str, float] = {}
        marks: dict[str, float] = {}
        if tracks_exposure(config):  # where each position goes once the working orders fill
            exposure, marks = dict(book.positions), dict(book.prices)
            for working in book.working.values():
                exposure[working.symbol] = exposure.get(working.symbol, 0.0) + working.signed_remaining
        reference = self._collar_reference([c.symbol for c in candidates]) if config.price_collar > 0.0 else {}
        ctx = PreTrade(config=config, previous=previous,
                       available=book.cash - committed + config.cash_borrow_limit * max(equity, 0.0), fee=fee,
                       now_ns=self.clock.now_ns(), rate=self.rate, exposure=exposure, marks=marks,
                       reference=reference)
        decisions: list[OrderEvent] = []
        # Stop-loss closes first (the rate limit must not hold them back), then sells (they free cash).
        for c in sorted(candidates, key=lambda c: (c.stop is None, c.quantity > 0.0, c.symbol)):
            c.allowed, reason, code = gate(c.quantity, book.positions.get(c.symbol, 0.0), state)
            if not reason and c.allowed != c.quantity:
                c.caps.append("reducing (clipped at flat)")
            denial = Denial(reason, code) if reason else pre_trade(c, ctx)
            if denial is not None:
                why = denial.reason if c.stop is None else f"{denial.reason}; {c.stop.reason}"
                decisions.append(self._denied(ts_event, c.symbol, c.allowed or c.quantity, c.price, why, denial.code))
                continue
            ctx.commit(c)
            decisions.append(self._accept(ts_event, c, c.allowed, context))
        return decisions

    def _collar_reference(self, symbols: Sequence[str]) -> dict[str, float]:
        """The price collar's reference: each symbol's mean close over the bars before this one."""
        if not symbols:
            return {}
        rows = self.window.closes(self.config.price_collar_bars + 1)[:-1]
        if rows.shape[0] == 0:
            return {}
        with warnings.catch_warnings():  # a symbol with no close in the window has no reference: NaN, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            means = np.nanmean(rows[:, self.window.columns(symbols)], axis=0)
        return {s: float(m) for s, m in zip(symbols, means.tolist(), strict=True) if math.isfinite(m) and m > 0.0}

    def _accept(self, ts_event: int, c: Candidate, quantity: float, context: str) -> OrderAccepted:
        order_id = self._order_id(ts_event, c.symbol)
        side = _side(quantity)
        self.portfolio.working[c.symbol] = Working(order_id=order_id, symbol=c.symbol, side=side,
                                                   quantity=abs(quantity), price=c.price, ts_event=ts_event,
                                                   deployment_id=self.deployment_id)
        self.portfolio.orders_total += 1
        caps = f"; capped by {', '.join(c.caps)}" if c.caps else ""
        if c.stop is not None:
            c.stop.order_id = order_id
            return OrderAccepted(strategy=self.strategy_id, order_id=order_id, symbol=c.symbol, side=side,
                                 quantity=abs(quantity), price=c.price, ts_event=ts_event,
                                 reason=c.stop.reason + caps, reason_code=CODE_STOP_LOSS,
                                 deployment_id=self.deployment_id)
        return OrderAccepted(strategy=self.strategy_id, order_id=order_id, symbol=c.symbol, side=side,
                             quantity=abs(quantity), price=c.price, ts_event=ts_event,
                             reason=context.format(w=c.weight) + caps, es_key=self.es_key,
                             deployment_id=self.deployment_id)

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
        scale = equity * state.allocation * state.size_multiplier * self.budget_share
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
            reason_code=code, deployment_id=self.deployment_id,
        )

    def _order_id(self, ts_event: int, symbol: str) -> str:
        return f"{self.strategy_id}-{ts_event}-{symbol}"

    def configure(self, config: EngineConfig) -> None:
        """Trade under `config` from the next order on (an operator's pre-trade limits changed)."""
        if (config.max_order_rate, config.order_rate_interval_s) != (self.config.max_order_rate,
                                                                     self.config.order_rate_interval_s):
            self.rate = RateLimiter(config.max_order_rate, round(config.order_rate_interval_s * NS_PER_SECOND))
        if (config.max_cancel_rate, config.cancel_rate_interval_s) != (self.config.max_cancel_rate,
                                                                       self.config.cancel_rate_interval_s):
            self.cancel_rate = RateLimiter(config.max_cancel_rate,
                                           round(config.cancel_rate_interval_s * NS_PER_SECOND))
        self.config = config

    def status(self, state: TradingState) -> dict[str, Any]:
        book = self.portfolio
        return {
            "running": self.running, "error": self.error, "status": state.status, "reason": state.reason,
            "allocation": state.allocation, "size_multiplier": state.size_multiplier,
            "orders": book.orders_total, "denied": book.denied_total, "fills": book.fills_total,
            "working": len(book.working), "capital": self.capital, "equity": book.equity(),
            "realized_pnl": book.realized_pnl, "unrealized_pnl": book.unrealized_pnl(), "fees": book.fees,
            "es_budget": self.es_budget, "es_scale": self.es_scale, "limits": limit_values(self.config),
            "risk_ts": self.risk.ts_event if self.risk else 0, "last_ts": book.last_ts, "last_seq": book.last_seq,
            "window_rows": len(self.window), "lookback": self.strategy.lookback,
            "stop_losses": sorted(self.stop_losses), "deployment_id": self.deployment_id,
            "budget_share": self.budget_share,
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
