"""Bus helpers: connections, the FastStream broker, JetStream streams and KV, idempotent publishing.

Everything that must not be lost is a JetStream publish with `Nats-Msg-Id` (dedup within the stream's
window) and the W3C trace context in the headers. Control requests are core NATS request/reply: a
stream on `qmp.control.>` would answer requests with its own publish ack.
"""

import asyncio
import base64
import contextlib
import dataclasses
import datetime
import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StoreCompression, StreamConfig
from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from qmp_core import metrics, subjects
from qmp_core.clock import Clock
from qmp_core.config import Retention, StreamStorage
from qmp_core.messages import CONTENT_TYPE_JSON, DeadLetter, wire
from qmp_core.retry import Unavailable, until_available
from qmp_core.telemetry import inject_context, quiet_tls_upgrade_warning
from qmp_core.trading_state import ControlEntries

log = logging.getLogger(__name__)
# The longest a KV watch's stop waits for its unsubscribe, then for its reader task: a shutdown never hangs on one
# (a full-suite run once hung 300 s stopping a control watch renewed a moment before).
STOP_WATCH_S = 5.0

DAY_S = 86_400.0
DUPLICATE_WINDOW_S = 600.0
PAYLOAD_EXCERPT = 2_000
DEFAULT_RETENTION = Retention()
DEFAULT_STORAGE = StreamStorage()

MB = 1024 * 1024


def client_tls(ca_file: str) -> ssl.SSLContext | None:
    """Return a TLS context that trusts the certificates `ca_file` holds and nothing else; None: no TLS.

    The stack's CA (`QMP_NATS_TLS_CA`) is the only trust anchor: the system's CAs would also accept any
    publicly issued certificate for the server's name. The server's name is checked (127.0.0.1 for the
    embedded stack).
    """
    if not ca_file:
        return None
    logging.getLogger("asyncio").addFilter(quiet_tls_upgrade_warning)  # once: a logger keeps a filter once
    return ssl.create_default_context(cafile=ca_file)


def server_urls(url: str) -> list[str]:
    """Return the servers a NATS URL names: one, or a cluster's as a comma-separated list (a client tries
    them in turn, and moves to another when the one it speaks to goes)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def connect_options(user: str, password: str, tls_ca: str) -> dict[str, Any]:
    """Return `nats.connect` keyword arguments: the login (none when `user` is empty) and the stack's TLS."""
    options: dict[str, Any] = {"user": user, "password": password} if user else {}
    tls = client_tls(tls_ca)
    if tls is not None:
        options["tls"] = tls
    return options


def streams(retention: Retention = DEFAULT_RETENTION, storage: StreamStorage = DEFAULT_STORAGE) -> (
        tuple[StreamConfig, ...]):
    """Return every stream's configuration: its subjects, its age and size limits from `retention`, its
    replicas and compression from `storage`."""
    r = retention
    compression = StoreCompression.S2 if storage.stream_compression == "s2" else StoreCompression.NONE

    def stream(name: str, subject: str | list[str], days: float, mb: int) -> StreamConfig:
        # allow_direct: services read stored messages with direct gets (`read_stream`), which needs no
        # consumer, so no service is granted the consumer API on another's stream.
        return StreamConfig(name=name, subjects=subject if isinstance(subject, list) else [subject],
                            max_age=days * DAY_S, max_bytes=mb * MB, discard=DiscardPolicy.OLD,
                            storage=StorageType.FILE, duplicate_window=DUPLICATE_WINDOW_S, allow_direct=True,
                            num_replicas=storage.stream_replicas, compression=compression)

    return (
        stream(subjects.STREAM_MARKET_DATA, subjects.MARKET_DATA_ALL, r.retention_market_data_days,
               r.retention_market_data_mb),
        stream(subjects.STREAM_INGEST, subjects.INGEST_ALL, r.retention_ingest_days, r.retention_ingest_mb),
        stream(subjects.STREAM_EXEC, subjects.EXEC_ALL, r.retention_exec_days, r.retention_exec_mb),
        stream(subjects.STREAM_RISK, subjects.RISK_ALL, r.retention_risk_days, r.retention_risk_mb),
        stream(subjects.STREAM_AUDIT, [subjects.AUDIT_ALL, subjects.ALERTS_ALL], r.retention_audit_days,
               r.retention_audit_mb),
        stream(subjects.STREAM_DEPLOY, subjects.DEPLOY_EVENTS_ALL, r.retention_deploy_days, r.retention_deploy_mb),
        stream(subjects.STREAM_DLQ, subjects.DLQ_ALL, r.retention_dlq_days, r.retention_dlq_mb),
    )


