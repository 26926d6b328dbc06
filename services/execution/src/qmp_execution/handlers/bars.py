"""Market data in: decode a batch, trade it through the engine, publish and store what came of it."""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

from nats.js import JetStreamContext
from opentelemetry import trace as otel
from opentelemetry.trace import SpanKind

from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock, ReplayClock
from qmp_core.messages import (
    BarBatch,
    BatchEvents,
    HaltRequest,
    OrderDenied,
    encode,
)
from qmp_core.service import Intake
from qmp_core.telemetry import context_of, extract_context, messaging, tracer
from qmp_core.validation import BatchRejected
from qmp_execution.adapters import BrokerAdapter, submit_all
from qmp_execution.engine import BatchResult, ExecutionEngine, StrategyResult
from qmp_execution.engine.broker import Account, BrokerOrder, OrderAck, broker_order
from qmp_execution.engine.codes import CODE_HALTED, CODE_KILLED
from qmp_execution.handlers.constants import (
    PUBLISH_TIMEOUT_S,
    SERVICE,
    letter_id,
    venue_of,
)
from qmp_execution.handlers.control_watch import ControlWatch
from qmp_execution.handlers.risk_watch import RiskWatch
from qmp_execution.handlers.stop_loss import StopLossAcks
from qmp_execution.publisher import AckedPublisher
from qmp_execution.rest import BrokerRejected, BrokerUnavailable
from qmp_execution.store import ExecutionStore

HALT_CODES = frozenset({CODE_HALTED, CODE_KILLED})  # a denial that a halt (or a kill) made
log = logging.getLogger(__name__)


