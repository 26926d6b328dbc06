"""Collector composition root: settings, broker, clock, engine, source; the FastStream app.

Start-up: connect and wait until the streams are declared (by `qmp up` or `qmp init`; the durable ingest
consumer needs its stream), open the database pool, build the handlers, start the broker (ingest
subscriber, health), then run the source's publish loop as a background task that resumes after what the
stream already holds.
"""

import asyncio
import logging
import time
import warnings
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import asyncpg
import msgspec
import pandas as pd
from faststream import FastStream
from faststream.nats import NatsBroker, NatsMessage
from msgspec import Meta
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from opentelemetry import context

from qmp_collector.engine import CollectorEngine, InputBounds
from qmp_collector.handlers import SERVICE, Collector, LockstepGate
from qmp_collector.sources import FileSource, HistorySource, SyntheticLiveAdapter, SyntheticSource
from qmp_collector.store import BarStore
from qmp_collector.venue_sources import VenueBars
from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_DAY, LiveClock, ReplayClock, make_clock
from qmp_core.config import ServiceSettings, load_settings
from qmp_core.db import connect_pool
from qmp_core.messages import BarBatch
from qmp_core.retry import Unavailable
from qmp_core.service import Durable, Liveness, durable_subscriber, make_broker, register_health, start_metrics
from qmp_core.telemetry import extract_context, setup_logging, setup_tracing
from qmp_venues.bars import AlpacaBars, CcxtBars

LOCKSTEP_LOOP = ("execution", "risk")  # the services between a batch and its risk snapshot

log = logging.getLogger(__name__)

DEFAULT_VENUES = {"synthetic": "synth", "history": "sp500", "file": "file", "exchange": "", "alpaca": "alpaca"}