STREAMS = streams()


def buckets(retention: Retention = DEFAULT_RETENTION, storage: StreamStorage = DEFAULT_STORAGE) -> (
        tuple[KeyValueConfig, ...]):
    """Return the KV buckets' configurations (trading state, rollouts, pre-trade limits, accounts) with their
    size limits and replicas."""
    replicas = storage.stream_replicas
    return (
        KeyValueConfig(bucket=subjects.KV_CONTROL, history=retention.retention_control_history,
                       storage=StorageType.FILE, max_bytes=retention.retention_control_mb * MB, replicas=replicas),
        KeyValueConfig(bucket=subjects.KV_ROLLOUTS, history=16, storage=StorageType.FILE,
                       max_bytes=retention.retention_rollouts_mb * MB, replicas=replicas),
        KeyValueConfig(bucket=subjects.KV_LIMITS, history=16, storage=StorageType.FILE,
                       max_bytes=retention.retention_rollouts_mb * MB, replicas=replicas),
        KeyValueConfig(bucket=subjects.KV_ACCOUNTS, history=16, storage=StorageType.FILE,
                       max_bytes=retention.retention_rollouts_mb * MB, replicas=replicas),
    )


# Every stream QMP declares, buckets included (a bucket is a stream named KV_<bucket>).
DECLARED = (*(config.name for config in STREAMS), *(f"KV_{bucket.bucket}" for bucket in buckets()))


async def declare(js: JetStreamContext, retention: Retention = DEFAULT_RETENTION,
                  storage: StreamStorage = DEFAULT_STORAGE) -> None:
    """Create or update every stream and KV bucket with the limits of `retention` and the replicas and
    compression of `storage`; idempotent."""
    for config in streams(retention, storage):
        # Update what exists: adding a stream again re-checks its size reservation against the file
        # store as if it were new, and is refused once the streams fill most of it.
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    for bucket in buckets(retention, storage):
        try:  # a bucket is a stream named KV_<bucket>
            existing = (await js.stream_info(f"KV_{bucket.bucket}")).config
        except NotFoundError:
            await js.create_key_value(bucket)
        else:
            await js.update_stream(dataclasses.replace(existing, max_bytes=bucket.max_bytes,
                                                       max_msgs_per_subject=bucket.history,
                                                       num_replicas=bucket.replicas))


class NotDeclared(Unavailable):
    """A stream or bucket a service needs does not exist yet: `qmp up` or `qmp init` declares them."""


async def require_declared(js: JetStreamContext) -> None:
    """Raise NotDeclared unless every stream and bucket exists (services use them; only the admin declares)."""
    for name in DECLARED:
        try:
            await js.stream_info(name)
        except NotFoundError:
            raise NotDeclared(f"stream {name} is not declared: start the stack with `qmp up`, or run `qmp init` "
                              "against this NATS") from None


async def wait_declared(js: JetStreamContext, service: str) -> None:
    """Wait (logging, with backoff) until the streams and buckets are declared; transient errors wait too."""
    await until_available(lambda: require_declared(js), f"{service}: declared streams")


async def control_bucket(js: JetStreamContext) -> KeyValue:
    """Return the trading-state KV bucket (history kept for the audit of who changed what)."""
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
    """Stop a KV watcher and the task that consumes it; at shutdown the connection may be closed already.

    The task is waited for with `asyncio.wait`, not awaited under a suppressed CancelledError: that would also
    swallow a cancellation of the caller itself (a guard stopped while it renews a watch would run on)."""
    if watcher is not None:
        with contextlib.suppress(Exception):  # a timeout included: the unsubscribe is best effort
            await asyncio.wait_for(watcher.stop(), STOP_WATCH_S)
    if task is not None:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=STOP_WATCH_S)
        if not done:  # never hang a shutdown on a reader: it is cancelled, and left to finish on its own
            log.warning("a KV watch's reader did not stop in time; left behind", extra={"task": task.get_name()})


