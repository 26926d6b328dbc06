"""Decode → engine → publish. No decisions here: the engine makes them, handlers carry them out.

Order of side effects for one portfolio snapshot, fixed so that replays are deterministic:
control requests (await each reply) → stop-loss ClosePosition orders (stream) → breaker events (stream,
table) → snapshot on the stream → risk_snapshots row. The collector in lockstep mode waits for the
snapshot before it sends the next batch, so by then the halt has been applied and the monitoring table is
up to date. The row comes after the snapshot so that its write (one round trip with the positions as
JSON) is off a replay's critical path: it overlaps the next batch's work. The message is acknowledged
only once the row is written, so a crash or a database outage in between redelivers it: the snapshot is
published again under the same Msg-Id (dropped as a duplicate) and the row written then. On a live clock
a timer (`run_checks`) evaluates the breakers that change without input (stale data, news windows) every
`check_interval_s`; in replay every snapshot does, at its own timestamp. News calendar entries come from a
file at start (`news_calendar`) and from `qmp.md.news.events`.

Bad input (undecodable, invalid, out of order) is dead-lettered with its reason and acknowledged; only
transient failures (database, stream publish) raise, so the message is redelivered.
"""

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec
from faststream.nats import NatsMessage
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock, ReplayClock
from qmp_core.db import connect_pool
from qmp_core.lockstep import Progress
from qmp_core.messages import (
    BarBatch,
    BreakerEvent,
    ClosePosition,
    ControlReply,
    Halt,
    NewsEvent,
    PortfolioSnapshot,
    RiskSnapshot,
    TradingState,
    codec,
    encode,
)
from qmp_core.retry import Unavailable
from qmp_core.service import Intake
from qmp_core.telemetry import extract_context, messaging, tracer
from qmp_risk.config import RiskSettings
from qmp_risk.engine import BatchRejected, BreakerCommand, RiskEngine, SnapshotRejected
from qmp_risk.news import load_calendar
from qmp_risk.store import RiskStore

SERVICE = "risk"
MAX_REJECTED_ROWS_REPORTED = 50
RETRY_BACKOFF_S = 0.2
BARS_STORED_KEPT = 4096  # event times whose bars' store time is remembered for the batch-to-snapshot latency

BAR_POLL_S = 1.0  # how often a long wait for bars asks the market-data consumer whether more are coming
log = logging.getLogger("qmp_risk")
_tracer = tracer("qmp_risk")




def _stored_s(msg: NatsMessage) -> float | None:
    """When the stream stored a JetStream message (epoch seconds); None for a core NATS message."""
    try:
        return msg.raw_message.metadata.timestamp.timestamp()
    except (NatsError, ValueError, IndexError, AttributeError):
        return None


def _consumer(msg: NatsMessage) -> str:
    """The durable consumer a JetStream message came through ("" for a core NATS message)."""
    try:
        return msg.raw_message.metadata.consumer or ""
    except (NatsError, ValueError, IndexError, AttributeError):
        return ""


def _source_id(msg: NatsMessage) -> str | None:
    """Return stream:sequence of a JetStream message, so a redelivered rejection dedups in the DLQ."""
    try:
        metadata = msg.raw_message.metadata
    except (NatsError, ValueError, IndexError):
        return None  # a core NATS message (e.g. qmp.state.*) has no stream sequence
    return f"{metadata.stream}:{metadata.sequence.stream}"


