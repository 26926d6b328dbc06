"""Each hosted strategy's latest RiskSnapshot, kept in the engine: its ES sizes the next orders."""

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError, ServiceUnavailableError

from qmp_core import subjects
from qmp_core.lockstep import Progress
from qmp_core.messages import (
    RiskSnapshot,
    codec,
)
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import (
    CATCH_UP_TIMEOUT_S,
    RISK_FETCH,
)

log = logging.getLogger(__name__)


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
        self.resubscribed = 0  # times the watch's consumer was gone and made again

    async def start(self) -> None:
        hosts = self.engine.strategies()
        # Subscribe before reading the last values, so nothing published in between is missed.
        await self._subscribe(api.DeliverPolicy.NEW)
        for sid in hosts:
            with contextlib.suppress(NotFoundError):
                raw = await self.js.get_last_msg(subjects.STREAM_RISK, subjects.snapshot(sid))
                self._apply(raw.data or b"")
        self._task = asyncio.create_task(self._run(), name="execution-risk-watch")

    async def _subscribe(self, policy: api.DeliverPolicy) -> None:
        hosts = self.engine.strategies()
        subject = subjects.snapshot(hosts[0]) if len(hosts) == 1 else subjects.SNAPSHOT_ALL
        config = api.ConsumerConfig(deliver_policy=policy, ack_policy=api.AckPolicy.NONE,
                                    inactive_threshold=60.0, max_waiting=4)
        self._subscription = await self.js.pull_subscribe(subject, stream=subjects.STREAM_RISK, config=config)

    async def _lost(self) -> bool:
        """Whether the server no longer holds this watch's consumer: an ephemeral consumer has one copy, on
        one server of a cluster, and goes with that server."""
        try:
            await self._subscription.consumer_info()
        except (NotFoundError, ServiceUnavailableError):  # gone; or no server answers for it any more
            return True
        except (nats.errors.Error, TimeoutError):
            return False  # the server is busy or reconnecting: ask again at the next quiet moment
        return False

    async def _resubscribe(self) -> None:
        """Watch again from each strategy's latest snapshot (older ones would change nothing)."""
        with contextlib.suppress(Exception):
            await self._subscription.unsubscribe()
        await self._subscribe(api.DeliverPolicy.LAST_PER_SUBJECT)
        self.resubscribed += 1
        log.warning("risk snapshot watch made anew, from each strategy's latest snapshot")

    async def _run(self) -> None:
        while True:
            try:
                messages: list[Msg] = await self._subscription.fetch(RISK_FETCH, timeout=1.0)
            except TimeoutError:  # nats' own and asyncio's: fetch raises either when nothing came
                if await self._lost():
                    await self._resubscribe()
                continue
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as error:
                # A reconnect, or the consumer's server gone (a cluster: no server answers for it, or it
                # answers that it has none): watch again with a new consumer (the old one expires by itself).
                log.warning("risk snapshot fetch failed; watching anew", extra={"error": str(error)})
                await asyncio.sleep(0.2)
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await self._resubscribe()
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
        if await self._snapshots.wait_until(lambda: not self.behind(), timeout_s):
            return
        if self._subscription is None:  # not watching (yet): nothing to make anew
            log.warning("risk snapshots behind the book; sizing with the last one",
                        extra={"strategies": self.behind()})
            return
        # A watch can fall silent (its consumer went with a server of the cluster): watch anew, from each
        # strategy's latest snapshot, and wait once more before sizing without it.
        log.warning("risk snapshots behind the book; watching anew", extra={"strategies": self.behind()})
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._resubscribe()
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
