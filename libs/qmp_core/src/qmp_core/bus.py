"""Bus helpers: connections, the FastStream broker, JetStream streams and KV, idempotent publishing.

Everything that must not be lost is a JetStream publish with `Nats-Msg-Id` (dedup within the stream's
window) and the W3C trace context in the headers. Control requests are core NATS request/reply: a
stream on `qmp.control.>` would answer requests with its own publish ack.
"""

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import DeadLetter, encode
from qmp_core.telemetry import inject_context
from qmp_core.trading_state import ControlEntries

log = logging.getLogger(__name__)

DAY_S = 86_400.0
DUPLICATE_WINDOW_S = 600.0
PAYLOAD_EXCERPT = 2_000

STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(name=subjects.STREAM_MARKET_DATA, subjects=[subjects.MARKET_DATA_ALL], max_age=30 * DAY_S,
                 max_bytes=2 * 1024**3, discard=DiscardPolicy.OLD),
    StreamConfig(name=subjects.STREAM_INGEST, subjects=[subjects.INGEST_ALL], max_age=7 * DAY_S),
    StreamConfig(name=subjects.STREAM_EXEC, subjects=[subjects.EXEC_ALL], max_age=365 * DAY_S),
    StreamConfig(name=subjects.STREAM_RISK, subjects=[subjects.RISK_ALL], max_age=90 * DAY_S),
    StreamConfig(name=subjects.STREAM_AUDIT, subjects=[subjects.AUDIT_ALL]),
    StreamConfig(name=subjects.STREAM_DEPLOY, subjects=[subjects.DEPLOY_EVENTS_ALL]),
    StreamConfig(name=subjects.STREAM_DLQ, subjects=[subjects.DLQ_ALL], max_age=30 * DAY_S),
)


async def declare(js: JetStreamContext) -> None:
    """Create or update every stream and KV bucket; idempotent."""
    for config in STREAMS:
        config.storage = StorageType.FILE
        config.duplicate_window = DUPLICATE_WINDOW_S
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
    await control_bucket(js, create=True)
    await js.create_key_value(KeyValueConfig(bucket=subjects.KV_ROLLOUTS, history=16, storage=StorageType.FILE))


async def control_bucket(js: JetStreamContext, create: bool = False) -> KeyValue:
    """Return the trading-state KV bucket (history kept for the audit of who changed what)."""
    if create:
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.KV_CONTROL, history=16, storage=StorageType.FILE)
        )
    return await js.key_value(subjects.KV_CONTROL)


async def read_control_entries(js: JetStreamContext) -> ControlEntries:
    """Return the control bucket's entries as they are now (empty when it has none or does not exist)."""
    entries = ControlEntries()
    try:
        kv = await control_bucket(js)
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError, NotFoundError):
        return entries
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            entries.put(key, entry.value)
    return entries


async def stop_watch(watcher: Any, task: asyncio.Task[None] | None) -> None:
    """Stop a KV watcher and the task that consumes it; at shutdown the connection may be closed already."""
    if watcher is not None:
        with contextlib.suppress(Exception):
            await watcher.stop()
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def headers_for(msg_id: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return publish headers: Nats-Msg-Id for dedup, traceparent for the current span."""
    headers: dict[str, str] = {}
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    inject_context(headers)
    if extra:
        headers.update(extra)
    return headers


async def publish(js: JetStreamContext, subject: str, message: Any, msg_id: str | None = None) -> None:
    """Publish a message to a stream and wait for its ack; duplicates by msg_id are dropped by the server."""
    await js.publish(subject, encode(message), headers=headers_for(msg_id))


async def dead_letter(
    js: JetStreamContext, service: str, subject: str, reason: str, payload: bytes | str, clock: Clock,
    msg_id: str | None = None,
) -> None:
    """Record rejected input with its reason on `qmp.dlq.<service>`; never raises for a bad payload."""
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    letter = DeadLetter(service=service, subject=subject, reason=reason, payload=text[:PAYLOAD_EXCERPT],
                        ts_event=clock.now_ns())
    log.warning("dead letter", extra={"service": service, "subject": subject, "reason": reason})
    await publish(js, subjects.dlq(service), letter, msg_id=msg_id)


def dead_letter_later(
    tasks: set[asyncio.Task[None]], js: JetStreamContext, service: str, subject: str, reason: str,
    payload: bytes | str, clock: Clock,
) -> None:
    """Dead-letter in the background: for a reader (a KV watch) that must not wait on, or die of, the publish.

    A failed publish is logged, never raised: the reader has already acted on the bad input (fail safe).
    `tasks` keeps the pending publishes alive until they finish.
    """

    async def send() -> None:
        try:
            await dead_letter(js, service, subject, reason, payload, clock)
        except Exception as error:  # the bus may be down or refuse us: the letter is lost, the reader is not
            log.error("dead letter not published", extra={"service": service, "subject": subject,
                                                           "reason": reason, "error": repr(error)})

    task = asyncio.get_running_loop().create_task(send())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
