"""Composition root of the execution service: settings, strategies, engine, broker, handlers.

Start-up order matters: connect → wait until the streams and KV are declared (`qmp up`, `qmp init`) →
load the control bucket's current values → restore each strategy's book from its last snapshot and
rebuild the price windows → read the latest risk snapshots → only then start the market-data subscriber.
So a halt written before execution started is enforced from the first batch. Risk's stop-loss commands
come through their own durable consumer.
"""

import logging
from typing import Annotated, Any, ClassVar, Literal

import asyncpg
import msgspec
from faststream import AckPolicy, FastStream
from faststream.nats import NatsBroker, NatsMessage
from msgspec import Meta
from nats.js.api import DeliverPolicy

from qmp_core import bus, metrics, subjects
from qmp_core.clock import Clock, ReplayClock, make_clock
from qmp_core.config import ServiceSettings, load_settings
from qmp_core.db import connect_pool
from qmp_core.messages import ReconciliationPolicy, encode
from qmp_core.retry import Unavailable
from qmp_core.service import Durable, Liveness, durable_subscriber, make_broker, register_health, start_metrics
from qmp_core.strategy import Strategy, load_strategy
from qmp_execution.adapters import BrokerAdapter, TimedAdapter
from qmp_execution.engine import DEFAULT_ES_KEYS, EngineConfig, ExecutionEngine
from qmp_execution.engine.paper import PaperConfig
from qmp_execution.engine.slippage import SlippageConfig
from qmp_execution.handlers import (
    SERVICE,
    BarHandler,
    BrokerCommands,
    ControlWatch,
    KillSwitch,
    LimitsWatch,
    Reconciler,
    RiskWatch,
    RolloutWatch,
    StopLossAcks,
    StopLossHandler,
    VenueUpdates,
    recover,
    write_missing_rows,
)
from qmp_execution.publisher import AckedPublisher
from qmp_execution.rest import RestBrokerAdapter, RestBrokerClient, RestBrokerConfig
from qmp_execution.store import ExecutionStore, latest_calibration

log = logging.getLogger(__name__)

DEFAULT_STRATEGIES = "vol_target=qmp_lab.strategies.vol_target:VolatilityTarget"
STOP_LOSSES_IN_FLIGHT = 1024  # unacknowledged ClosePosition deliveries: each waits for the next batch
STOP_LOSS_ACK_WAIT_S = 5.0  # a held stop-loss is redelivered (and held again) this often until a snapshot holds it


