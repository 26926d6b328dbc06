"""Collector handlers: decode → engine → publish, dead-letter, store. No decisions are made here.

Every batch, from a source or from `qmp.ingest.<venue>`, takes one path: split into chunks of at most
`chunk_size` symbols, validated by the engine, published to `qmp.md.<venue>.bars` with Nats-Msg-Id
`<venue>:<ts_event>:<chunk>` (so a retry or a replay never doubles it), written to the `bars` table;
rejected rows and batches go to `qmp.dlq.collector` with the reason.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError
from opentelemetry.trace import SpanKind

from qmp_collector.engine import CollectorEngine, Outcome, ResumePoint, chunk
from qmp_collector.store import BarStore, Record
from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock, ReplayClock
from qmp_core.lockstep import Progress
from qmp_core.messages import BarBatch, RiskSnapshot, codec
from qmp_core.retry import Unavailable, until_available
from qmp_core.service import Intake
from qmp_core.telemetry import messaging, tracer

SERVICE = "collector"
REASON_EXCERPT = 1_000
YIELD_EVERY = 256  # skipped batches between yields to the event loop during a resume
LOCKSTEP_POLL_S = 1.0  # how long a lockstep wait trusts the subscription before it asks the stream

log = logging.getLogger(__name__)
PUBLISH_RETRY_MAX_S = 0.25
_tracer = tracer("qmp_collector")

Sleep = Callable[[float], Awaitable[None]]


def message_id(batch: BarBatch) -> str:
    return f"{batch.venue}:{batch.ts_event}:{batch.chunk}"


class LockstepGate:
    """Step 1 of the lockstep replay (`qmp_core.lockstep`): hold the publish loop until risk has seen a batch.

    Replays are then deterministic: risk (and the breakers it trips) acts on batch t before batch t+1 exists.
    Snapshots arrive on a core subscription, which misses what risk publishes while this connection is
    reconnecting (a nats-server restart), so a wait that is not over after LOCKSTEP_POLL_S also asks the
    risk stream (`stored_snapshot`, when given) for its last snapshot.

    A wait that times out while the services in the loop say they are waiting on a dependency
    (`dependency_wait`, e.g. execution retrying a database write through an outage) is extended: the batch
    behind them is not sent early, so a replay through an outage gives the numbers of one without it. A
    service that is gone, or silent, still costs only the timeout.
    """

    def __init__(self, strategy: str, stored_snapshot: Callable[[], Awaitable[bytes | None]] | None = None,
                 poll_s: float = LOCKSTEP_POLL_S,
                 dependency_wait: Callable[[], Awaitable[str]] | None = None) -> None:
        self.strategy = strategy
        self.poll_s = poll_s
        self.latest = -1
        self.extended = 0  # timeouts extended because a service in the loop was waiting on a dependency
        self._snapshots = Progress("risk snapshots")
        self._stored = stored_snapshot
        self._dependency_wait = dependency_wait

    @property
    def timeouts(self) -> int:
        return self._snapshots.timeouts

    def observe(self, ts_event: int) -> None:
        if ts_event > self.latest:
            self.latest = ts_event
            self._snapshots.advanced()

    def on_snapshot(self, data: bytes) -> None:
        """Take a RiskSnapshot payload; ignore other strategies and payloads that do not decode."""
        try:
            snapshot: RiskSnapshot = codec(RiskSnapshot).decode(data)
        except msgspec.MsgspecError as error:
            log.warning("lockstep: undecodable risk snapshot", extra={"error": str(error)})
            return
        if snapshot.strategy == self.strategy:
            self.observe(snapshot.ts_event)

    async def wait(self, ts_event: int, timeout_s: float) -> bool:
        """Return True once a snapshot at or after ts_event has arrived, False after timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            last_slice = self._stored is None or remaining <= self.poll_s
            # No slice counts as a timeout by itself: only giving up does, below.
            if await self._snapshots.wait_until(lambda: self.latest >= ts_event,
                                                remaining if last_slice else self.poll_s, counted=False):
                return True
            if last_slice:
                waiting_on = await self._dependency_wait() if self._dependency_wait is not None else ""
                if not waiting_on:
                    self._snapshots.timeouts += 1
                    break
                self.extended += 1
                log.warning("lockstep: the loop is waiting on a dependency; waiting with it",
                            extra={"strategy": self.strategy, "ts_event": ts_event, "waiting": waiting_on})
                deadline = loop.time() + timeout_s
                continue
            stored = await self._stored() if self._stored is not None else None
            if stored is not None:
                self.on_snapshot(stored)
        log.warning("lockstep: no risk snapshot in time",
                    extra={"strategy": self.strategy, "ts_event": ts_event, "timeout_s": timeout_s})
        return False


