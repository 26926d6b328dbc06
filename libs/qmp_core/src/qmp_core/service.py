"""What every service's composition root uses: the FastStream broker, durable subscribers, health.

Pattern (see services/*/src/qmp_*/app.py): settings from env → `make_broker` → register handlers with
`durable_subscriber(...)` options → `FastStream(broker)`; raw JetStream/KV through
`broker.connection.jetstream()` once started.
"""

import os
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from faststream.security import SASLPlaintext
from nats.js import JetStreamContext

from qmp_core import bus, subjects
from qmp_core.clock import Clock
from qmp_core.config import ServiceSettings
from qmp_core.messages import HealthReply, codec, encode

MAX_DELIVER = 5
T = TypeVar("T")


def make_broker(settings: ServiceSettings, name: str) -> NatsBroker:
    """Return a broker that connects as this service's NATS user; FastStream's own logging off (hot path)."""
    security = None
    if settings.nats_user:
        security = SASLPlaintext(username=settings.nats_user, password=settings.nats_password)
    return NatsBroker(
        settings.nats_url, security=security, logger=None, name=f"qmp-{name}",
        max_reconnect_attempts=-1, reconnect_time_wait=1,
    )


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
        "config": ConsumerConfig(max_deliver=MAX_DELIVER, ack_wait=30, max_ack_pending=1),
    }


def register_health(broker: NatsBroker, name: str, detail: Callable[[], dict[str, Any]]) -> None:
    """Answer `qmp.health.<name>` requests with the service's status and details."""

    @broker.subscriber(subjects.health(name))
    async def health(msg: NatsMessage) -> bytes:
        return encode(HealthReply(service=name, status="ok", pid=os.getpid(), ts_event=time.time_ns(),
                                  detail=detail()))


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

    async def decode(self, js: JetStreamContext, subject: str, data: bytes, msg_id: str | None = None) -> T | None:
        """Return the decoded message, or None once it has been dead-lettered."""
        message, _ = await self.decode_request(js, subject, data, msg_id)
        return message

    async def decode_request(self, js: JetStreamContext, subject: str, data: bytes,
                             msg_id: str | None = None) -> tuple[T | None, str]:
        """Return (the decoded message, "") or (None, why it was dead-lettered): a request's reply says why."""
        try:
            return self.codec.decode(data), ""
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            reason = f"invalid {self.what}: {error}"
            await self.reject(js, subject, reason, data, msg_id)
            return None, reason

    async def reject(self, js: JetStreamContext, subject: str, reason: str, data: bytes,
                     msg_id: str | None = None) -> None:
        """Dead-letter a message with the reason (`msg_id` makes a redelivery's letter a duplicate)."""
        self.dead_letters += 1
        await bus.dead_letter(js, self.service, subject, reason, data, self.clock, msg_id=msg_id)