class BarHandler:
    """Handle one market-data message end to end; one at a time, in stream order."""

    def __init__(self, engine: ExecutionEngine, js: JetStreamContext, publisher: AckedPublisher,
                 store: ExecutionStore | None, clock: Clock, venues: Collection[str] = (),
                 adapter: BrokerAdapter | None = None, stop_acks: StopLossAcks | None = None,
                 control: "ControlWatch | None" = None, risk: "RiskWatch | None" = None,
                 per_batch: bool = False) -> None:
        self.engine = engine
        self.per_batch = per_batch  # one BatchEvents per strategy and batch, not a message per order and fill
        self.stop_acks = stop_acks
        self.control = control
        self.risk = risk
        self.js = js
        self.publisher = publisher
        self.store = store
        self.adapter = adapter
        self.clock = clock
        self.venues = frozenset(venues)
        self.batches = 0
        self.reconciled_fills = 0  # fills an external broker reported after its answer, booked later
        self._input: Intake[BarBatch] = Intake(BarBatch, SERVICE, clock)
        self.trading = asyncio.Lock()  # one engine timeline: batches, venue checks and kills take turns
        self._tracer = tracer("qmp.execution")

    @property
    def dead_letters(self) -> int:
        return self._input.dead_letters

    async def handle(self, data: bytes, subject: str, headers: Mapping[str, str] | None,
                     delivery_id: str = "") -> None:
        """Decode, trade and publish one message; raise only for a transient failure."""
        venue = venue_of(subject)
        if self.venues and venue not in self.venues:
            return
        with self._tracer.start_as_current_span("execution.bars", context=extract_context(headers),
                                                 kind=SpanKind.CONSUMER) as span:
            span.set_attributes(messaging(subject, "process"))
            batch = await self._input.decode(self.js, subject, data, letter_id(delivery_id), bus.content_type(headers))
            if batch is None:
                return
            if batch.venue != venue:
                await self._reject(subject, f"venue {batch.venue!r} does not match the subject", data,
                                   delivery_id)
                return
            span.set_attribute("qmp.ts_event", batch.ts_event)
            async with self.trading:  # the engine's timeline is one: keep batches in arrival order
                if not self.engine.follows(venue):  # no strategy here trades it: its time is not ours
                    return
                if isinstance(self.clock, ReplayClock):
                    self.clock.observe(batch.ts_event)
                    # A replay trades each batch under the state and with the ES that risk left.
                    if self.control is not None:
                        await self.control.catch_up()
                    if self.risk is not None:
                        await self.risk.catch_up()
                if self.adapter is not None:
                    await self.reconcile(batch.ts_event)
                try:
                    result = self.engine.process(batch)
                except BatchRejected as error:
                    await self._reject(subject, f"invalid batch: {error}", data, delivery_id)
                    return
                if result.rejected:
                    rows = "; ".join(f"{s}: {r}" for s, r in result.rejected[:20])
                    await self._reject(subject, f"{len(result.rejected)} invalid rows dropped: {rows}", data,
                                       f"{delivery_id}:rows" if delivery_id else "")
                if self.adapter is not None:
                    result = await self.route(result)
                await self.publish(result)
                self.batches += 1
            span.set_attribute("qmp.decisions", sum(len(r.decisions) for r in result.results.values()))

    async def reconcile(self, ts_event: int) -> int:
        """Ask the broker about every order it may still fill; book what it filled since. Return fills booked.

        The fills go out with this batch's result. A broker that cannot say (no `status`) or cannot be
        reached is asked again before the next batch: nothing is booked from a guess.
        """
        status = getattr(self.adapter, "status", None)
        if not callable(status):
            return 0
        booked = 0
        for sid in self.engine.strategies():
            orders = self.engine.open_orders(sid)
            if not orders:
                continue
            try:
                acks = await asyncio.gather(*(status(order) for order in orders))
            except BrokerUnavailable as error:
                log.warning("reconciliation postponed: the broker is unavailable",
                            extra={"strategy": sid, "orders": len(orders), "error": str(error)})
                continue
            booked += len(self.engine.reconcile(sid, acks, ts_event))
        self.reconciled_fills += booked
        return booked

    async def venue_open_orders(self, strategy: str) -> list[BrokerOrder] | None:
        """The venue's open orders of `strategy`, or None when its adapter cannot list them (the kill switch and
        reconciliation ask; a venue that does not answer raises BrokerUnavailable)."""
        listing: Callable[[str], Awaitable[list[BrokerOrder]]] | None = getattr(self.adapter, "open_orders", None)
        return None if listing is None else await listing(strategy)

    async def check_venue(self) -> tuple[Account, float, list[tuple[str, float, float]]]:
        """Return the venue's account, how long it took to answer (ms), and every position where the sum
        of the books differs from the venue's. Fills the venue made since the last batch are booked first
        (they would otherwise show as differences); batches wait meanwhile."""
        async with self.trading:
            return await self.venue_differences()

    async def venue_differences(self) -> tuple[Account, float, list[tuple[str, float, float]]]:
        """`check_venue` for a caller that holds `trading` already."""
        assert self.adapter is not None
        await self.reconcile(self.clock.now_ns())
        started = time.perf_counter()
        account = await self.adapter.account()
        latency_ms = (time.perf_counter() - started) * 1e3
        positions = await self.adapter.positions()
        return account, latency_ms, self.engine.position_differences(positions)

    async def route(self, result: BatchResult) -> BatchResult:
        """Send new orders and cancels to the external broker (concurrently) and book its answers."""
        assert self.adapter is not None
        routed: dict[str, StrategyResult] = {}
        for sid, strategy_result in result.results.items():
            if strategy_result.replayed:  # sent before: the broker has it under the same idempotency keys
                routed[sid] = strategy_result
                continue
            orders = [broker_order(sid, e) for e in strategy_result.decisions
                      if e.__struct_config__.tag == "OrderAccepted"]
            for event in strategy_result.decisions:
                if event.__struct_config__.tag == "OrderCanceled":
                    with contextlib.suppress(BrokerRejected, BrokerUnavailable):
                        await self.adapter.cancel(broker_order(sid, event))
            try:
                acks = await submit_all(self.adapter, orders)
            except (BrokerRejected, BrokerUnavailable) as error:
                log.error("broker unavailable", extra={"strategy": sid, "orders": len(orders), "error": str(error)})
                acks = [OrderAck(order_id=o.order_id, status="rejected", reason=str(error)) for o in orders]
            routed[sid] = self.engine.apply_acks(sid, acks)
        return BatchResult(result.ts_event, routed, result.rejected, result.complete)

    def _trace_denial(self, denied: OrderDenied) -> None:
        """Record a denied order in the trace of the command whose state denied it, linked to this batch's.

        The state came through the control bucket, which carries no headers: its entry keeps the command's
        trace context (`TradingState.traceparent`), so a breaker's halt and the orders it stopped are one
        trace (collector → risk → deployer → execution), found from the order id as from the command id.
        """
        state = self.engine.state(denied.strategy)
        if not state.traceparent:
            return
        batch = otel.get_current_span().get_span_context()
        with self._tracer.start_as_current_span(
            "execution.denied", context=context_of(state.traceparent),
            links=[otel.Link(batch)] if batch.is_valid else None,
            attributes={"qmp.strategy": denied.strategy, "qmp.order_id": denied.order_id,
                        "qmp.symbol": denied.symbol, "qmp.reason_code": denied.reason_code,
                        "qmp.command_id": state.command_id, "qmp.status": state.status,
                        "qmp.ts_event": denied.ts_event, "qmp.count": denied.count},
        ):
            pass

    async def publish(self, result: BatchResult) -> None:
        """Publish every strategy's order events, fills and snapshot, write the rows, then confirm both.

        The snapshot goes out on the same connection right after the batch's events, so the stream stores
        it after them; risk can start on it while the bus confirms the events and the database takes the
        rows (both awaited before the bars message is acknowledged; see `recovery` for a crash in between).
        """
        results = list(result.results.values())
        send = self.publisher.send
        trace = bus.headers_for(None)  # one span per batch: inject its context once, not per message
        for strategy_result in results:
            strategy = strategy_result.strategy
            for event in strategy_result.decisions:
                if event.__struct_config__.tag == "OrderDenied":
                    self._trace_denial(event)
            if self.per_batch:
                if strategy_result.decisions or strategy_result.fills:
                    events = BatchEvents(strategy=strategy, ts_event=strategy_result.ts_event,
                                         decisions=strategy_result.decisions, fills=strategy_result.fills)
                    await send(subjects.batch_events(strategy), encode(events),
                               {**trace, "Nats-Msg-Id": f"{strategy}:{strategy_result.ts_event}:events"})
                continue
            orders, fills = subjects.orders(strategy), subjects.fills(strategy)
            for event in strategy_result.decisions:
                kind = "canceled" if event.__struct_config__.tag == "OrderCanceled" else "decision"
                await send(orders, encode(event), {**trace, "Nats-Msg-Id": f"{event.order_id}:{kind}"})
            for fill in strategy_result.fills:
                await send(fills, encode(fill), {**trace, "Nats-Msg-Id": fill.fill_id})
        for strategy_result in results:
            sid = strategy_result.strategy
            await send(subjects.portfolio(sid), encode(strategy_result.snapshot),
                       {**trace, "Nats-Msg-Id": f"{sid}:{strategy_result.ts_event}"})
        writes = [self.store.write(results)] if self.store is not None and results else []
        outcomes = await asyncio.gather(self.publisher.confirm(PUBLISH_TIMEOUT_S), *writes, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        halts = False
        for strategy_result in results:
            sid = strategy_result.strategy
            if self.stop_acks is not None:
                await self.stop_acks.release(strategy_result.snapshot, self.engine.stop_loss_ids(sid))
            self._log(strategy_result)
            if not strategy_result.replayed:
                self._count(strategy_result)
            if strategy_result.halt_request:  # the deployer halts it (execution may not write control state)
                request = HaltRequest(strategy=sid, reason=strategy_result.halt_request,
                                      reason_code=strategy_result.halt_request.split(":", 1)[0],
                                      ts_event=strategy_result.ts_event)
                await send(subjects.halt_requests(sid), encode(request),
                           {"Nats-Msg-Id": f"{sid}:{strategy_result.ts_event}:halt_request"})
                halts = True
        if halts:
            await self.publisher.confirm(PUBLISH_TIMEOUT_S)

    def _count(self, result: StrategyResult) -> None:
        """Count a batch's decisions and fills in the service's metrics: equity, slippage, and the time from a
        halt to its first denied order."""
        for event in result.decisions:
            tag = str(event.__struct_config__.tag)
            decision = {"OrderAccepted": "accepted", "OrderDenied": "denied", "OrderCanceled": "canceled"}.get(tag, tag)
            code = getattr(event, "reason_code", "") or ""
            metrics.ORDERS.labels(result.strategy, decision, code).inc()
            if decision == "denied" and code in HALT_CODES and self.control is not None:
                halted = self.control.halted_at.pop(result.strategy, None)
                if halted is not None:
                    metrics.HALT_TO_DENIAL.labels(result.strategy).observe(max(0.0, time.time() - halted))
        if result.fills:
            metrics.FILLS.labels(result.strategy).inc(len(result.fills))
            slippage = metrics.SLIPPAGE_BPS.labels(result.strategy)
            for fill in result.fills:
                slippage.observe(fill.slippage_bps)
        metrics.EQUITY.labels(result.strategy).set(result.snapshot.equity)
        metrics.GROSS_EXPOSURE.labels(result.strategy).set(result.snapshot.gross_exposure())

    @staticmethod
    def _log(result: StrategyResult) -> None:
        if result.decisions and not result.replayed:
            counts: dict[str, int] = {}
            for event in result.decisions:
                tag = str(event.__struct_config__.tag)
                counts[tag] = counts.get(tag, 0) + 1
            log.info("orders", extra={"strategy": result.strategy, "ts_event": result.ts_event, "events": counts,
                                      "fills": len(result.fills), "equity": result.snapshot.equity,
                                      "es_scale": result.es_scale})

    async def _reject(self, subject: str, reason: str, data: bytes, delivery_id: str) -> None:
        await self._input.reject(self.js, subject, reason, data, letter_id(delivery_id))