class Collector:
    """Run batches through chunking, the engine, JetStream, the DLQ and the bar store."""

    def __init__(
        self, js: JetStreamContext, engine: CollectorEngine, clock: Clock, store: BarStore | None,
        chunk_size: int = 1000, lockstep: LockstepGate | None = None, lockstep_timeout_s: float = 10.0,
    ) -> None:
        self.js = js
        self.engine = engine
        self.clock = clock
        self.store = store
        self.chunk_size = chunk_size
        self.lockstep = lockstep
        self.lockstep_timeout_s = lockstep_timeout_s
        self.published = 0
        self.skipped = 0
        self._input: Intake[BarBatch] = Intake(BarBatch, SERVICE, clock)
        self.done = False
        self._seeded: set[str] = set()
        self._last_ts: int | None = None
        # Told of each failed publish and of the recovery (the service's health): set by the app.
        self.on_retry: Callable[[BaseException | None], None] | None = None
        if store is not None:
            store.on_rejected = self._dead_letter_stored_row

    def detail(self) -> dict[str, Any]:
        """Health details: messages published, rows rejected, latest ts published, source exhausted."""
        return {
            "published": self.published,
            "rejected": self.engine.rejected_rows,
            "rejected_batches": self.engine.rejected_batches,
            "held_prices": self.engine.held_prices,
            "skipped": self.skipped,
            "dead_letters": self.dead_letters,
            "last_ts": self._last_ts,
            "pending_rows": self.store.pending_rows if self.store else 0,
            "lockstep_timeouts": self.lockstep.timeouts if self.lockstep else 0,
            "lockstep_extended": self.lockstep.extended if self.lockstep else 0,
            "done": self.done,
        }

    # ------------------------------------------------------------ resume
    async def resume_point(self, venue: str) -> ResumePoint | None:
        """Return the last batch on `qmp.md.<venue>.bars`, or None when the stream has none."""
        try:
            raw = await self.js.get_last_msg(subjects.STREAM_MARKET_DATA, subjects.bars(venue))
        except NotFoundError:
            return None
        if raw.data is None:
            return None
        last: BarBatch = codec(BarBatch).decode(raw.data)
        return ResumePoint(last.ts_event, last.chunk, last.chunks)

    async def seed(self, venue: str) -> ResumePoint | None:
        """Make the engine continue after what is already on the stream for a venue (once per venue)."""
        if venue in self._seeded:
            return None
        self._seeded.add(venue)
        point = await self.resume_point(venue)
        if point is not None:
            self.engine.seed(venue, point)
            log.info("resuming after the stream's last batch",
                     extra={"venue": venue, "ts_event": point.ts_event, "chunk": point.chunk})
        return point

    # ------------------------------------------------------------ one batch
    async def accept(self, batch: BarBatch, origin: str, dlq_id: str | None = None, flush: bool = False) -> int:
        """Chunk, validate, publish, dead-letter and store one batch; return the messages published."""
        if isinstance(self.clock, ReplayClock):
            self.clock.observe(batch.ts_event)
        parts = chunk(batch, self.chunk_size) if batch.chunks == 1 else [batch]
        published = 0
        for part in parts:
            outcome = self.engine.process(part)
            refused = len(part.symbols) if outcome.whole_batch_rejected else len(outcome.rejected)
            if refused:
                metrics.BAR_ROWS_REJECTED.labels(part.venue).inc(refused)
            if outcome.rejected or outcome.whole_batch_rejected:  # an empty batch has no rows to list
                await self._dead_letter_rows(part, outcome, origin, dlq_id)
            if outcome.batch is None:
                continue
            await self._publish(outcome.batch)
            published += 1
            if self.store is not None:
                await self.store.add(outcome.batch)
        if flush and self.store is not None:
            await self.store.flush()
        return published

    async def _publish(self, batch: BarBatch) -> None:
        subject = subjects.bars(batch.venue)
        # Named as every service names them (`qmp.ts_event`, ...): a batch's spans are found by one attribute.
        attributes = {**messaging(subject, "publish"), "qmp.venue": batch.venue, "qmp.ts_event": batch.ts_event,
                      "qmp.chunk": batch.chunk, "qmp.symbols": len(batch.symbols), "qmp.seq": batch.seq}
        with _tracer.start_as_current_span("collector.publish_batch", kind=SpanKind.PRODUCER, attributes=attributes):
            # Retried while NATS is away (a server restarting, a cluster electing the stream's leader): the
            # message id makes a retry of a publish that did land a duplicate the stream drops.
            # At least every PUBLISH_RETRY_MAX_S: a restarted server or a new leader is back within a second or
            # two, and the replay waits on this batch.
            await until_available(lambda: self._publish_once(subject, batch), "market-data publish", self.on_retry,
                                  sleep=lambda delay: asyncio.sleep(min(delay, PUBLISH_RETRY_MAX_S)))
        self.published += 1
        metrics.BARS_PUBLISHED.labels(batch.venue).inc()
        self._last_ts = batch.ts_event if self._last_ts is None else max(self._last_ts, batch.ts_event)

    async def _publish_once(self, subject: str, batch: BarBatch) -> None:
        try:
            await bus.publish(self.js, subject, batch, msg_id=message_id(batch))
        except NoStreamResponseError as error:  # no stream answered: a cluster electing the stream's leader
            raise Unavailable(f"no stream answered the publish on {subject}") from error

    async def _dead_letter_rows(self, batch: BarBatch, outcome: Outcome, origin: str, dlq_id: str | None) -> None:
        if outcome.whole_batch_rejected:
            reason = f"batch rejected: {outcome.batch_reason}"
            payload = codec(BarBatch).encode(batch)
        else:
            listed = "; ".join(f"{symbol}: {why}" for symbol, why in outcome.rejected)
            reason = f"{len(outcome.rejected)} of {len(batch.symbols)} rows rejected: {listed}"[:REASON_EXCERPT]
            payload = msgspec.json.encode({"venue": batch.venue, "ts_event": batch.ts_event,
                                           "chunk": batch.chunk, "rejected": outcome.rejected})
        # Distinct per source batch (seq) and per ingest message (stream sequence), stable across retries.
        msg_id = f"dlq:{dlq_id}:{batch.chunk}" if dlq_id else f"dlq:{message_id(batch)}:{batch.seq}"
        await self._input.reject(self.js, origin, reason, payload, msg_id)

    async def _dead_letter_stored_row(self, row: Record, reason: str) -> None:
        """A bar the database refused (published already, but not stored): record it with the reason."""
        ts, venue, symbol, *values = row
        payload = msgspec.json.encode({"ts": ts.isoformat(), "venue": venue, "symbol": symbol, "values": values})
        await self._input.reject(self.js, subjects.bars(venue), reason, payload, f"dlq:store:{venue}:{symbol}:{ts}")

    @property
    def dead_letters(self) -> int:
        return self._input.dead_letters

    # ------------------------------------------------------------ sources
    async def run_source(
        self, batches: Iterable[BarBatch] | AsyncIterable[BarBatch], *, max_batches: int = 0,
        replay_rate: float = 0.0, sleep: Sleep = asyncio.sleep, monotonic: Callable[[], float] = time.monotonic,
        resume: ResumePoint | None = None, store_from_ns: int | None = None,
    ) -> None:
        """Publish a source's batches; paced at replay_rate batches/s (0: as fast as possible).

        Batches covered by `resume` were published before a restart: they are not published again, but
        those at or after `store_from_ns` (the latest bar already in the table) are stored again, so bars
        buffered but not written when the previous run died are not lost.
        """
        interval = 1.0 / replay_rate if replay_rate > 0 else 0.0
        next_at = monotonic()
        handled = 0
        async for batch in _aiter(batches):
            if max_batches and handled >= max_batches:
                break
            if resume is not None and resume.covers(batch):
                await self._restore(batch, store_from_ns)
                continue
            handled += 1
            published = await self.accept(batch, subjects.bars(batch.venue))
            if published and self.lockstep is not None:
                await self.lockstep.wait(batch.ts_event, self.lockstep_timeout_s)
            if interval:
                next_at += interval
                await sleep(max(0.0, next_at - monotonic()))
        if self.store is not None:
            await self.store.flush()
        self.done = True
        log.info("source done", extra=self.detail())

    async def _restore(self, batch: BarBatch, store_from_ns: int | None) -> None:
        self.skipped += 1
        if self.store is not None and (store_from_ns is None or batch.ts_event >= store_from_ns):
            parts = chunk(batch, self.chunk_size) if batch.chunks == 1 else [batch]
            for part in parts:
                cleaned = self.engine.clean(part)
                if cleaned is not None:
                    await self.store.add(cleaned)
        if self.skipped % YIELD_EVERY == 0:
            await asyncio.sleep(0)

    # ------------------------------------------------------------ ingest
    async def on_ingest(self, subject: str, body: bytes, stream_seq: int | None = None,
                        content_type: str | None = None) -> None:
        """Take an external feed's BarBatch (JSON, or binary with its Content-Type); dead-letter what cannot
        be used, raise only if transient."""
        dlq_id = f"ingest:{stream_seq}" if stream_seq is not None else None
        msg_id = f"dlq:{dlq_id}" if dlq_id else None
        batch = await self._input.decode(self.js, subject, body, msg_id, content_type)
        if batch is None:
            return
        venue = subject.rsplit(".", 1)[-1]
        if batch.venue != venue:
            await self._input.reject(self.js, subject, f"batch venue {batch.venue!r} does not match subject venue "
                                     f"{venue!r}", body, msg_id)
            return
        await self.seed(venue)
        await self.accept(batch, subject, dlq_id=dlq_id, flush=True)



async def _aiter(batches: Iterable[BarBatch] | AsyncIterable[BarBatch]) -> AsyncIterable[BarBatch]:
    if isinstance(batches, AsyncIterable):
        async for batch in batches:
            yield batch
    else:
        for batch in batches:
            yield batch
