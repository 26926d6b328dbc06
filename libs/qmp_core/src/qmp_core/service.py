"""What every service's composition root uses: the FastStream broker, durable subscribers, health.

Pattern (see services/*/src/qmp_*/app.py): settings from env → `make_broker` → register handlers with
`durable_subscriber(...)` options → `FastStream(broker)`; raw JetStream/KV through
`broker.connection.jetstream()` once started.
"""

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, Literal, TypeVar

import msgspec
import nats
import uvloop
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from faststream.security import BaseSecurity, SASLPlaintext
from nats.aio.client import Client
from nats.js import JetStreamContext

from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock
from qmp_core.config import ServiceSettings
from qmp_core.dedup import RecentIds
from qmp_core.messages import HealthReply, codec, encode
from qmp_core.retry import delays, until_available

# A message the server has delivered this many times came back after the service died handling it each
# time: it is dead-lettered instead of killing the next instance too.
MAX_DELIVER = 5
# A handler that fails this many times in a row for a reason that is not a dependency being down (a bug,
# an input no check caught) gives the message up to the dead letters rather than freeze the stream.
MAX_FAILURES = 3
# A dead instance's message goes to the next one after ACK_WAIT_S; a live one says "still working" every
# HEARTBEAT_S, so a long handler (a first kernel compile, a database that is down) keeps its message. The
# ack wait is most of what a crash costs once a warm spare has taken over (about a second); a heartbeat
# late by more than 1.5 s only brings the message back to this instance, which acks it as handled.
ACK_WAIT_S = 2.0
HEARTBEAT_S = 0.5
# Stream positions remembered as handled: a nats-server restart can redeliver what was handled seconds before
# (the consumer's ack floor on disk lags the acks), never a day's worth.
HANDLED_REMEMBERED = 100_000
T = TypeVar("T")
log = logging.getLogger(__name__)
HealthStatus = Literal["starting", "ok", "degraded", "failing"]


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """Run a service's main coroutine to its end on uvloop's event loop.

    libuv's loop, with its sockets and TLS in C, costs a service a fraction of the CPU asyncio's pure-Python
    selector loop and SSL protocol spend per message (the replay benchmark measures both); the code is the
    same asyncio code either way.
    """
    return uvloop.run(main)


async def raw_body(message: NatsMessage) -> bytes:
    """FastStream's decoder for every subscriber: the payload as it came.

    Handlers take the `NatsMessage` and decode its body with the message's own msgspec codec; FastStream
    would otherwise parse every body with the standard library's json first (profiled: 8% of risk's CPU on
    1,000-symbol bars) and throw the result away.
    """
    return message.body


def make_broker(settings: ServiceSettings, name: str) -> NatsBroker:
    """Return a broker that connects as this service's NATS user; FastStream's own logging off (hot path)."""
    tls = bus.client_tls(settings.nats_tls_ca)
    security: BaseSecurity | None = BaseSecurity(ssl_context=tls) if tls is not None else None
    if settings.nats_user:
        security = SASLPlaintext(username=settings.nats_user, password=settings.nats_password, ssl_context=tls)
    return NatsBroker(
        bus.server_urls(settings.nats_url), security=security, logger=None, name=f"qmp-{name}", decoder=raw_body,
        max_reconnect_attempts=-1, reconnect_time_wait=1,
    )


async def connect_nats(settings: ServiceSettings, name: str) -> Client:
    """Open a second connection as this service's NATS user (same TLS, same reconnect policy as the broker).

    For a lane that must not share a socket, and its reading, with the broker's traffic (the deployer's halts).
    """
    return await nats.connect(bus.server_urls(settings.nats_url), name=f"qmp-{name}", max_reconnect_attempts=-1,
                              reconnect_time_wait=1,
                              **bus.connect_options(settings.nats_user, settings.nats_password, settings.nats_tls_ca))


def durable_subscriber(stream: str, durable: str, batch_size: int = 1) -> dict[str, Any]:
    """Return subscriber options for a durable, in-order pull consumer that never loses a message on error.

    NACK_ON_ERROR redelivers after a handler exception (FastStream's default would terminate it);
    after MAX_DELIVER attempts the server stops redelivering, so handlers dead-letter what they cannot use
    and raise only for transient failures. One message in flight (fetch 1, max_ack_pending 1): FastStream
    handles the messages of a larger fetch concurrently, and a redelivery could overtake the next message,
    so market data and portfolios would arrive out of order: keep batch_size 1 for ordered streams.
    Throughput comes from batching bars into messages, not from parallel handling.
    """
    return {
        "stream": JStream(stream, declare=False),
        "durable": durable,
        "pull_sub": PullSub(batch_size=batch_size, timeout=0.2),
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        # No server-side limit on deliveries: `Durable` retries transient failures in process and
        # dead-letters a message that keeps killing the service, so nothing is dropped without a letter.
        "config": ConsumerConfig(max_deliver=-1, ack_wait=ACK_WAIT_S, max_ack_pending=1),
    }


