"""Execution I/O: decode bars → engine → publish decisions, fills, snapshots; control watch; recovery.

No decisions are taken here. What every handler guarantees:
- input that cannot be used (undecodable, invalid batch, invalid rows) goes to `qmp.dlq.execution` with its
  reason and is acknowledged; only transient failures (bus, database) raise, so the message is redelivered;
- order events are published before fills (without waiting per message; all acks confirmed together,
  `publisher.py`), then fills, equity curve and positions are written to the database (COPY), and the
  PortfolioSnapshot goes last, acknowledged: a snapshot on the bus means everything before it is on the
  bus too, which is what recovery after a restart relies on;
- every publish carries a deterministic Nats-Msg-Id, so a redelivered batch (for which the engine returns
  its cached result) publishes nothing new.

Risk's stop-loss commands (`ClosePosition` on `qmp.risk.<strategy>.stoploss`) come through a durable pull
consumer on the risk stream (JetStream API and inbox only: no subscription right on `qmp.risk.>`); the
engine marks the position to close on the next batch, and applies a command id once.
"""

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from qmp_core import bus, subjects
from qmp_core.clock import Clock, ReplayClock
from qmp_core.lockstep import Progress
from qmp_core.messages import (
    BarBatch,
    BrokerCommand,
    BrokerReply,
    ClosePosition,
    PortfolioSnapshot,
    RiskSnapshot,
    codec,
    encode,
)
from qmp_core.service import Intake
from qmp_core.telemetry import extract_context, tracer
from qmp_core.trading_state import strategy_of
from qmp_core.validation import BatchRejected
from qmp_execution.adapters import BrokerAdapter, BrokerOrder, OrderAck, submit_all
from qmp_execution.engine import BatchResult, ExecutionEngine, StrategyResult
from qmp_execution.publisher import AckedPublisher
from qmp_execution.rest import BrokerRejected, BrokerUnavailable, RestBrokerClient
from qmp_execution.store import ExecutionStore

log = logging.getLogger(__name__)

SERVICE = "execution"
KV_DELETES = ("DEL", "PURGE")
INITIAL_STATE_TIMEOUT_S = 10.0
CATCH_UP_TIMEOUT_S = 2.0  # a replay batch waits at most this long for the control watch, then for risk
# Recovery scans the market-data stream backwards; this bounds the scan per window row needed.
SCAN_PER_ROW = 64

PUBLISH_TIMEOUT_S = 30.0
RISK_FETCH = 256
__all__ = ["BarHandler", "BrokerCommands", "ControlWatch", "RiskWatch", "StopLossAcks", "StopLossHandler", "recover"]


def venue_of(subject: str) -> str:
    """Return the venue token of `qmp.md.<venue>.bars`."""
    return subjects.strategy_of(subject, 2)


class StopLossAcks:
    """Hold each applied ClosePosition's acknowledgement until a PortfolioSnapshot holding it is on the bus.

    Until the strategy's next snapshot carries it (`PortfolioSnapshot.stop_losses`), a stop-loss lives only
    in this process: acknowledged at once, a restart in between would lose it. Held, it is acknowledged
    after that snapshot; after a crash JetStream redelivers it to the next instance, which applies it to the
    restored book. A redelivery of a held command replaces the held delivery (acks are per delivery).
    """

    def __init__(self) -> None:
        self._held: dict[str, dict[str, Msg]] = {}  # strategy -> command id -> the delivery to acknowledge

    def holds(self, strategy: str, command_id: str) -> bool:
        return command_id in self._held.get(strategy, {})

    def is_held(self, message: Msg) -> bool:
        return any(held is message for by_id in self._held.values() for held in by_id.values())

    def hold(self, strategy: str, command_id: str, message: Msg) -> None:
        self._held.setdefault(strategy, {})[command_id] = message

    async def release(self, snapshot: PortfolioSnapshot, in_force: Collection[str]) -> int:
        """Acknowledge the held commands this snapshot settles; return how many.

        Settled: the snapshot holds the stop-loss, or the stop is no longer in force (its position is flat).
        A re-published older snapshot (a redelivered batch) settles nothing the engine still holds.
        """
        held = self._held.get(snapshot.strategy)
        if not held:
            return 0
        carried = {stop.command_id for stop in snapshot.stop_losses}
        settled = [cid for cid in held if cid in carried or cid not in in_force]
        for command_id in settled:
            # An ack that fails (connection lost, delivery already nak'd) only means a redelivery, which
            # the engine recognises by its command id.
            with contextlib.suppress(nats.errors.Error):
                await held.pop(command_id).ack()
        return len(settled)