class RiskHandlers:
    """The risk service's message handlers around one RiskEngine."""

    def __init__(self, engine: RiskEngine, clock: Clock, settings: RiskSettings,
                 connection: Callable[[], Client]) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self._connection = connection
        self._js: JetStreamContext | None = None
        self.pool: asyncpg.Pool | None = None
        self._bars = Progress("bars")  # step 3 of the lockstep replay (qmp_core.lockstep)
        self._bars_in: Intake[BarBatch] = Intake(BarBatch, SERVICE, clock)
        self._portfolio_in: Intake[PortfolioSnapshot] = Intake(PortfolioSnapshot, SERVICE, clock)
        self._state_in: Intake[TradingState] = Intake(TradingState, SERVICE, clock)
        self._news_in: Intake[NewsEvent] = Intake(NewsEvent, SERVICE, clock)
        self._reply_codec = codec(ControlReply)
        # When each bar batch was stored, by event time: a snapshot of that time reports how long it took
        # from the market data to risk (`qmp_batch_to_snapshot_seconds`). Only the latest few are kept.
        self._bars_stored: OrderedDict[int, float] = OrderedDict()
        self.snapshots_published = 0
        self.stop_losses_sent = 0
        self.commands_sent = 0
        self.commands_failed = 0

    # ------------------------------------------------------------------ resources
    async def open(self) -> None:
        """Warm the kernels up, load the news calendar file (fail fast on a bad one), open the database pool."""
        started = time.perf_counter()
        self.engine.warm_up()
        log.info("kernels ready", extra={"seconds": round(time.perf_counter() - started, 3)})
        if self.settings.news_calendar:
            for event in load_calendar(self.settings.news_calendar):
                self.engine.on_news(event)
        if self.pool is None:
            self.pool = await connect_pool(self.settings.database_url)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @property
    def nc(self) -> Client:
        return self._connection()

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            self._js = self.nc.jetstream()
        return self._js

    def health_detail(self) -> dict[str, Any]:
        engine = self.engine.detail()
        return {
            # the breaker thresholds in force, shown by `qmp status`
            "drawdown_halt": self.settings.drawdown_halt, "vol_ratio_limit": self.settings.vol_ratio_limit,
            "stop_loss": self.settings.stop_loss, "account_drawdown_halt": self.settings.account_drawdown_halt,
            "account_es_limit": self.settings.account_es_limit,
            "accounts": {account: list(self.engine.accounts.members_of(account))
                         for account in sorted(set(self.engine.accounts.members.values()))},
            "strategies_tracked": engine["strategies"], "symbols_tracked": engine["symbols"],
            "snapshots_published": self.snapshots_published, "dead_letters": self.dead_letters,
            "commands_sent": self.commands_sent, "commands_failed": self.commands_failed,
            "stop_losses_sent": self.stop_losses_sent, "bar_rows": engine["bar_rows"],
            "bar_watermark": self.engine.bar_watermark, "news_events": engine["news_events"],
            "riskiest_historical_99": engine.get("riskiest_historical_99", {}),
            "garch_refits": engine.get("garch_refits", 0),
        }

    # ------------------------------------------------------------------ market data
    async def on_bars(self, msg: NatsMessage) -> None:
        """Decode and validate a bar batch into the price history; dead-letter what cannot be used."""
        subject = msg.raw_message.subject
        with _tracer.start_as_current_span("risk.bars", context=extract_context(msg.headers), kind=SpanKind.CONSUMER,
                                           attributes=messaging(subject, "process", _consumer(msg))):
            batch = await self._bars_in.decode(self.js, subject, msg.body, _source_id(msg),
                                               bus.content_type(msg.headers))
            if batch is None:
                return
            self._observe(batch.ts_event)
            try:
                validated = self.engine.on_bars(batch)
            except BatchRejected as error:
                await self._reject(msg, f"rejected batch from {batch.venue}: {error}")
                return
            stored = _stored_s(msg)
            if stored is not None and batch.ts_event not in self._bars_stored:
                self._bars_stored[batch.ts_event] = stored
                if len(self._bars_stored) > BARS_STORED_KEPT:
                    self._bars_stored.popitem(last=False)
            if validated is None:
                log.debug("redelivered bar batch ignored", extra={"venue": batch.venue, "ts_event": batch.ts_event})
                return
            if validated.rejected:
                rows = "; ".join(f"{symbol}: {reason}" for symbol, reason in
                                 validated.rejected[:MAX_REJECTED_ROWS_REPORTED])
                more = len(validated.rejected) - MAX_REJECTED_ROWS_REPORTED
                suffix = f"; and {more} more" if more > 0 else ""
                await self._reject(msg, f"{len(validated.rejected)} invalid rows at ts_event={batch.ts_event}: "
                                        f"{rows}{suffix}", suffix_id="rows")
            self._bars.advanced()

    # ------------------------------------------------------------------ portfolios
    async def on_portfolio(self, msg: NatsMessage) -> None:
        """Turn a portfolio snapshot into a risk snapshot, breaker events and control commands."""
        subject = msg.raw_message.subject
        with _tracer.start_as_current_span("risk.portfolio", context=extract_context(msg.headers),
                                           kind=SpanKind.CONSUMER,
                                           attributes=messaging(subject, "process", _consumer(msg))) as span:
            portfolio = await self._portfolio_in.decode(self.js, subject, msg.body, _source_id(msg))
            if portfolio is None:
                return
            self._observe(portfolio.ts_event)
            await self._wait_for_bars(portfolio.ts_event)
            try:
                result = self.engine.on_portfolio(portfolio)
            except SnapshotRejected as error:
                await self._reject(msg, f"rejected portfolio snapshot: {error}")
                return
            snapshot = result.snapshot
            span.set_attributes({"qmp.strategy": snapshot.strategy, "qmp.ts_event": snapshot.ts_event,
                                 "qmp.risk.status": snapshot.status, "qmp.duplicate": result.duplicate})
            for command in result.commands:
                await self._send_control(snapshot.strategy, command,
                                         wait=self.settings.control_delivery == "before_snapshot")
            for other in result.others:  # the other strategies of an account in breach
                for command in other.commands:
                    await self._send_control(other.strategy, command,
                                             wait=self.settings.control_delivery == "before_snapshot")
            for close in result.closes:
                await self._publish_close(close)
            for event in [*result.events, *(event for other in result.others for event in other.events)]:
                await self._publish_event(event)
            await bus.publish(self.js, subjects.snapshot(snapshot.strategy), snapshot,
                              msg_id=f"{snapshot.strategy}:{snapshot.ts_event}")
            self.snapshots_published += 1  # counted when on the bus, where readers see it (the row follows)
            await self._write_snapshot(snapshot)
            metrics.observe_snapshot(snapshot.strategy, snapshot.var, snapshot.es, snapshot.drawdown,
                                     snapshot.drawdown_24h, snapshot.drawdown_max, snapshot.equity)
            metrics.RISK_VOLATILITY_RATIO.labels(snapshot.strategy).set(snapshot.volatility_ratio)
            metrics.observe_breakers(snapshot.strategy, snapshot.breakers)
            stored = self._bars_stored.get(snapshot.ts_event)
            if stored is not None and not result.duplicate:
                metrics.BATCH_TO_SNAPSHOT.labels(snapshot.strategy).observe(max(0.0, time.time() - stored))
            log.debug("risk snapshot", extra={"strategy": snapshot.strategy, "ts_event": snapshot.ts_event,
                                              "status": snapshot.status, "var": snapshot.var,
                                              "drawdown_24h": snapshot.drawdown_24h})

    async def _wait_for_bars(self, ts_event: int) -> None:
        """Wait until the bars of ts_event are in, so VaR never depends on arrival order.

        `bar_wait_s` at first; then on, up to `bar_wait_max_s`, while risk's market-data consumer still has bars
        to deliver or cannot say (its stream's leader being elected after a server died: seconds). Only bars
        that will not come (a feed that sent none for this time, a batch rejected) are given up on. A bounded
        wait alone once let a stream election shift the VaR window by a day (the cluster chaos test).
        """
        def arrived() -> bool:
            return self.engine.bar_watermark >= ts_event

        if arrived() or self.settings.bar_wait_s <= 0:
            return
        if await self._bars.wait_until(arrived, self.settings.bar_wait_s, counted=False):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.bar_wait_max_s - self.settings.bar_wait_s
        while loop.time() < deadline and await self._bars_on_their_way():
            log.info("waiting for the bars of a portfolio's timestamp: still on their way",
                     extra={"ts_event": ts_event, "bar_watermark": self.engine.bar_watermark})
            if await self._bars.wait_until(arrived, min(BAR_POLL_S, max(0.0, deadline - loop.time())),
                                           counted=False):
                return
        self._bars.timeouts += 1
        log.warning("no bars for portfolio timestamp; using the bars so far",
                    extra={"ts_event": ts_event, "bar_watermark": self.engine.bar_watermark})

    async def _bars_on_their_way(self) -> bool:
        """Whether risk's market-data consumer has bars not yet delivered or acknowledged, or cannot tell."""
        try:
            info = await self.js.consumer_info(subjects.STREAM_MARKET_DATA, self.settings.consumer("bars"),
                                               timeout=BAR_POLL_S)
        except (NatsError, NatsTimeoutError, TimeoutError):
            return True  # no answer: the stream has no leader yet, and the bars may well be in it
        return bool(info.num_pending or info.num_ack_pending)

    async def _send_control(self, strategy: str, command: BreakerCommand, wait: bool = False) -> None:
        """Send a breaker's command as a request and record the answer; retry a timeout (or a reply saying
        `retry`: a deployer that is starting) a few times.

        Unanswered after the attempts: with `wait`, raise `Unavailable`, so the portfolio snapshot is
        handled again (its result, commands included, is repeated: the deployer applies a command id once)
        until the deployer answers; without, the engine undoes the transition and the next snapshot sends
        the command again.
        """
        payload = encode(command.command)
        urgent = isinstance(command.command, Halt)
        with _tracer.start_as_current_span("risk.control", kind=SpanKind.PRODUCER, attributes={
            **messaging(subjects.control(strategy, SERVICE, urgent=urgent), "publish"),
            "qmp.strategy": strategy, "qmp.breaker": command.breaker,
            "qmp.command_id": command.command.command_id,
        }):
            for attempt in range(1, self.settings.control_attempts + 1):
                try:
                    subject = subjects.control(strategy, SERVICE, urgent=urgent)
                    reply_msg = await self.nc.request(subject, payload,
                                                      timeout=self.settings.control_timeout_s,
                                                      headers=bus.headers_for(None))
                except (NatsTimeoutError, NoRespondersError) as error:
                    log.warning("control request unanswered", extra={
                        "strategy": strategy, "command_id": command.command.command_id, "attempt": attempt,
                        "error": type(error).__name__})
                    await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                    continue
                self.commands_sent += 1
                try:
                    reply = self._reply_codec.decode(reply_msg.data)
                except msgspec.DecodeError as error:
                    log.error("undecodable control reply", extra={
                        "strategy": strategy, "command_id": command.command.command_id, "error": str(error)})
                    return
                if reply.retry:  # the deployer cannot decide yet (starting): as unanswered, send it again
                    log.warning("control request deferred", extra={
                        "strategy": strategy, "command_id": command.command.command_id, "attempt": attempt,
                        "reason": reply.reason})
                    await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                    continue
                self.engine.on_control_reply(strategy, command, reply.accepted)
                if reply.accepted:
                    log.info("breaker command accepted", extra={
                        "strategy": strategy, "breaker": command.breaker, "command_id": reply.command_id,
                        "duplicate": reply.duplicate})
                else:
                    log.error("breaker command rejected", extra={
                        "strategy": strategy, "breaker": command.breaker,
                        "command_id": command.command.command_id, "reason": reply.reason})
                return
            self.commands_failed += 1
            if wait:
                raise Unavailable(f"the deployer did not answer breaker command {command.command.command_id} "
                                  f"({command.breaker}) in {self.settings.control_attempts} attempts")
            self.engine.on_command_failed(strategy, command)
            log.error("breaker command undelivered; the next snapshot retries it", extra={
                "strategy": strategy, "breaker": command.breaker, "command_id": command.command.command_id,
                "attempts": self.settings.control_attempts})

    async def _publish_close(self, close: ClosePosition) -> None:
        """Publish a stop-loss order on qmp.risk.<strategy>.stoploss (execution may act on it)."""
        with _tracer.start_as_current_span("risk.stop_loss", kind=SpanKind.PRODUCER, attributes={
            **messaging(subjects.stop_loss(close.strategy), "publish"), "qmp.strategy": close.strategy,
            "qmp.symbol": close.symbol, "qmp.command_id": close.command_id,
        }):
            await bus.publish(self.js, subjects.stop_loss(close.strategy), close, msg_id=close.command_id)
            self.stop_losses_sent += 1
            log.warning("stop-loss", extra={"strategy": close.strategy, "symbol": close.symbol,
                                            "quantity": close.quantity, "reason": close.reason})

    async def _publish_event(self, event: BreakerEvent) -> None:
        kind = type(event).__name__
        await self._store().write_breaker_event(event)
        await bus.publish(self.js, subjects.breaker_events(event.strategy), event,
                          msg_id=f"{event.strategy}:{event.breaker}:{kind}:{event.ts_event}")
        if kind == "BreakerTripped":
            metrics.BREAKER_TRIPS.labels(event.strategy, event.breaker).inc()
        log.warning("breaker event", extra={"event": kind, "strategy": event.strategy, "breaker": event.breaker,
                                            "value": event.value, "threshold": event.threshold,
                                            "action": event.action, "detail": event.detail})

    async def _write_snapshot(self, snapshot: RiskSnapshot) -> None:
        await self._store().write_snapshot(snapshot)

    def _store(self) -> RiskStore:
        if self.pool is None:
            raise RuntimeError("risk handlers used before open(): no database pool")
        return RiskStore(self.pool)

    # ------------------------------------------------------------------ control state
    async def on_state(self, msg: NatsMessage) -> None:
        """Track a strategy's effective trading state; a resume after a halt releases the drawdown latch."""
        with _tracer.start_as_current_span("risk.state", context=extract_context(msg.headers),
                                           kind=SpanKind.CONSUMER,
                                           attributes=messaging(msg.raw_message.subject, "process")):
            state = await self._state_in.decode(self.js, msg.raw_message.subject, msg.body, _source_id(msg))
            if state is None:
                return
            for event in self.engine.on_trading_state(state):
                await self._publish_event(event)

    # ------------------------------------------------------------------ news and timed checks
    async def on_news(self, msg: NatsMessage) -> None:
        """Add a NewsEvent to the calendar; dead-letter one that does not decode or has an empty window."""
        with _tracer.start_as_current_span("risk.news", context=extract_context(msg.headers),
                                           kind=SpanKind.CONSUMER,
                                           attributes=messaging(msg.raw_message.subject, "process", _consumer(msg))):
            event = await self._news_in.decode(self.js, msg.raw_message.subject, msg.body, _source_id(msg))
            if event is None:
                return
            try:
                self.engine.on_news(event)
            except ValueError as error:
                await self._reject(msg, f"invalid NewsEvent: {error}")
                return
            log.info("news event", extra={"event_id": event.event_id, "event_name": event.name,
                                          "impact": event.impact, "start": event.start, "end": event.end})

    async def check(self) -> None:
        """Evaluate stale data and news windows now; send the commands and events they call for."""
        results = self.engine.check(self.clock.now_ns())
        for result in results:
            with _tracer.start_as_current_span("risk.check", attributes={"qmp.strategy": result.strategy}):
                for command in result.commands:
                    await self._send_control(result.strategy, command)
                for event in result.events:
                    await self._publish_event(event)

    async def run_checks(self) -> None:
        """Run `check` every check_interval_s until cancelled; a failure is logged and retried next time.

        Only on a live clock: in replay the clock is the latest event seen on any subject (bars run ahead of
        a strategy's snapshots), so a timed check would trip at a time the strategy has not reached;
        there each snapshot runs the same checks at its own timestamp, and replays stay deterministic.
        """
        if isinstance(self.clock, ReplayClock):
            return
        while True:
            await asyncio.sleep(self.settings.check_interval_s)
            try:
                await self.check()
            except (NatsError, asyncpg.PostgresError, OSError) as error:
                log.error("timed breaker check failed", extra={"error": repr(error)})

    # ------------------------------------------------------------------ helpers
    def _observe(self, ts_event: int) -> None:
        if isinstance(self.clock, ReplayClock):
            self.clock.observe(ts_event)

    async def _reject(self, msg: NatsMessage, reason: str, suffix_id: str = "") -> None:
        """Dead-letter a message that decoded but cannot be used (through the bars' intake: one counter)."""
        source = _source_id(msg)
        msg_id = f"{source}:{suffix_id}" if source and suffix_id else source
        await self._bars_in.reject(self.js, msg.raw_message.subject, reason, msg.body, msg_id)

    @property
    def dead_letters(self) -> int:
        return sum(intake.dead_letters for intake in (self._bars_in, self._portfolio_in, self._state_in,
                                                       self._news_in))