class Liveness:
    """What a service's health reports: progress and failures, not merely a process that answers.

    `ok` once ready and nothing is failing; `degraded` while a dependency is down and messages wait for
    it (retried, nothing lost); `failing` when a background loop the service needs has died (the
    supervisor restarts it); `starting` until `ready()`.
    """

    def __init__(self) -> None:
        self.started_ns = time.time_ns()
        self.is_ready = False
        self.handled = 0
        self.last_handled_ns = 0
        self.retrying: dict[str, str] = {}
        self.retries = 0
        self.crash_letters = 0
        self.redeliveries_skipped = 0  # messages handled already, delivered again (their ack was lost)
        self._loops: dict[str, tuple[asyncio.Task[Any], bool]] = {}

    def ready(self) -> None:
        """Report the service ready, and take what its start allocated out of the garbage collector's scans.

        Imports, configuration and loaded state are most of a service's objects and live as long as it
        does; left in the collector's oldest generation, every full collection walks them all and stalls
        the event loop for 50-60 ms (seen as the tail of halt latency under load). Frozen, they are skipped.
        """
        gc.freeze()
        self.is_ready = True

    def handled_one(self) -> None:
        self.handled += 1
        self.last_handled_ns = time.time_ns()

    def watch(self, name: str, task: asyncio.Task[Any], may_end: bool = False) -> None:
        """Count a background loop as part of the service: if it dies (or ends, unless `may_end`), health fails."""
        self._loops[name] = (task, may_end)

    def retry(self, what: str, error: BaseException | None) -> None:
        """Record that `what` is failing transiently (`error`), or has recovered (None)."""
        if error is None:
            self.retrying.pop(what, None)
        else:
            self.retries += 1
            self.retrying[what] = repr(error)[:300]

    def dead_loops(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, (task, may_end) in self._loops.items():
            if task.done():
                error = None if task.cancelled() else task.exception()
                if error is not None or not may_end:
                    out[name] = repr(error) if error is not None else "ended"
        return out

    def status(self) -> HealthStatus:
        if self.dead_loops():
            return "failing"
        if not self.is_ready:
            return "starting"
        return "degraded" if self.retrying else "ok"

    def detail(self) -> dict[str, Any]:
        now = time.time_ns()
        return {"handled": self.handled,
                "last_handled_s_ago": round((now - self.last_handled_ns) / 1e9, 3) if self.last_handled_ns else None,
                "retrying": dict(self.retrying), "retries": self.retries, "crash_letters": self.crash_letters,
                "redeliveries_skipped": self.redeliveries_skipped,
                "dead_loops": self.dead_loops(), "uptime_s": round((now - self.started_ns) / 1e9, 1)}


class Durable:
    """How a service handles its JetStream messages: never drop one, never let one block the stream forever.

    Handlers dead-letter what they cannot use and raise only when a dependency is down, so a transient
    raise (`qmp_core.retry.is_transient`) is retried here with backoff for as long as it lasts (health says
    `degraded` meanwhile), while a heartbeat tells the server the message is still being worked on. Any
    other raise is a bug or an input no check caught: after MAX_FAILURES tries the message goes to the dead
    letters with the error. A message delivered MAX_DELIVER times has killed the service that many
    times: it goes to the dead letters with that reason. A message this process has already handled
    (same stream position for the same consumer: its ack was lost, e.g. in a nats-server restart) is acked
    again and not handled twice.
    """

    def __init__(self, service: str, clock: Clock, liveness: Liveness, js: Callable[[], JetStreamContext],
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.service = service
        self.clock = clock
        self.liveness = liveness
        self._js = js
        self._sleep = sleep
        self._handled: RecentIds[tuple[str, str, int]] = RecentIds(HANDLED_REMEMBERED)

    async def handle(self, msg: NatsMessage, handle: Callable[[], Awaitable[None]], what: str) -> None:
        raw = msg.raw_message
        metadata = getattr(raw, "metadata", None)
        position = (metadata.stream, metadata.consumer, metadata.sequence.stream) if metadata is not None else None
        if position is not None and position in self._handled:
            self.liveness.redeliveries_skipped += 1
            log.info("redelivery of a message already handled; acked again", extra={
                "what": what, "subject": raw.subject, "stream_sequence": position[2]})
            return
        delivered = metadata.num_delivered if metadata is not None else 1
        if delivered > MAX_DELIVER:
            self.liveness.crash_letters += 1
            await self._dead_letter(raw, f"delivered {delivered} times without being handled: the service "
                                         f"stopped while handling it each time ({what})")
            return
        heartbeat = asyncio.create_task(_heartbeat(raw)) if raw.reply else None
        try:
            await self._until_done(raw, handle, what)
            if position is not None:
                self._handled.first_time(position)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat

    async def _until_done(self, raw: Any, handle: Callable[[], Awaitable[None]], what: str) -> None:
        """Handle the message, waiting out a dependency that is down; try any other failure MAX_FAILURES times."""
        liveness = self.liveness

        def on_retry(error: BaseException | None) -> None:
            liveness.retry(what, error)
            if error is not None:
                metrics.RETRIES.labels(self.service, what).inc()

        started = time.perf_counter()
        for failures, delay in enumerate(delays(), start=1):
            try:
                await until_available(handle, what, on_retry, self._sleep)
            except Exception as error:  # not a dependency: a bug, or an input no check caught
                if failures >= MAX_FAILURES:
                    log.exception("message not handled; dead-lettered", extra={"what": what})
                    liveness.retry(what, None)
                    await self._dead_letter(raw, f"{what} failed {failures} times: {error!r}"[:1_000])
                    return
                liveness.retry(what, error)
                log.warning("message not handled; retrying", exc_info=True,
                            extra={"what": what, "subject": raw.subject, "error": repr(error), "retry_in_s": delay})
                await self._sleep(delay)
                continue
            liveness.retry(what, None)
            liveness.handled_one()
            metrics.MESSAGES_HANDLED.labels(self.service, what).inc()
            metrics.MESSAGE_HANDLING.labels(self.service, what).observe(time.perf_counter() - started)
            pending = getattr(getattr(raw, "metadata", None), "num_pending", None)
            if pending is not None:
                metrics.CONSUMER_PENDING.labels(self.service, what).set(pending)
            return

    async def _dead_letter(self, raw: Any, reason: str) -> None:
        metadata = getattr(raw, "metadata", None)
        msg_id = f"unhandled:{raw.subject}:{metadata.sequence.stream}" if metadata is not None else None
        await bus.dead_letter(self._js(), self.service, raw.subject, reason, raw.data, self.clock, msg_id=msg_id)


async def _heartbeat(raw: Any) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_S)
        with contextlib.suppress(Exception):  # the connection may be reconnecting; the next beat tries again
            await raw.in_progress()


def start_metrics(settings: ServiceSettings, name: str, liveness: Liveness) -> int | None:
    """Export the service's health as metrics; serve /metrics on `metrics_port` when set. Return the port,
    or None when none is served.

    A port that cannot be bound (another process took it) leaves the service without its metrics endpoint,
    said in an error log, rather than stopping a service that trades because its observability could not
    start: the scrape fails, which is what Prometheus alerts on.
    """
    metrics.track(name, liveness.status, liveness.started_ns / 1e9)
    if settings.metrics_port <= 0:
        return None
    try:
        return metrics.serve(settings.metrics_port, settings.metrics_host)
    except OSError as error:
        log.error("metrics not served: the port cannot be bound", extra={
            "host": settings.metrics_host, "port": settings.metrics_port, "error": str(error)})
        return None


def register_health(broker: NatsBroker, name: str, detail: Callable[[], dict[str, Any]],
                    liveness: Liveness | None = None) -> None:
    """Answer `qmp.health.<name>` requests with the service's status (from `liveness`) and details."""

    @broker.subscriber(subjects.health(name))
    async def health(msg: NatsMessage) -> bytes:
        status: HealthStatus = "ok"
        extra: dict[str, Any] = {}
        if liveness is not None:
            status = liveness.status()
            extra = {"liveness": liveness.detail()}
        return encode(HealthReply(service=name, status=status, pid=os.getpid(), ts_event=time.time_ns(),
                                  detail={**detail(), **extra}))


class Intake(Generic[T]):
    """A handler's typed input: decode one message type, or dead-letter the message with the reason.

    Every handler takes its input through one of these, so a message that is not what its subject
    promises is recorded the same way everywhere (`invalid <what>: <why>` on `qmp.dlq.<service>`, with
    the payload) and is never raised: a poisoned message must not be redelivered forever. A business
    rejection after decoding (a batch out of order, a command for another strategy) goes through
    `reject`, the same path.
    """

    def __init__(self, type_: Any, service: str, clock: Clock, what: str = "") -> None:
        self.codec = codec(type_)
        self.service = service
        self.clock = clock
        self.what = what or getattr(type_, "__name__", str(type_))
        self.dead_letters = 0

    async def decode(self, js: JetStreamContext, subject: str, data: bytes, msg_id: str | None = None,
                     content_type: str | None = None) -> T | None:
        """Return the decoded message, or None once it has been dead-lettered."""
        message, _ = await self.decode_request(js, subject, data, msg_id, content_type)
        return message

    async def decode_request(self, js: JetStreamContext, subject: str, data: bytes, msg_id: str | None = None,
                             content_type: str | None = None) -> tuple[T | None, str]:
        """Return (the decoded message, "") or (None, why it was dead-lettered): a request's reply says why.

        `content_type` is the message's Content-Type header (absent: JSON; see `qmp_core.messages`).
        """
        try:
            return self.codec.decode(data, content_type), ""
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            # UnicodeDecodeError: text in a binary body that is not UTF-8 (found by the ingest fuzz test)
            reason = f"invalid {self.what}: {error}"
            await self.reject(js, subject, reason, data, msg_id)
            return None, reason

    async def reject(self, js: JetStreamContext, subject: str, reason: str, data: bytes,
                     msg_id: str | None = None) -> None:
        """Dead-letter a message with the reason (`msg_id` makes a redelivery's letter a duplicate)."""
        self.dead_letters += 1
        await bus.dead_letter(js, self.service, subject, reason, data, self.clock, msg_id=msg_id)