def _letter_id(delivery_id: str) -> str | None:
    """Return the dead letter's Nats-Msg-Id for a delivery, so a redelivery's letter is a duplicate."""
    return f"{SERVICE}:{delivery_id}" if delivery_id else None


class BarHandler:
    """Handle one market-data message end to end; one at a time, in stream order."""

    def __init__(self, engine: ExecutionEngine, js: JetStreamContext, publisher: AckedPublisher,
                 store: ExecutionStore | None, clock: Clock, venues: Collection[str] = (),
                 adapter: BrokerAdapter | None = None, stop_acks: StopLossAcks | None = None,
                 control: "ControlWatch | None" = None, risk: "RiskWatch | None" = None) -> None:
        self.engine = engine
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
        self._input: Intake[BarBatch] = Intake(BarBatch, SERVICE, clock)
        self._lock = asyncio.Lock()
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
        with self._tracer.start_as_current_span("execution.bars", context=extract_context(headers)) as span:
            span.set_attribute("messaging.destination", subject)
            batch = await self._input.decode(self.js, subject, data, _letter_id(delivery_id))
            if batch is None:
                return
            if batch.venue != venue:
                await self._reject(subject, f"venue {batch.venue!r} does not match the subject", data,
                                   delivery_id)
                return
            span.set_attribute("qmp.ts_event", batch.ts_event)
            async with self._lock:  # the engine's timeline is one: keep batches in arrival order
                if isinstance(self.clock, ReplayClock):
                    self.clock.observe(batch.ts_event)
                    # A replay trades each batch under the state and with the ES that risk left.
                    if self.control is not None:
                        await self.control.catch_up()
                    if self.risk is not None:
                        await self.risk.catch_up()
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

    async def route(self, result: BatchResult) -> BatchResult:
        """Send new orders and cancels to the external broker (concurrently) and book its answers."""
        assert self.adapter is not None
        routed: dict[str, StrategyResult] = {}
        for sid, strategy_result in result.results.items():
            if strategy_result.replayed:  # sent before: the broker has it under the same idempotency keys
                routed[sid] = strategy_result
                continue
            orders = [BrokerOrder(order_id=e.order_id, strategy=sid, symbol=e.symbol, side=e.side, quantity=e.quantity,
                                  price=e.price, ts_event=e.ts_event)
                      for e in strategy_result.decisions if e.__struct_config__.tag == "OrderAccepted"]
            for event in strategy_result.decisions:
                if event.__struct_config__.tag == "OrderCanceled":
                    with contextlib.suppress(BrokerRejected, BrokerUnavailable):
                        await self.adapter.cancel(event.order_id)
            try:
                acks = await submit_all(self.adapter, orders)
            except (BrokerRejected, BrokerUnavailable) as error:
                log.error("broker unavailable", extra={"strategy": sid, "orders": len(orders), "error": str(error)})
                acks = [OrderAck(order_id=o.order_id, status="rejected", reason=str(error)) for o in orders]
            routed[sid] = self.engine.apply_acks(sid, acks)
        return BatchResult(result.ts_event, routed, result.rejected, result.complete)

    async def publish(self, result: BatchResult) -> None:
        """Publish every strategy's order events and fills, write the rows, then publish the snapshots."""
        results = list(result.results.values())
        send = self.publisher.send
        trace = bus.headers_for(None)  # one span per batch: inject its context once, not per message
        for strategy_result in results:
            strategy = strategy_result.strategy
            orders, fills = subjects.orders(strategy), subjects.fills(strategy)
            for event in strategy_result.decisions:
                kind = "canceled" if event.__struct_config__.tag == "OrderCanceled" else "decision"
                await send(orders, encode(event), {**trace, "Nats-Msg-Id": f"{event.order_id}:{kind}"})
            for fill in strategy_result.fills:
                await send(fills, encode(fill), {**trace, "Nats-Msg-Id": fill.fill_id})
        await self.publisher.confirm(PUBLISH_TIMEOUT_S)
        if self.store is not None and results:
            await self.store.write(results)
        for strategy_result in results:
            sid = strategy_result.strategy
            await send(subjects.portfolio(sid), encode(strategy_result.snapshot),
                       {**trace, "Nats-Msg-Id": f"{sid}:{strategy_result.ts_event}"})
            await self.publisher.confirm(PUBLISH_TIMEOUT_S)
            if self.stop_acks is not None:
                await self.stop_acks.release(strategy_result.snapshot, self.engine.stop_loss_ids(sid))
            self._log(strategy_result)

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
        await self._input.reject(self.js, subject, reason, data, _letter_id(delivery_id))


