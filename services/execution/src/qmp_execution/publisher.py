"""JetStream publishing with acknowledgements, for thousands of messages per batch.

Each message is published with a reply subject under one inbox of ours; the stream's acks arrive on one
wildcard subscription and are counted against the outstanding tokens; `confirm` waits until every one
is acknowledged (or raises). Compared with nats-py's `publish_async` this creates no future and parses
no JSON per message, which is most of the cost of a 1,000-fill batch. It also ignores stray replies:
a core subscriber of the same subject that answers (FastStream replies to any message with a reply
subject) must not be taken for the stream's ack, which a plain request would do.

Acks in flight when the connection drops never come (a nats-server restart): a confirm that sees the
connection re-established fails at once instead of waiting out its timeout, and the caller publishes
again under the same ids, which the stream deduplicates. Nor do they when the stream's leader dies and the
connection, to another server of a cluster, stays up: a confirm that has heard no ack for ACK_STALL_S fails
then too, rather than at its timeout (the cluster chaos test waited 30 s there, and lost lockstep).
"""

import asyncio
import contextlib
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg

from qmp_core import metrics
from qmp_core.retry import Unavailable

STATUS_HEADER = "Status"
ACK_CHECK_S = 0.25  # how often a confirm looks whether the connection was re-established meanwhile
ACK_STALL_S = 5.0  # no ack at all for this long while some are awaited: the stream lost them; publish again
NO_RESPONDERS = "503"


class PublishFailed(Unavailable):
    """The stream refused a message, or did not acknowledge all of them in time: retried, as the bus is."""


class AckedPublisher:
    """Publish to JetStream subjects without waiting per message; `confirm` waits for all the acks."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.published = 0
        self._prefix = ""
        self._next = 0
        self._outstanding: set[int] = set()
        self._errors: list[str] = []
        self._done = asyncio.Event()
        self._subscription = None
        self._reconnects = 0  # the connection's reconnect count when the outstanding messages were sent
        self._heard = 0.0  # loop time of the last send or ack: how long the stream has been silent

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_ack, pending_msgs_limit=-1,
                                                     pending_bytes_limit=-1)

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None

    async def send(self, subject: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Publish one message; its ack is awaited by the next `confirm`."""
        if self._subscription is None:
            raise RuntimeError("AckedPublisher.send before start()")
        self._next += 1
        if not self._outstanding:
            self._reconnects = self.nc.stats["reconnects"]
        self._outstanding.add(self._next)
        self._done.clear()
        self._heard = asyncio.get_running_loop().time()
        await self.nc.publish(subject, payload, reply=f"{self._prefix}.{self._next}", headers=dict(headers))
        self.published += 1
        metrics.MESSAGES_PUBLISHED.labels(metrics.subject_kind(subject)).inc()

    async def confirm(self, timeout_s: float) -> None:
        """Wait until every message sent so far is acknowledged; raise PublishFailed otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._outstanding:
            if self.nc.stats["reconnects"] != self._reconnects:
                missing = len(self._outstanding)
                self._outstanding.clear()
                raise PublishFailed(f"the connection to NATS was re-established: the acks of {missing} messages "
                                    "are lost")
            if loop.time() >= deadline:
                missing = len(self._outstanding)
                self._outstanding.clear()
                raise PublishFailed(f"{missing} messages not acknowledged by the stream in {timeout_s:g}s")
            if loop.time() - self._heard >= ACK_STALL_S:
                missing = len(self._outstanding)
                self._outstanding.clear()
                raise PublishFailed(f"no acknowledgement from the stream for {ACK_STALL_S:g}s: the acks of {missing} "
                                    "messages are lost (a stream leader gone?)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), min(ACK_CHECK_S, max(deadline - loop.time(), 0.0)))
        if self._errors:
            errors, self._errors = self._errors, []
            raise PublishFailed(f"the stream refused {len(errors)} messages, first: {errors[0]}")

    async def _on_ack(self, msg: Msg) -> None:
        try:
            token = int(msg.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        if token not in self._outstanding:
            return
        data = msg.data
        if msg.headers and msg.headers.get(STATUS_HEADER) == NO_RESPONDERS:
            self._errors.append(f"no stream for the subject (503) of message {token}")
        elif b'"error"' in data[:16]:
            self._errors.append(data[:300].decode(errors="replace"))
        elif b'"stream"' not in data[:32]:
            return  # not the stream's answer: keep waiting for the ack
        self._outstanding.discard(token)
        self._heard = asyncio.get_running_loop().time()
        if not self._outstanding:
            self._done.set()