def content_type(headers: Mapping[str, str] | None) -> str | None:
    """Return a message's Content-Type header, or None (JSON) when it has none."""
    return headers.get("Content-Type") if headers else None


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
    """Publish a message to a stream and wait for its ack; duplicates by msg_id are dropped by the server.

    Bars go in their binary form with a Content-Type header (`messages.wire`); everything else is JSON,
    which needs no header.
    """
    payload, content_type = wire(message)
    extra = None if content_type == CONTENT_TYPE_JSON else {"Content-Type": content_type}
    await js.publish(subject, payload, headers=headers_for(msg_id, extra))
    metrics.MESSAGES_PUBLISHED.labels(metrics.subject_kind(subject)).inc()


async def dead_letter(
    js: JetStreamContext, service: str, subject: str, reason: str, payload: bytes | str, clock: Clock,
    msg_id: str | None = None,
) -> None:
    """Record rejected input with its reason on `qmp.dlq.<service>`; never raises for a bad payload."""
    if isinstance(payload, bytes):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:  # a binary message (bars in their binary form): kept whole, readable
            text = "base64:" + base64.b64encode(payload[:PAYLOAD_EXCERPT]).decode("ascii")
    else:
        text = payload
    letter = DeadLetter(service=service, subject=subject, reason=reason, payload=text[:PAYLOAD_EXCERPT],
                        ts_event=clock.now_ns())
    log.warning("dead letter", extra={"service": service, "subject": subject, "reason": reason})
    metrics.DEAD_LETTERS.labels(service).inc()
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


@dataclasses.dataclass(frozen=True)
class StreamUsage:
    """What a stream holds on disk against its limit, and how fast it grew over the span it holds."""

    name: str
    messages: int
    bytes: int
    max_bytes: int
    span_s: float  # from its oldest to its newest message

    @property
    def share_of_limit(self) -> float:
        return self.bytes / self.max_bytes if self.max_bytes > 0 else 0.0

    @property
    def bytes_per_hour(self) -> float | None:
        return self.bytes / self.span_s * 3_600.0 if self.span_s > 0 else None


async def stream_usage(nc: Any) -> list[StreamUsage]:
    """Return the usage of every QMP stream and bucket that exists (read from the stream info API).

    The API's raw answer is read because nats-py's StreamState leaves out the first and last message times.
    """
    usage: list[StreamUsage] = []
    for name in DECLARED:
        reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=2.0)
        info = json.loads(reply.data)
        if "error" in info:
            continue
        state, config = info.get("state", {}), info.get("config", {})
        span = 0.0
        if state.get("messages", 0) > 1:
            # RFC 3339 with nanoseconds and Z: Python 3.11's fromisoformat takes it (to the microsecond)
            span = (datetime.datetime.fromisoformat(state["last_ts"])
                    - datetime.datetime.fromisoformat(state["first_ts"])).total_seconds()
        usage.append(StreamUsage(name=name, messages=state.get("messages", 0), bytes=state.get("bytes", 0),
                                 max_bytes=config.get("max_bytes", -1), span_s=max(span, 0.0)))
    return usage


READ_BATCH = 256
READ_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """A message as a stream holds it."""

    seq: int
    subject: str
    data: bytes
    headers: Mapping[str, str]


async def read_stream(nc: Any, stream: str, subject: str, first_seq: int = 1, upto_seq: int | None = None,
                      batch: int = READ_BATCH) -> AsyncIterator[StoredMessage]:
    """Yield the stream's messages on `subject` (wildcards allowed) from `first_seq` up to `upto_seq`, in order.

    Batched direct gets (`$JS.API.DIRECT.GET.<stream>` with `batch`, nats-server 2.11+): reading needs no
    consumer, hence no grant of the consumer API. Each request answers up to `batch` messages, then an
    end-of-batch status (204); a 404 means nothing more matches.
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    seq = first_seq
    try:
        while upto_seq is None or seq <= upto_seq:
            request = {"seq": seq, "next_by_subj": subject, "batch": batch}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            got = 0
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status == "404":
                    return
                if status == "204":
                    break
                if status:
                    raise ConnectionError(f"direct get on {stream} failed: {status} {headers.get('Description', '')}")
                stored = StoredMessage(seq=int(headers["Nats-Sequence"]), subject=headers.get("Nats-Subject", ""),
                                       data=msg.data, headers=headers)
                if upto_seq is not None and stored.seq > upto_seq:
                    return
                got += 1
                seq = stored.seq + 1
                yield stored
            if got == 0:
                return
    finally:
        await sub.unsubscribe()