class ExecutionSettings(ServiceSettings, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Execution settings; env `QMP_<FIELD>` (e.g. QMP_STRATEGIES, QMP_INITIAL_CAPITAL, QMP_VENUES)."""

    # Comma-separated `id=package.module:Class`; ids are subject tokens.
    strategies: str = DEFAULT_STRATEGIES
    # JSON object: strategy id → config dict given to the strategy's constructor.
    strategy_config: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    initial_capital: Annotated[float, Meta(gt=0.0)] = 1_000_000.0
    # Venues whose `qmp.md.<venue>.bars` to trade on; empty follows every venue.
    venues: list[str] = msgspec.field(default_factory=list)
    # Instances that host different strategies each need every bar: each gets its own durable consumer.
    execution_instance: str = ""
    # JSON object: strategy id → its own starting capital (others get initial_capital).
    strategy_capital: dict[str, Annotated[float, Meta(gt=0.0)]] = msgspec.field(default_factory=dict)
    min_order_notional: Annotated[float, Meta(ge=0.0)] = 100.0
    participation_limit: Annotated[float, Meta(ge=0.0)] = 0.1
    # Risk budget: largest 99% ES (fraction of equity), default and per strategy (JSON object); 0 = none.
    es_budget: Annotated[float, Meta(ge=0.0)] = 0.05
    es_budgets: dict[str, Annotated[float, Meta(ge=0.0)]] = msgspec.field(default_factory=dict)
    es_keys: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ES_KEYS))
    # Pre-trade checks (0 turns one off).
    max_order_notional: Annotated[float, Meta(ge=0.0)] = 0.0
    max_order_rate: Annotated[int, Meta(ge=0)] = 10_000  # orders per second
    max_cancel_rate: Annotated[int, Meta(ge=0)] = 0  # cancels of working orders for a new target, per second
    price_band: Annotated[float, Meta(ge=0.0)] = 0.5
    cash_borrow_limit: Annotated[float, Meta(ge=0.0)] = 0.0
    max_order_quantity: Annotated[float, Meta(ge=0.0)] = 0.0
    max_position_notional: Annotated[float, Meta(ge=0.0)] = 0.0
    max_gross_exposure: Annotated[float, Meta(ge=0.0)] = 0.0  # the credit limit, in the account's currency
    restricted_symbols: list[str] = msgspec.field(default_factory=list)
    # Price collar over a rolling window (0: off), and the repeated-execution throttle (0: off): see EngineConfig.
    price_collar: Annotated[float, Meta(ge=0.0)] = 0.0
    price_collar_bars: Annotated[int, Meta(ge=1)] = 20
    max_repeated_fills: Annotated[int, Meta(ge=0)] = 0
    repeated_fills_window_s: Annotated[float, Meta(gt=0.0)] = 60.0
    # Paper broker.
    half_spread_bps: Annotated[float, Meta(ge=0.0)] = 2.0
    fee_bps: Annotated[float, Meta(ge=0.0)] = 0.5
    slippage_model: Literal["almgren", "sqrt", "fixed"] = "almgren"
    # JSON object of SlippageConfig fields (eta, beta, gamma, fixed_bps, noise_scale, seed, ...).
    slippage: dict[str, Any] = msgspec.field(default_factory=dict)
    # Take half-spread, eta and beta from the latest `qmp slippage calibrate --apply` at start.
    slippage_calibrated: bool = False
    max_bar_participation: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1
    latency_bars: Annotated[int, Meta(ge=0)] = 0
    # Broker: the paper broker, a REST broker (primary and optional backup endpoint), Alpaca, or a crypto
    # exchange through ccxt.
    broker: Literal["paper", "rest", "alpaca", "exchange"] = "paper"
    broker_primary_url: str = ""
    broker_backup_url: str = ""
    broker_api_key: str = ""
    broker_timeout_s: Annotated[float, Meta(gt=0.0)] = 2.0
    broker_latency_threshold_ms: Annotated[float, Meta(gt=0.0)] = 250.0
    # Alpaca (QMP_BROKER=alpaca): the key and secret, or a JSON secrets file (mode 0600) holding them.
    alpaca_api_key: str = ""
    alpaca_secret_key: str = ""
    alpaca_secrets_file: str = ""
    alpaca_paper: bool = True  # Alpaca's paper endpoint; false: its live endpoint, real money
    alpaca_url: str = ""  # another base URL for Alpaca's trading API (a fake venue in tests)
    alpaca_stream_url: str = ""  # another URL for its trade-updates stream (a fake venue in tests)
    alpaca_fill_wait_s: Annotated[float, Meta(ge=0.0)] = 2.0
    # A crypto exchange (QMP_BROKER=exchange): ccxt's id of it, the key and secret (or a JSON secrets file,
    # mode 0600), its testnet (the paper phase) or the live exchange, the account's cash currency.
    exchange_id: str = "binance"
    exchange_api_key: str = ""
    exchange_secret_key: str = ""
    exchange_secrets_file: str = ""
    exchange_sandbox: bool = True  # the exchange's testnet; false: the live exchange, real money
    exchange_url: str = ""  # another base URL for every API of the exchange (a fake exchange in tests)
    exchange_quote: str = "USDT"
    exchange_fill_wait_s: Annotated[float, Meta(ge=0.0)] = 2.0
    exchange_rate_limit_ms: Annotated[float, Meta(ge=0.0)] = 0.0  # 0: the exchange's published rate
    # Positions against an external venue's account: at start and every interval (0: at start only); what
    # differs is adopted, halts the strategy (through the deployer) or is only reported (handlers.reconciliation).
    reconcile_interval_s: Annotated[float, Meta(ge=0.0)] = 60.0
    reconcile_policy: ReconciliationPolicy = "halt"
    # The rollout phases this instance trades: "paper" (its venue's paper endpoint: the paper phase), "live"
    # (its live endpoint: the live phases) or "any". Two instances, one of each, give every strategy its
    # venue per phase; a strategy in the other environment's phase has no capital here (engine.follow_rollout).
    phase_env: Literal["paper", "live", "any"] = "any"
    # How order events and fills go out: a message each on qmp.exec.<strategy>.orders / .fills (plain clients,
    # live trading), or one BatchEvents per strategy and batch on .batch_events (a replay: 2 messages a batch
    # instead of one per order and per fill).
    order_events: Literal["per_order", "per_batch"] = "per_order"

    secret_fields: ClassVar[frozenset[str]] = ServiceSettings.secret_fields | {
        "broker_api_key", "alpaca_api_key", "alpaca_secret_key", "exchange_api_key", "exchange_secret_key"}


def parse_strategies(spec: str) -> dict[str, str]:
    """Return strategy id → import path from `id=package.module:Class,...`; raise ValueError on bad input."""
    result: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        sid, sep, path = (text.strip() for text in item.partition("="))
        if not sep or not path:
            raise ValueError(f"QMP_STRATEGIES entries must look like 'id=package.module:Class', got {item!r}")
        subjects.check_token(sid, "strategy id")
        if sid == subjects.ALL_STRATEGIES:
            raise ValueError(f"strategy id {sid!r} is reserved for commands that apply to every strategy")
        if sid in result:
            raise ValueError(f"strategy id {sid!r} appears twice in QMP_STRATEGIES")
        result[sid] = path
    if not result:
        raise ValueError("QMP_STRATEGIES names no strategy")
    return result


def consumer_name(settings: ExecutionSettings, durable: str = subjects.CONSUMER_EXECUTION_BARS) -> str:
    """Return a durable consumer's name for this execution instance (each instance reads every message)."""
    if settings.execution_instance:
        durable = f"{durable}-{subjects.check_token(settings.execution_instance, 'execution instance')}"
    return durable


def stop_loss_consumer_name(settings: ExecutionSettings) -> str:
    return consumer_name(settings, subjects.CONSUMER_EXECUTION_STOP_LOSS)


def bars_subject(settings: ExecutionSettings) -> str:
    """Return the subject to consume: one venue's bars when exactly one is followed, else every venue's."""
    for venue in settings.venues:
        subjects.check_token(venue, "venue")
    return subjects.bars(settings.venues[0]) if len(settings.venues) == 1 else subjects.MARKET_DATA_BARS_ALL


def load_strategies(settings: ExecutionSettings) -> dict[str, Strategy]:
    """Load every configured strategy; fail fast (StrategyLoadError) on a bad path or config."""
    paths = parse_strategies(settings.strategies)
    unknown = sorted(set(settings.strategy_config) - set(paths))
    if unknown:
        raise ValueError(f"QMP_STRATEGY_CONFIG names strategies that are not hosted: {unknown}")
    return {sid: load_strategy(path, settings.strategy_config.get(sid)) for sid, path in paths.items()}


def slippage_config(settings: ExecutionSettings) -> SlippageConfig:
    values = {"model": settings.slippage_model, "half_spread_bps": settings.half_spread_bps} | settings.slippage
    try:
        return msgspec.convert(values, SlippageConfig)
    except msgspec.ValidationError as error:
        raise ValueError(f"invalid QMP_SLIPPAGE / QMP_SLIPPAGE_MODEL: {error} (got {values!r})") from error


def engine_config(settings: ExecutionSettings) -> EngineConfig:
    return EngineConfig(
        initial_capital=settings.initial_capital, capital=settings.strategy_capital,
        min_order_notional=settings.min_order_notional, participation_limit=settings.participation_limit,
        es_budget=settings.es_budget, es_budgets=settings.es_budgets, es_keys=settings.es_keys,
        max_order_notional=settings.max_order_notional, max_order_rate=settings.max_order_rate,
        max_cancel_rate=settings.max_cancel_rate,
        price_band=settings.price_band, cash_borrow_limit=settings.cash_borrow_limit,
        max_order_quantity=settings.max_order_quantity, max_position_notional=settings.max_position_notional,
        max_gross_exposure=settings.max_gross_exposure, restricted_symbols=frozenset(settings.restricted_symbols),
        price_collar=settings.price_collar, price_collar_bars=settings.price_collar_bars,
        max_repeated_fills=settings.max_repeated_fills, repeated_fills_window_s=settings.repeated_fills_window_s,
        paper=PaperConfig(fee_bps=settings.fee_bps, max_bar_participation=settings.max_bar_participation,
                          latency_bars=settings.latency_bars, slippage=slippage_config(settings)),
        broker="paper" if settings.broker == "paper" else "external",
        venue=settings.venues[0] if len(settings.venues) == 1 else "",
        phase_env=settings.phase_env,
    )


def check_phase_env(settings: ExecutionSettings) -> None:
    """Refuse an instance for the paper phase that points at a venue's live endpoint: real money for a
    strategy nobody has confirmed live."""
    live = {"alpaca": not settings.alpaca_paper, "exchange": not settings.exchange_sandbox}.get(settings.broker)
    if settings.phase_env == "paper" and live:
        endpoint = "QMP_ALPACA_PAPER=false" if settings.broker == "alpaca" else "QMP_EXCHANGE_SANDBOX=false"
        raise ValueError(f"QMP_PHASE_ENV=paper trades the paper phase, but {endpoint} points at the live "
                         "endpoint (real money)")


def alpaca_adapter(settings: ExecutionSettings) -> BrokerAdapter:
    """Return the Alpaca adapter (its SDK is imported only when a strategy trades there)."""
    from qmp_execution.alpaca import AlpacaAdapter, config_from

    return AlpacaAdapter(config_from(settings.alpaca_api_key, settings.alpaca_secret_key,
                                     settings.alpaca_secrets_file, settings.alpaca_paper, settings.alpaca_url,
                                     settings.alpaca_fill_wait_s, settings.alpaca_stream_url))


def exchange_adapter(settings: ExecutionSettings) -> BrokerAdapter:
    """Return the ccxt exchange adapter (ccxt is imported only when a strategy trades on an exchange)."""
    from qmp_execution.exchange import ExchangeAdapter, config_from

    return ExchangeAdapter(config_from(settings.exchange_id, settings.exchange_api_key, settings.exchange_secret_key,
                                       settings.exchange_secrets_file, settings.exchange_sandbox,
                                       settings.exchange_url, settings.exchange_quote, settings.exchange_fill_wait_s,
                                       settings.exchange_rate_limit_ms))


def rest_config(settings: ExecutionSettings) -> RestBrokerConfig:
    if not settings.broker_primary_url:
        raise ValueError("QMP_BROKER=rest needs QMP_BROKER_PRIMARY_URL")
    return RestBrokerConfig(primary_url=settings.broker_primary_url, backup_url=settings.broker_backup_url,
                            api_key=settings.broker_api_key, timeout_s=settings.broker_timeout_s,
                            latency_threshold_ms=settings.broker_latency_threshold_ms)


async def load_calibration(pool: asyncpg.Pool, engine: ExecutionEngine) -> dict[str, Any]:
    """Apply the latest slippage calibration to every strategy's paper broker; return what was applied."""
    applied: dict[str, Any] = {}
    for sid in engine.strategies():
        row = await latest_calibration(pool, sid)
        if row is None:
            continue
        config = msgspec.structs.replace(engine.slippage_config(sid), half_spread_bps=row["half_spread_bps"],
                                         eta=row["eta"], beta=row["beta"])
        engine.use_slippage(sid, config)
        applied[sid] = {"half_spread_bps": row["half_spread_bps"], "eta": row["eta"], "beta": row["beta"]}
    return applied


class ExecutionService:
    """The execution service: a FastStream app (`.app`) around one engine."""

    def __init__(self, settings: ExecutionSettings, clock: Clock | None = None) -> None:
        check_phase_env(settings)
        self.settings = settings
        self.clock = clock or make_clock(settings.clock)
        self.engine = ExecutionEngine(load_strategies(settings), engine_config(settings), self.clock)
        self.consumer = consumer_name(settings)
        self.stop_loss_consumer = stop_loss_consumer_name(settings)
        self.broker: NatsBroker = make_broker(settings, SERVICE)
        self.handler: BarHandler | None = None
        self.kill_switch: KillSwitch | None = None
        self.reconciler: Reconciler | None = None
        self.stop_loss: StopLossHandler | None = None
        self.stop_acks = StopLossAcks()
        self.liveness = Liveness()
        self.durable = Durable(SERVICE, self.clock, self.liveness, lambda: self.broker.connection.jetstream())
        self.watch: ControlWatch | None = None
        self.limits_watch: LimitsWatch | None = None
        self.rollout_watch: RolloutWatch | None = None
        self.venue_updates: VenueUpdates | None = None
        self.risk_watch: RiskWatch | None = None
        self.rest: RestBrokerClient | None = None
        self.broker_commands: BrokerCommands | None = None
        self.adapter: BrokerAdapter | None = None
        self.publisher: AckedPublisher | None = None
        if settings.broker == "rest":
            self.rest = RestBrokerClient(rest_config(settings))
        if settings.broker != "paper":
            self.broker_commands = BrokerCommands(settings.broker, self.clock, self.rest, lambda: self.handler)
        self._pool: Any = None
        self._register()
        self.app = FastStream(self.broker, logger=log, on_startup=[self._start],
                              on_shutdown=[self._stop_watch], after_shutdown=[self._close_pool])

    def _register(self) -> None:
        options = durable_subscriber(subjects.STREAM_MARKET_DATA, self.consumer, batch_size=1)

        # batch_size=1: FastStream handles the messages of one fetch concurrently, and bars must be
        # traded in stream order.
        @self.broker.subscriber(bars_subject(self.settings), **options)
        async def on_bars(msg: NatsMessage) -> None:
            raw = msg.raw_message
            delivery = ""
            with_metadata = getattr(raw, "metadata", None)
            if with_metadata is not None:
                delivery = f"{raw.subject}:{with_metadata.sequence.stream}"

            async def handle() -> None:
                if self.handler is None:
                    raise Unavailable("execution received market data before it finished starting")
                await self.handler.handle(raw.data, raw.subject, msg.headers, delivery)

            await self.durable.handle(msg, handle, "market data")

        stop_options = durable_subscriber(subjects.STREAM_RISK, self.stop_loss_consumer)
        # From the consumer's creation on: a new instance must not replay old stop-losses on its positions.
        stop_options["config"].deliver_policy = DeliverPolicy.NEW
        # Acknowledged by hand once a PortfolioSnapshot holds the stop (handlers.StopLossAcks): until then
        # it stays unacknowledged, redelivered without limit (a quiet market may bring no batch for hours),
        # so a restart in between gets it again. Stops on different symbols do not wait for each other.
        stop_options["ack_policy"] = AckPolicy.MANUAL
        stop_options["config"].max_deliver = -1
        stop_options["config"].ack_wait = STOP_LOSS_ACK_WAIT_S  # how soon a restarted instance gets it back
        stop_options["config"].max_ack_pending = STOP_LOSSES_IN_FLIGHT

        @self.broker.subscriber(subjects.STOP_LOSS_ALL, **stop_options)
        async def on_stop_loss(msg: NatsMessage) -> None:
            raw = msg.raw_message
            if self.stop_loss is None:
                await raw.nak()
                raise RuntimeError("execution received a stop-loss before it finished starting")
            metadata = getattr(raw, "metadata", None)
            delivery = f"{raw.subject}:{metadata.sequence.stream}" if metadata is not None else ""
            try:
                await self.stop_loss.handle(raw.data, raw.subject, msg.headers, delivery, raw)
            except Exception:
                log.exception("stop-loss not handled; it will be redelivered", extra={"subject": raw.subject})
                await raw.nak()
                raise
            if not self.stop_acks.is_held(raw):  # dead-lettered, ignored or a duplicate: done with it
                await raw.ack()

        if self.broker_commands is not None:
            commands = self.broker_commands
            instance = self.settings.execution_instance or subjects.DEFAULT_EXECUTION_INSTANCE

            @self.broker.subscriber(subjects.broker(instance))
            async def on_broker_command(msg: NatsMessage) -> bytes:
                return encode(await commands.handle(msg.raw_message.data))

        register_health(self.broker, SERVICE, self.health, self.liveness)

    async def _start(self) -> None:
        await self.broker.connect()
        js = self.broker.connection.jetstream()
        await bus.wait_declared(js, SERVICE)
        for sid in self.engine.strategies():  # every series exists from the start, at 0 (none appear late)
            for series in (metrics.FILLS, metrics.SLIPPAGE_BPS, metrics.HALT_TO_DENIAL):
                series.labels(sid)
        self.watch = ControlWatch(await bus.control_bucket(js), self.engine, js)
        await self.watch.start()
        try:
            self.limits_watch = LimitsWatch(await js.key_value(subjects.KV_LIMITS), self.engine, js)
            await self.limits_watch.start()
            self.rollout_watch = RolloutWatch(await js.key_value(subjects.KV_ROLLOUTS), self.engine, js)
            await self.rollout_watch.start()
            restored = await recover(self.engine, js, self.consumer, self.settings.venues)
            self.risk_watch = RiskWatch(js, self.engine)
            await self.risk_watch.start()
            self._pool = await connect_pool(self.settings.database_url)
            rewritten = await write_missing_rows(js, ExecutionStore(self._pool), self.engine.strategies())
            calibration = await load_calibration(self._pool, self.engine) if self.settings.slippage_calibrated else {}
            adapter: BrokerAdapter | None = None
            if self.rest is not None:
                await self.rest.start()
                adapter = RestBrokerAdapter(self.rest)
            elif self.settings.broker == "alpaca":
                adapter = alpaca_adapter(self.settings)
            elif self.settings.broker == "exchange":
                adapter = exchange_adapter(self.settings)
            adapter = TimedAdapter(adapter) if adapter is not None else None
            self.adapter = adapter
        except BaseException:
            await self._stop_watch()
            raise
        self.publisher = AckedPublisher(self.broker.connection)
        await self.publisher.start()
        self.stop_loss = StopLossHandler(self.engine, js, self.clock, self.stop_acks)
        self.handler = BarHandler(self.engine, js, self.publisher, ExecutionStore(self._pool), self.clock,
                                  self.settings.venues, adapter, self.stop_acks, self.watch, self.risk_watch,
                                  per_batch=self.settings.order_events == "per_batch")
        venue = adapter.name if adapter is not None else self.settings.broker  # e.g. alpaca, binance, paper
        self.kill_switch = KillSwitch(self.handler, venue)
        self.watch.on_change = self.kill_switch.check
        if not isinstance(self.clock, ReplayClock):  # a replay checks the watch before every batch instead
            guard = self.watch.guard(self.handler.trading)
            if guard is not None:
                self.liveness.watch("control guard", guard)  # a guard that died would leave halts unchecked
        self.kill_switch.check()  # a kill in force before this start is acted on again (see handlers.kill)
        if adapter is not None:
            self.venue_updates = VenueUpdates(self.handler)
            self.venue_updates.start()
            self.reconciler = Reconciler(self.handler, venue, self.settings.reconcile_policy,
                                         self.settings.reconcile_interval_s)
            self.reconciler.start()
        start_metrics(self.settings, SERVICE, self.liveness)
        self.liveness.ready()
        log.info("execution ready", extra={"strategies": self.engine.strategies(), "restored": restored,
                                           "consumer": self.consumer, "subject": bars_subject(self.settings),
                                           "broker": self.settings.broker, "calibration": calibration,
                                           "rows_written_at_start": rewritten})

    async def _stop_watch(self) -> None:
        if self.venue_updates is not None:
            await self.venue_updates.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.watch is not None:
            await self.watch.stop()
        if self.limits_watch is not None:
            await self.limits_watch.stop()
        if self.rollout_watch is not None:
            await self.rollout_watch.stop()
        if self.risk_watch is not None:
            await self.risk_watch.stop()
        if self.rest is not None:
            await self.rest.close()
        close = getattr(self.adapter, "close", None)
        if close is not None:  # an adapter holding connections of its own (ccxt's HTTP session)
            await close()
        self.adapter = None

    async def _close_pool(self) -> None:
        """Close the database pool once the broker has stopped, so no handler still holds it."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def health(self) -> dict[str, Any]:
        handler = self.handler
        return {
            "ready": handler is not None,
            "instance": self.settings.execution_instance or subjects.DEFAULT_EXECUTION_INSTANCE,
            "venue": self.adapter.name if self.adapter is not None else self.settings.broker,
            "phase_env": self.settings.phase_env,  # the rollout phases it trades: paper, live or any
            "initial_capital": self.settings.initial_capital,  # a setting in force, shown by `qmp status`
            "strategies": self.engine.status(),
            "batches": handler.batches if handler else 0,
            "dead_letters": handler.dead_letters if handler else 0,
            "reconciled_fills": handler.reconciled_fills if handler else 0,
            "venue_updates": {"answers": self.venue_updates.answers, "fills": self.venue_updates.fills}
            if self.venue_updates else {},
            "kills": [msgspec.to_builtins(r) for r in self.kill_switch.reports] if self.kill_switch else [],
            "reconciliation": {sid: {"action": r.action, "differences": len(r.differences), "reason": r.reason}
                               for sid, r in self.reconciler.reports.items()} if self.reconciler else {},
            "control_updates": self.watch.updates if self.watch else 0,
            "limits_updates": self.limits_watch.updates if self.limits_watch else 0,
            "rollout_updates": self.rollout_watch.updates if self.rollout_watch else 0,
            "control_catch_up_timeouts": self.watch.catch_up_timeouts if self.watch else 0,
            "risk_snapshots": self.risk_watch.received if self.risk_watch else 0,
            "risk_catch_up_timeouts": self.risk_watch.catch_up_timeouts if self.risk_watch else 0,
            "stop_losses": {"received": self.stop_loss.received, "applied": self.stop_loss.applied,
                            "dead_letters": self.stop_loss.dead_letters} if self.stop_loss else {},
            "broker": self.rest.status() if self.rest else self.settings.broker,
        }


def create_service(environ: dict[str, str] | None = None, **overrides: Any) -> ExecutionService:
    """Build the service from `QMP_*` settings (plus overrides); fail fast on bad settings or strategies."""
    return ExecutionService(load_settings(ExecutionSettings, environ, **overrides))


def settings_from(base: ServiceSettings, **overrides: Any) -> ExecutionSettings:
    """Return execution settings that keep `base`'s connection fields (used by tests and the CLI)."""
    return msgspec.convert(msgspec.structs.asdict(base) | overrides, ExecutionSettings)
