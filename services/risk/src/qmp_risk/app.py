"""Composition root: settings → clock, engine, broker → subscribers → FastStream app.

Subscribes (durable, explicit ack) to every venue's bars, every strategy's portfolio snapshots and the
news calendar (`qmp.md.news.events`), and (core NATS) to the effective trading states; answers
`qmp.health.risk`; runs the timed breaker check (stale data, news windows). The JetStream streams are
declared by the runtime (`qmp up`) or the operator (`qmp init`), not here: risk waits for them.

Both durable consumers fetch one message at a time: FastStream runs the messages of one fetched batch
concurrently, and a handler that awaits (the portfolio handler waits for bars, sends requests, writes)
would then see a strategy's snapshots, or a venue's bars, out of order.
"""

import asyncio
import contextlib
import logging

from faststream import FastStream
from faststream.nats import NatsBroker, NatsMessage

from qmp_core import bus, subjects
from qmp_core.clock import Clock, ReplayClock, make_clock
from qmp_core.service import Durable, Liveness, durable_subscriber, make_broker, register_health, start_metrics
from qmp_risk.account_watch import AccountWatch
from qmp_risk.config import RiskSettings
from qmp_risk.engine import RiskEngine
from qmp_risk.handlers import SERVICE, RiskHandlers
from qmp_risk.recovery import Rebuilt, rebuild

ORDERED_BATCH = 1


class RiskService:
    """The risk service's parts, wired; `start()` / `stop()` run it in-process (tests, embedding)."""

    def __init__(self, settings: RiskSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock if clock is not None else make_clock(settings.clock)
        self.engine = RiskEngine(settings, self.clock)
        self.broker: NatsBroker = make_broker(settings, SERVICE)
        self.handlers = RiskHandlers(self.engine, self.clock, settings, lambda: self.broker.connection)
        self.liveness = Liveness()
        self.durable = Durable(SERVICE, self.clock, self.liveness, lambda: self.broker.connection.jetstream())
        self._checks: asyncio.Task[None] | None = None
        self.rebuilt = Rebuilt()
        self.accounts: AccountWatch | None = None
        self._subscribe()

    def _subscribe(self) -> None:
        handlers = self.handlers

        @self.broker.subscriber(subjects.MARKET_DATA_BARS_ALL,
                                **durable_subscriber(subjects.STREAM_MARKET_DATA, self.settings.consumer("bars"),
                                                     batch_size=ORDERED_BATCH))
        async def bars(msg: NatsMessage) -> None:
            await self.durable.handle(msg, lambda: handlers.on_bars(msg), "market data")

        @self.broker.subscriber(subjects.PORTFOLIO_ALL,
                                **durable_subscriber(subjects.STREAM_EXEC, self.settings.consumer("portfolio"),
                                                     batch_size=ORDERED_BATCH))
        async def portfolio(msg: NatsMessage) -> None:
            await self.durable.handle(msg, lambda: handlers.on_portfolio(msg), "portfolio snapshot")

        @self.broker.subscriber(subjects.NEWS_EVENTS,
                                **durable_subscriber(subjects.STREAM_MARKET_DATA, self.settings.consumer("news"),
                                                     batch_size=ORDERED_BATCH))
        async def news(msg: NatsMessage) -> None:
            await self.durable.handle(msg, lambda: handlers.on_news(msg), "news event")

        @self.broker.subscriber(subjects.STATE_ALL)
        async def state(msg: NatsMessage) -> None:
            await handlers.on_state(msg)

        register_health(self.broker, SERVICE, handlers.health_detail, self.liveness)

    async def start(self) -> None:
        """Open the database pool, rebuild from the streams, start consuming and start the timed checks."""
        await self.prepare()
        await self.broker.start()
        self.start_checks()

    async def prepare(self) -> None:
        """Warm the kernels, open the pool, then rebuild the engine before any subscriber takes a message."""
        await self.handlers.open()
        await self.broker.connect()
        await bus.wait_declared(self.broker.connection.jetstream(), SERVICE)
        # Accounts and their members are known before the rebuild replays the books through the account breaker.
        if self.accounts is None:
            self.accounts = AccountWatch(self.engine.accounts, self.broker.connection.jetstream())
            await self.accounts.start()
        if self.settings.rebuild:
            self.rebuilt = await rebuild(self.engine, self.broker.connection, self.settings)

    async def stop(self) -> None:
        await self.stop_checks()
        await self.stop_watch()
        await self.broker.stop()
        await self.handlers.close()

    async def stop_watch(self) -> None:
        if self.accounts is not None:
            await self.accounts.stop()
            self.accounts = None

    def start_checks(self) -> None:
        if self._checks is None:
            self._checks = asyncio.get_running_loop().create_task(self.handlers.run_checks())
            # On a replay clock the checks run with each snapshot instead, and the loop ends at once.
            self.liveness.watch("timed checks", self._checks, may_end=isinstance(self.clock, ReplayClock))
        start_metrics(self.settings, SERVICE, self.liveness)
        self.liveness.ready()

    async def stop_checks(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
            self._checks = None


def create_app(settings: RiskSettings, clock: Clock | None = None) -> FastStream:
    """Return the FastStream app of the risk service: the pool opens before the broker starts."""
    service = RiskService(settings, clock)

    async def open_resources() -> None:
        await service.prepare()

    async def start_checks() -> None:
        service.start_checks()

    async def close_resources() -> None:
        await service.stop_checks()
        await service.stop_watch()
        await service.handlers.close()

    # The app's own start/stop lines go through the service's JSON log handler, not FastStream's.
    return FastStream(service.broker, logger=logging.getLogger("qmp_risk"), on_startup=[open_resources],
                      after_startup=[start_checks], after_shutdown=[close_resources])