class CollectorSettings(ServiceSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Collector settings; each field `x` is read from `QMP_X`."""

    source: Literal["synthetic", "history", "file", "exchange", "alpaca"] = "synthetic"
    venue: str = ""  # empty: synth, sp500 or file after the source
    symbols: Annotated[int, Meta(ge=1)] = 50  # synthetic universe size
    seed: int = 7
    start: str = "2007-01-01"  # history range; also the synthetic market's first bar (00:00 UTC)
    end: str = "2009-12-31"
    file: str = ""
    replay_rate: Annotated[float, Meta(ge=0)] = 0.0  # batches per second; 0 = as fast as possible
    bar_seconds: Annotated[float, Meta(gt=0)] = 60.0  # synthetic event-time step
    max_batches: Annotated[int, Meta(ge=0)] = 0  # 0 = until the source ends
    chunk_size: Annotated[int, Meta(ge=1)] = 1000
    lockstep_strategy: str = ""
    lockstep_timeout: Annotated[float, Meta(gt=0)] = 10.0  # seconds
    flush_rows: Annotated[int, Meta(ge=1)] = 50_000  # bars per COPY
    ingest_durable: str = subjects.CONSUMER_COLLECTOR_INGEST
    # Input bounds (see qmp_collector.engine.InputBounds): seconds a bar may be stamped after the wall
    # clock; the factor from a symbol's last accepted close beyond which a price is held (0: never held).
    future_tolerance: Annotated[float, Meta(ge=0)] = 300.0
    max_price_jump: Annotated[float, Meta(ge=0)] = 5.0
    # A venue's bars, live (QMP_SOURCE=exchange or alpaca): the symbols (the venue's own: BTC/USDT, AAPL),
    # how many closed bars to start back, how often to ask.
    venue_symbols: list[str] = msgspec.field(default_factory=list)
    venue_backfill_bars: Annotated[int, Meta(ge=0)] = 0
    venue_poll_s: Annotated[float, Meta(gt=0)] = 10.0
    # A crypto exchange through ccxt: its id, the bar timeframe, its testnet unless false, another base URL
    # for its API (a fake exchange in tests). Its bars are public: no keys.
    exchange_id: str = "binance"
    exchange_timeframe: str = "1m"
    exchange_sandbox: bool = True
    exchange_url: str = ""
    # Alpaca's market data: the key and secret (or a JSON secrets file, mode 0600), the feed (iex: free; sip:
    # every exchange, a subscription), minutes per bar, another base URL (a fake venue in tests).
    alpaca_api_key: str = ""
    alpaca_secret_key: str = ""
    alpaca_secrets_file: str = ""
    alpaca_feed: Literal["iex", "sip"] = "iex"
    alpaca_bar_minutes: Annotated[int, Meta(ge=1)] = 1
    alpaca_data_url: str = ""

    secret_fields: ClassVar[frozenset[str]] = ServiceSettings.secret_fields | {"alpaca_api_key", "alpaca_secret_key"}

    @property
    def venue_id(self) -> str:
        return self.venue or DEFAULT_VENUES[self.source] or self.exchange_id


def check_settings(settings: CollectorSettings) -> None:
    """Fail fast at start on settings that cannot work together."""
    subjects.check_token(settings.venue_id, "QMP_VENUE")
    if settings.lockstep_strategy:
        subjects.check_token(settings.lockstep_strategy, "QMP_LOCKSTEP_STRATEGY")
    if settings.source == "file" and not settings.file:
        raise ValueError("QMP_SOURCE=file needs QMP_FILE, the path of a CSV or Parquet file")
    if settings.source in ("exchange", "alpaca"):
        if not settings.venue_symbols:
            raise ValueError(f"QMP_SOURCE={settings.source} needs QMP_VENUE_SYMBOLS: the venue's symbols, e.g. "
                             + ("BTC/USDT,ETH/USDT" if settings.source == "exchange" else "AAPL,MSFT"))
        if settings.clock != "live":
            raise ValueError(f"QMP_SOURCE={settings.source} is a live feed: it needs QMP_CLOCK=live")
    for name in ("start", "end"):
        try:
            pd.Timestamp(getattr(settings, name))
        except ValueError as error:
            raise ValueError(f"QMP_{name.upper()} must be a date such as 2008-01-31, "
                             f"got {getattr(settings, name)!r}") from error


def input_bounds(settings: CollectorSettings) -> InputBounds:
    """Return the bounds of what the collector accepts; a history replay also ends at its last day."""
    window_end = None
    if settings.source == "history":
        window_end = int(_utc(settings.end).value) + NS_PER_DAY - 1
    return InputBounds(future_tolerance_s=settings.future_tolerance, window_end_ns=window_end,
                       max_price_jump=settings.max_price_jump)


def _utc(day: str) -> pd.Timestamp:
    stamp = pd.Timestamp(day)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def venue_fetcher(settings: CollectorSettings) -> CcxtBars | AlpacaBars:
    """How to ask the venue for its bars (its client library is imported only for a venue source)."""
    if settings.source == "exchange":
        from qmp_venues.ccxt_exchange import make_exchange

        exchange = make_exchange(settings.exchange_id, sandbox=settings.exchange_sandbox, url=settings.exchange_url)
        return CcxtBars(exchange, settings.venue_symbols, settings.exchange_timeframe)
    with warnings.catch_warnings():  # alpaca-py's streams import `websockets.legacy`, which warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from alpaca.data.historical import StockHistoricalDataClient

    from qmp_venues.credentials import load_credentials

    key, secret = load_credentials("Alpaca", "QMP_ALPACA", settings.alpaca_api_key, settings.alpaca_secret_key,
                                   settings.alpaca_secrets_file)
    client = StockHistoricalDataClient(key, secret, url_override=settings.alpaca_data_url or None)
    return AlpacaBars(client, settings.venue_symbols, settings.alpaca_bar_minutes, settings.alpaca_feed)


def build_source(
    settings: CollectorSettings, clock: LiveClock | ReplayClock, sleep: Callable[[float], Awaitable[None]],
) -> Iterable[BarBatch] | AsyncIterable[BarBatch]:
    """Return the configured source; synthetic on a live clock runs as a live feed on wall time."""
    venue = settings.venue_id
    if settings.source == "history":
        return HistorySource(settings.start, settings.end, venue=venue)
    if settings.source == "file":
        return FileSource(settings.file, venue)
    if settings.source in ("exchange", "alpaca"):
        return VenueBars(venue_fetcher(settings), settings.venue_symbols, venue, clock, sleep,
                         settings.venue_backfill_bars, settings.venue_poll_s)
    start_ns = int(_utc(settings.start).value)
    synthetic = SyntheticSource(settings.symbols, settings.seed, start_ns, settings.bar_seconds, venue)
    if isinstance(clock, LiveClock):
        return SyntheticLiveAdapter(synthetic, clock, sleep)
    return synthetic


class CollectorService:
    """The running collector: what the FastStream hooks call, and what tests drive in-process."""

    def __init__(
        self, settings: CollectorSettings, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        check_settings(settings)
        self.settings = settings
        self.sleep = sleep
        self.monotonic = monotonic
        self.clock = make_clock(settings.clock)
        self.engine = CollectorEngine(self.clock, LiveClock(), input_bounds(settings))
        self.broker: NatsBroker = make_broker(settings, SERVICE)
        self.collector: Collector | None = None
        self.pool: asyncpg.Pool | None = None
        self.task: asyncio.Task[None] | None = None
        self._lockstep_sub: Subscription | None = None
        self.liveness = Liveness()
        self.durable = Durable(SERVICE, self.clock, self.liveness, lambda: self.broker.connection.jetstream())
        self._register()

    def _register(self) -> None:
        options = durable_subscriber(subjects.STREAM_INGEST, self.settings.ingest_durable)

        @self.broker.subscriber(subjects.ingest("*"), **options)
        async def on_ingest(msg: NatsMessage) -> None:
            raw = msg.raw_message
            seq = raw.metadata.sequence.stream if raw.reply else None

            async def handle() -> None:
                if self.collector is None:
                    raise Unavailable("collector is starting")
                token = context.attach(extract_context(msg.headers))
                try:
                    await self.collector.on_ingest(raw.subject, msg.body, seq, bus.content_type(msg.headers))
                finally:
                    context.detach(token)

            await self.durable.handle(msg, handle, "ingest")

        register_health(self.broker, SERVICE, self.detail, self.liveness)

    def detail(self) -> dict[str, Any]:
        base: dict[str, Any] = {"source": self.settings.source, "venue": self.settings.venue_id}
        if self.collector is None:
            return {**base, "published": 0, "rejected": 0, "last_ts": None, "done": False}
        return {**base, **self.collector.detail()}

    async def prepare(self) -> None:
        """Connect, wait for the streams and open the database before the broker's subscribers start."""
        await self.broker.connect()
        js = self.broker.connection.jetstream()
        await bus.wait_declared(js, SERVICE)
        self.pool = await connect_pool(self.settings.database_url) if self.settings.database_url else None
        store = None
        if self.pool is not None:
            store = BarStore(self.pool, self.settings.flush_rows,
                             on_retry=lambda error: self.liveness.retry("bar store", error))
        lockstep = (LockstepGate(self.settings.lockstep_strategy, self._stored_snapshot,
                                 dependency_wait=self._loop_waiting_on)
                    if self.settings.lockstep_strategy else None)
        self.collector = Collector(js, self.engine, self.clock, store, self.settings.chunk_size, lockstep,
                                   self.settings.lockstep_timeout)
        self.collector.on_retry = lambda error: self.liveness.retry("market-data publish", error)

    async def _stored_snapshot(self) -> bytes | None:
        """Return the lockstep strategy's last risk snapshot on the stream, None when there is none yet."""
        try:
            msg = await self.broker.connection.jetstream().get_last_msg(
                subjects.STREAM_RISK, subjects.snapshot(self.settings.lockstep_strategy))
        except (NatsError, TimeoutError) as error:  # none yet, or the server is away: the wait goes on
            log.debug("lockstep: no stored risk snapshot", extra={"error": repr(error)})
            return None
        return msg.data

    async def _loop_waiting_on(self) -> str:
        """Return what risk or execution says it is waiting on (health `degraded`), "" when neither is.

        A service that does not answer is not waiting on anything the lockstep could wait out with it.
        """
        waiting = []
        for service in LOCKSTEP_LOOP:
            try:
                reply = await self.broker.connection.request(subjects.health(service), b"", timeout=1.0)
                health = msgspec.json.decode(reply.data)
            except (NatsError, TimeoutError, msgspec.DecodeError):
                continue
            if isinstance(health, dict) and health.get("status") == "degraded":
                waiting.append(f"{service}: {', '.join(sorted(health.get('retrying') or {})) or 'a dependency'}")
        return "; ".join(waiting)

    async def begin(self) -> None:
        """Subscribe to risk snapshots (lockstep), find where to resume, start the publish loop."""
        collector = self._ready()
        if collector.lockstep is not None:
            gate = collector.lockstep

            async def on_snapshot(msg: Msg) -> None:
                gate.on_snapshot(msg.data)

            self._lockstep_sub = await self.broker.connection.subscribe(
                subjects.snapshot(gate.strategy), cb=on_snapshot)
        venue = self.settings.venue_id
        resume = await collector.seed(venue)
        store_from = await collector.store.last_ts(venue) if collector.store is not None else None
        source = build_source(self.settings, self.clock, self.sleep)
        log.info("collector started", extra={"source": self.settings.source, "venue": venue,
                                             "resume_ts": resume.ts_event if resume else None})
        self.task = asyncio.create_task(collector.run_source(
            source, max_batches=self.settings.max_batches, replay_rate=self.settings.replay_rate,
            sleep=self.sleep, monotonic=self.monotonic, resume=resume, store_from_ns=store_from,
        ), name="collector-publish")
        self.task.add_done_callback(_log_failure)
        self.liveness.watch("publish loop", self.task, may_end=True)  # a source ends; a failure is a dead loop
        start_metrics(self.settings, SERVICE, self.liveness)
        self.liveness.ready()

    async def start(self) -> None:
        """Start everything (what `FastStream.run` does through the hooks); for in-process use."""
        await self.prepare()
        await self.broker.start()
        await self.begin()

    async def wait_done(self, timeout_s: float) -> None:
        """Wait until the source is exhausted (or raise TimeoutError / the loop's error)."""
        if self.task is None:
            raise RuntimeError("collector not started")
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self.task)

    async def close(self) -> None:
        """Stop the publish loop, write pending bars, close the pool (the broker is stopped after)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self._lockstep_sub is not None:
            await self._lockstep_sub.unsubscribe()
        if self.collector is not None and self.collector.store is not None:
            await self.collector.store.flush()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def stop(self) -> None:
        await self.close()
        await self.broker.stop()

    def _ready(self) -> Collector:
        if self.collector is None:
            raise RuntimeError("collector not prepared: call prepare() first")
        return self.collector


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("publish loop failed", exc_info=task.exception())


def create_app(settings: CollectorSettings | None = None) -> FastStream:
    """Build the collector app: publish loop, ingest on `qmp.ingest.*`, health on `qmp.health.collector`."""
    settings = settings or load_settings(CollectorSettings)
    service = CollectorService(settings)
    app = FastStream(service.broker)

    @app.on_startup
    async def prepare() -> None:
        setup_logging(SERVICE, settings.log_level)
        setup_tracing(SERVICE, Path(settings.run_dir), settings.otlp_endpoint, settings.tracing,
                      settings.otlp_protocol)
        await service.prepare()

    @app.after_startup
    async def begin() -> None:
        await service.begin()

    @app.on_shutdown
    async def close() -> None:
        await service.close()

    return app
