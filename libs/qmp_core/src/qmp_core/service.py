"""What every service's composition root uses: the FastStream broker, durable subscribers, health.

Pattern (see services/*/src/qmp_*/app.py): settings from env → `make_broker` → register handlers with
`durable_subscriber(...)` options → `FastStream(broker)`; raw JetStream/KV through
`broker.connection.jetstream()` once started.
"""

import os
import time
from collections.abc import Callable
from typing import Any

from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from faststream.security import SASLPlaintext

from qmp_core import subjects
from qmp_core.config import ServiceSettings
from qmp_core.messages import HealthReply, encode

MAX_DELIVER = 5


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