class StopLossHandler:
    """Hand risk's ClosePosition commands to the engine; what cannot be used goes to the DLQ with its reason."""

    def __init__(self, engine: ExecutionEngine, js: JetStreamContext, clock: Clock,
                 acks: StopLossAcks | None = None) -> None:
        self.engine = engine
        self.js = js
        self.clock = clock
        self.acks = acks
        self.received = 0
        self.applied = 0
        self._input: Intake[ClosePosition] = Intake(ClosePosition, SERVICE, clock)
        self._tracer = tracer("qmp.execution")

    @property
    def dead_letters(self) -> int:
        return self._input.dead_letters

    async def handle(self, data: bytes, subject: str, headers: Mapping[str, str] | None,
                     delivery_id: str = "", message: Msg | None = None) -> bool:
        """Decode and apply one command; return whether it put a stop-loss on; raise only when transient.

        With `message` and `acks`, an applied command's delivery (or a redelivery of one still held) is held
        for acknowledgement after the next snapshot; the caller acknowledges what is not `acks.is_held`.
        """
        with self._tracer.start_as_current_span("execution.stop_loss", context=extract_context(headers)) as span:
            span.set_attribute("messaging.destination", subject)
            self.received += 1
            command = await self._input.decode(self.js, subject, data, _letter_id(delivery_id))
            if command is None:
                return False
            strategy = subjects.strategy_of(subject, 2)
            if command.strategy != strategy:
                await self._input.reject(self.js, subject, f"ClosePosition for strategy {command.strategy!r} on the "
                                         f"subject of {strategy!r}", data, _letter_id(delivery_id))
                return False
            span.set_attribute("qmp.strategy", command.strategy)
            span.set_attribute("qmp.symbol", command.symbol)
            span.set_attribute("qmp.command_id", command.command_id)
            pending = self.acks is not None and self.acks.holds(command.strategy, command.command_id)
            applied = self.engine.on_close_position(command)
            if self.acks is not None and message is not None and (applied or pending):
                self.acks.hold(command.strategy, command.command_id, message)
            span.set_attribute("qmp.applied", applied)
            self.applied += applied
            return applied

class ControlWatch:
    """Keep the engine's control entries equal to the KV bucket, from its current values on.

    `start` returns once the current values are loaded, so no batch is traded under a stale state.
    """

    def __init__(self, kv: KeyValue, engine: ExecutionEngine, js: JetStreamContext | None = None) -> None:
        self.kv = kv
        self.engine = engine
        self.js = js
        self.loaded = asyncio.Event()
        self.updates = 0
        self.revision = 0  # the bucket's stream sequence applied so far
        self._writes = Progress("control bucket writes")  # step 2 of the lockstep replay (qmp_core.lockstep)
        self._letters: set[asyncio.Task[None]] = set()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = INITIAL_STATE_TIMEOUT_S) -> None:
        self._watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(), name="execution-control-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout_s)
        except TimeoutError:
            await self.stop()
            raise RuntimeError(f"control bucket {subjects.KV_CONTROL}: initial values not loaded in "
                               f"{timeout_s}s") from None
        log.info("control state loaded", extra={"keys": list(self.engine.controls), "states": {
            sid: self.engine.state(sid).status for sid in self.engine.strategies()}})

    async def _run(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # the watcher's marker: every current value has been delivered
                self.loaded.set()
                continue
            invalid = self.apply(entry.key, entry.value or b"", entry.operation, entry.revision or 0)
            if invalid and self.js is not None:
                bus.dead_letter_later(self._letters, self.js, SERVICE, f"$KV.{subjects.KV_CONTROL}.{entry.key}",
                                      invalid, entry.value or b"", self.engine.clock)

    async def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> int:
        """Wait until every write the bucket holds now has been applied; return the bucket's last sequence.

        In a replay the risk service awaits the deployer's reply to a breaker command before it publishes
        the snapshot the collector waits for, so the write is in the bucket before the next batch is sent;
        but the watch and the market data reach this service on different subscriptions, in either order.
        Waiting for the watch here makes a replay trade every batch under the same state, run after run.
        """
        if self.js is None:
            return self.revision
        last = (await self.js.stream_info(f"KV_{subjects.KV_CONTROL}")).state.last_seq or 0
        if not await self._writes.wait_until(lambda: self.revision >= last, timeout_s):
            log.warning("control watch behind the bucket; trading on the state it has",
                        extra={"applied": self.revision, "bucket": last})
        return last

    @property
    def catch_up_timeouts(self) -> int:
        return self._writes.timeouts

    def apply(self, key: str, value: bytes, operation: str | None, revision: int = 0) -> str | None:
        """Apply one KV change to the engine's entries, log the effective state; return why a value is invalid."""
        controls = self.engine.controls
        invalid = None
        if operation in KV_DELETES:
            controls.delete(key)
        else:
            invalid = controls.put(key, value)
            if invalid:
                log.error("invalid control entry: the strategy reads as HALTED", extra={"key": key, "error": invalid})
        strategy = strategy_of(key)
        self.updates += 1
        self.revision = max(self.revision, revision)
        self._writes.advanced()
        hosted = self.engine.strategies()
        affected = hosted if strategy == subjects.ALL_STRATEGIES else ([strategy] if strategy in hosted else [])
        for sid in affected:
            state = self.engine.state(sid)
            log.info("trading state", extra={"strategy": sid, "key": key, "operation": operation or "PUT",
                                             "status": state.status, "reason": state.reason,
                                             "allocation": state.allocation,
                                             "size_multiplier": state.size_multiplier})
        return invalid

    async def stop(self) -> None:
        await bus.stop_watch(self._watcher, self._task)


async def recover(engine: ExecutionEngine, js: JetStreamContext, consumer: str,
                  venues: Collection[str] = ()) -> dict[str, int]:
    """Restore every strategy's book from its last PortfolioSnapshot and rebuild the price windows.

    Windows come from the market-data stream (the data this service traded on, validated the same way),
    read backwards from the last batch delivered to our durable consumer. Returns strategy → restored ts.
    """
    decoder = codec(PortfolioSnapshot)
    restored: dict[str, int] = {}
    for strategy in engine.strategies():
        try:
            raw = await js.get_last_msg(subjects.STREAM_EXEC, subjects.portfolio(strategy))
        except NotFoundError:
            continue
        snapshot = decoder.decode(raw.data or b"")
        engine.restore(snapshot)
        restored[strategy] = snapshot.ts_event
    if restored:
        batches = await recent_bars(js, consumer, max(restored.values()), engine.window_rows(), venues)
        used = engine.warm(batches)
        log.info("recovered", extra={"restored": restored, "window_batches": used})
    return restored


async def recent_bars(js: JetStreamContext, consumer: str, upto_ts: int, rows: int,
                      venues: Collection[str] = ()) -> list[BarBatch]:
    """Return the batches of the last `rows` timestamps up to `upto_ts`, newest first."""
    try:
        stream = await js.stream_info(subjects.STREAM_MARKET_DATA)
    except NotFoundError:
        return []
    first, seq = stream.state.first_seq, stream.state.last_seq
    with contextlib.suppress(NotFoundError):
        delivered = (await js.consumer_info(subjects.STREAM_MARKET_DATA, consumer)).delivered
        if delivered is not None and delivered.stream_seq:
            seq = min(seq, delivered.stream_seq)
    decoder = codec(BarBatch)
    wanted = frozenset(venues)
    seen: set[int] = set()
    found: list[BarBatch] = []
    budget = rows * SCAN_PER_ROW
    while seq >= first and budget > 0:
        budget -= 1
        try:
            raw = await js.get_msg(subjects.STREAM_MARKET_DATA, seq)
        except NotFoundError:
            seq -= 1
            continue
        seq -= 1
        subject = raw.subject or ""
        if not subject.endswith(".bars") or (wanted and venue_of(subject) not in wanted):
            continue
        try:
            batch = decoder.decode(raw.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if batch.ts_event > upto_ts:
            continue
        if batch.ts_event not in seen and len(seen) >= rows:
            break
        seen.add(batch.ts_event)
        found.append(batch)
    return found


class RiskWatch:
    """Keep each hosted strategy's latest RiskSnapshot in the engine: its ES sizes the next orders.

    Reads through the JetStream API only (a direct get of the last snapshot, then an ephemeral pull
    consumer whose messages come to an inbox), so execution needs no subscription right on `qmp.risk.>`.
    """

    def __init__(self, js: JetStreamContext, engine: ExecutionEngine) -> None:
        self.js = js
        self.engine = engine
        self.received = 0
        self._snapshots = Progress("risk snapshots")  # step 2 of the lockstep replay (qmp_core.lockstep)
        self._decoder = codec(RiskSnapshot)
        self._subscription: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        hosts = self.engine.strategies()
        subject = subjects.snapshot(hosts[0]) if len(hosts) == 1 else subjects.SNAPSHOT_ALL
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW, ack_policy=api.AckPolicy.NONE,
                                    inactive_threshold=60.0, max_waiting=4)
        # Subscribe before reading the last values, so nothing published in between is missed.
        self._subscription = await self.js.pull_subscribe(subject, stream=subjects.STREAM_RISK, config=config)
        for sid in hosts:
            with contextlib.suppress(NotFoundError):
                raw = await self.js.get_last_msg(subjects.STREAM_RISK, subjects.snapshot(sid))
                self._apply(raw.data or b"")
        self._task = asyncio.create_task(self._run(), name="execution-risk-watch")

    async def _run(self) -> None:
        while True:
            try:
                messages: list[Msg] = await self._subscription.fetch(RISK_FETCH, timeout=1.0)
            except TimeoutError:  # nats' own and asyncio's: fetch raises either when nothing came
                continue
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as error:  # e.g. during a reconnect: keep watching
                log.warning("risk snapshot fetch failed; retrying", extra={"error": str(error)})
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                self._apply(message.data)

    def _apply(self, data: bytes) -> None:
        try:
            snapshot = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("undecodable risk snapshot ignored", extra={"error": str(error)})
            return
        if self.engine.on_risk(snapshot):
            self.received += 1
            self._snapshots.advanced()

    def behind(self) -> list[str]:
        """Return the strategies whose latest risk snapshot is older than their last traded batch."""
        return self.engine.risk_behind()

    async def catch_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> None:
        """Wait until each strategy's risk snapshot covers its last traded batch (a replay's next batch).

        Risk revalues batch t before the collector sends t + 1, but that snapshot and batch t + 1 reach this
        service on different subscriptions: waiting here sizes t + 1 with the ES of t, run after run.
        A strategy risk has never answered for is not waited for.
        """
        if not await self._snapshots.wait_until(lambda: not self.behind(), timeout_s):
            log.warning("risk snapshots behind the book; sizing with the last one",
                        extra={"strategies": self.behind()})

    @property
    def catch_up_timeouts(self) -> int:
        return self._snapshots.timeouts

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A fetch cancelled mid-wait may surface as a timeout rather than a cancellation.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(Exception):  # the connection may already be closed at shutdown
                await self._subscription.unsubscribe()


class BrokerCommands:
    """Answer `qmp.broker.<instance>` requests: pin the REST broker to an endpoint, or report its status."""

    def __init__(self, client: RestBrokerClient, clock: Clock) -> None:
        self.client = client
        self.clock = clock
        self._decoder = codec(BrokerCommand)

    def handle(self, data: bytes) -> BrokerReply:
        try:
            command = self._decoder.decode(data or b"{}")
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            return self._reply(False, f"invalid BrokerCommand: {error}")
        if command.command == "use_endpoint":
            try:
                self.client.force(command.endpoint)
            except ValueError as error:
                return self._reply(False, str(error))
            log.warning("broker endpoint command", extra={"endpoint": command.endpoint, "by": command.issued_by,
                                                          "command_id": command.command_id})
        return self._reply(True, "")

    def _reply(self, accepted: bool, reason: str) -> BrokerReply:
        status = self.client.status()
        return BrokerReply(accepted=accepted, reason=reason, active=status["active"], forced=status["forced"],
                           endpoints=status["endpoints"], ts_event=self.clock.now_ns())
