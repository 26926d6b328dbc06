"""Deployer composition root: owns the control state, answers control requests, runs phased rollouts.

Control requests on `qmp.control.*` (queue group: one instance answers each); deploy commands on
`qmp.deploy.*.cmd` (only the lease holder subscribes); risk snapshots, fills and portfolio snapshots feed
the gates; a timer evaluates them (wall time live; in replay they are evaluated as event time advances)
and renews the lease. Health on `qmp.health.deployer`.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from faststream import FastStream
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import context

from qmp_core import bus, subjects
from qmp_core.clock import LiveClock, make_clock
from qmp_core.config import ServiceSettings, load_settings
from qmp_core.db import connect_pool
from qmp_core.messages import ControlReply, encode
from qmp_core.service import Liveness, connect_nats, make_broker, register_health, start_metrics
from qmp_core.telemetry import extract_context, setup_logging, setup_tracing
from qmp_deployer.config import DeployerSettings
from qmp_deployer.engine.plan import Plan, parse_plan, plan_digest
from qmp_deployer.handlers import SERVICE, ControlHandler, ControlStore
from qmp_deployer.handlers.accounts import AccountBook, AccountsHandler
from qmp_deployer.handlers.alerts import Alerter
from qmp_deployer.handlers.execution_halts import ExecutionHalts
from qmp_deployer.handlers.limits import LimitsHandler
from qmp_deployer.handlers.probes import Probes
from qmp_deployer.handlers.rollout import RolloutOptions, RolloutService, default_instance_id

log = logging.getLogger(__name__)
DEFAULT_PLAN = "default_plan.toml"


def load_plans(settings: DeployerSettings) -> tuple[dict[str, Plan], dict[str, str]]:
    """Return the plans by name (the bundled default, the plan file, the plan folder) and their digests."""
    sources: list[tuple[str, bytes]] = [
        (DEFAULT_PLAN, resources.files("qmp_deployer").joinpath(DEFAULT_PLAN).read_bytes())
    ]
    paths: list[Path] = []
    if settings.plan_dir:
        folder = Path(settings.plan_dir)
        paths += sorted(p for p in folder.iterdir() if p.suffix in (".toml", ".json"))
    if settings.plan_file:
        paths.append(Path(settings.plan_file))
    sources += [(str(path), path.read_bytes()) for path in paths]
    plans: dict[str, Plan] = {}
    digests: dict[str, str] = {}
    for origin, data in sources:
        try:
            plan = parse_plan(data, "json" if origin.endswith(".json") else "toml")
        except ValueError as error:
            raise ValueError(f"{origin}: {error}") from error
        if settings.gate_interval_s > 0:
            plan = msgspec.structs.replace(plan, gate_interval_s=settings.gate_interval_s)
        plans[plan.name] = plan
        digests[plan.name] = plan_digest(data)
    return plans, digests


def deployer_settings(settings: ServiceSettings | None, **overrides: Any) -> DeployerSettings:
    if settings is None:
        return load_settings(DeployerSettings, **overrides)
    if isinstance(settings, DeployerSettings) and not overrides:
        return settings
    return msgspec.convert({**msgspec.structs.asdict(settings), **overrides}, DeployerSettings)


# Requests in hand at once on each lane: enough for the committer to gather large batches in a burst, few
# enough that a burst waits in the connection's queue rather than as thousands of ready tasks.
CONTROL_WORKERS = 16


def create_app(settings: ServiceSettings | None = None, **overrides: Any) -> FastStream:
    """Build the deployer app; `overrides` set DeployerSettings fields (tests, embedding)."""
    settings = deployer_settings(settings, **overrides)
    plans, digests = load_plans(settings)  # a bad plan fails fast, before connecting
    broker = make_broker(settings, SERVICE)
    app = FastStream(broker)
    holder: dict[str, Any] = {}

    def detail() -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "store" in holder:
            out["strategies"] = sorted(holder["store"].strategies())
        if "rollouts" in holder:
            out["rollouts"] = holder["rollouts"].detail()
        if "alerter" in holder:
            out["alerts"] = holder["alerter"].detail()
        return out

    liveness = Liveness()
    register_health(broker, SERVICE, detail, liveness)

    @app.on_startup
    async def connect_database() -> None:
        setup_logging(SERVICE, settings.log_level)
        setup_tracing(SERVICE, Path(settings.run_dir), settings.otlp_endpoint, settings.tracing,
                      settings.otlp_protocol)
        holder["pool"] = await connect_pool(settings.database_url) if settings.database_url else None

    @app.after_startup
    async def load_state() -> None:
        # Control requests are read on plain subscriptions, not through the broker's handler chain: a burst
        # of thousands costs the deployer's CPU, and a reply needs no more than the subject and the body.
        # Halts sent to their own lane (qmp.control.<sender>.<strategy>.urgent) are read on a connection of
        # their own, so a halt never waits behind a burst of other requests in the main lane's queue.
        holder["lanes"] = [await serve_control(broker.connection, subjects.CONTROL_ANY, holder, main=True)]
        js = broker.connection.jetstream()
        await bus.wait_declared(js, SERVICE)
        wall = LiveClock()
        letters: set[asyncio.Task[None]] = set()

        def dead_letter_entry(key: str, value: bytes, reason: str) -> None:
            bus.dead_letter_later(letters, js, SERVICE, f"$KV.{subjects.KV_CONTROL}.{key}", reason, value, wall)

        store = ControlStore(await bus.control_bucket(js), on_invalid=dead_letter_entry)
        await store.load()
        await store.follow()
        handler = ControlHandler(js, store, wall, holder["pool"])
        await handler.load_recent()
        # Control is answered from here on, on both lanes: the rollouts, started next, are not needed for it.
        holder.update(store=store, handler=handler)
        holder["urgent"] = await connect_nats(settings, f"{SERVICE}-urgent")
        holder["lanes"].append(await serve_control(holder["urgent"], subjects.CONTROL_URGENT_ANY, holder, main=False))
        probes = Probes(broker.connection, wall, settings.latency_service, settings.memory_services,
                        settings.memory_probe, settings.probe_timeout_s, settings.broker_instance)
        options = RolloutOptions(instance_id=settings.instance_id or default_instance_id(),
                                 lease_ttl_s=settings.lease_ttl_s, probe_interval_s=settings.probe_interval_s,
                                 replay_grace_s=settings.replay_grace_s, broker_instance=settings.broker_instance,
                                 known_strategies=frozenset(settings.deploy_strategies))
        book = holder["accounts"] = AccountBook(await js.key_value(subjects.KV_ACCOUNTS))
        await book.start()
        rollouts = RolloutService(js, await js.key_value(subjects.KV_ROLLOUTS), handler,
                                  make_clock(settings.clock), wall, plans, digests, holder["pool"], options, probes,
                                  accounts=book.accounts)
        await rollouts.start()
        # The gates' readings (risk snapshots, fills, portfolios) come on plain subscriptions too: a replay
        # publishes a fill per order, and FastStream's handler chain (decoding each body as JSON) cost the
        # deployer more CPU than the gates do, on a machine whose cores the replay's critical path needs.
        for subject, reading in ((subjects.SNAPSHOT_ALL, rollouts.on_snapshot), (subjects.FILLS_ALL, rollouts.on_fill),
                                 (subjects.BATCH_EVENTS_ALL, rollouts.on_batch_events),
                                 (subjects.PORTFOLIO_ALL, rollouts.on_portfolio)):
            holder["lanes"].append(await broker.connection.subscribe(subject, cb=_reader(subject, reading)))
        # Execution asks for halts it may not write itself: its books and the venue disagree, or the
        # repeated-execution throttle tripped (one deployer of the queue group acts).
        halts = ExecutionHalts(handler)
        for subject, reading in ((subjects.RECONCILIATION_ALL, halts.on_reconciliation),
                                 (subjects.HALT_REQUESTS_ALL, halts.on_halt_request)):
            holder["lanes"].append(await broker.connection.subscribe(subject, queue="deployer-execution-halts",
                                                                     cb=_reader(subject, reading)))
        # Pre-trade limits: operators' requests, one deployer of the queue group answers each.
        limits = LimitsHandler(js, await js.key_value(subjects.KV_LIMITS), wall, holder["pool"])
        holder["lanes"].append(await broker.connection.subscribe(subjects.LIMITS_ANY, queue=subjects.DEPLOY_QUEUE,
                                                                 cb=_answer(limits.handle)))
        # Accounts: operators' requests, one deployer of the queue group answers each.
        accounts = AccountsHandler(js, book, wall, holder["pool"], rollouts.store.states)
        holder["lanes"].append(await broker.connection.subscribe(subjects.ACCOUNTS_ANY, queue=subjects.DEPLOY_QUEUE,
                                                                 cb=_answer(accounts.handle)))
        holder["rollouts"] = rollouts
        holder["timer"] = asyncio.create_task(_run_timer(rollouts, settings))
        liveness.watch("rollout timer", holder["timer"])
        # Alerts go on the bus (and in the log) always; to people's channels when QMP_ALERT_URLS names some.
        holder["alerter"] = Alerter(settings.alert_urls, settings.alert_quiet_s)
        await holder["alerter"].start(broker.connection)
        await broker.connection.flush()  # the server knows every subscription (the alerter's too) before "ready"
        start_metrics(settings, SERVICE, liveness)
        liveness.ready()
        log.info("deployer ready", extra={"entries": len(store.entries), "plans": sorted(plans),
                                          "leader": rollouts.lease.held(), "epoch": rollouts.lease.epoch})

    @app.on_shutdown
    async def stop_rollouts() -> None:
        timer = holder.pop("timer", None)
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if "rollouts" in holder:
            await holder["rollouts"].stop()
        if "alerter" in holder:
            await holder["alerter"].stop()
        if "accounts" in holder:
            await holder.pop("accounts").close()
        for lane in holder.pop("lanes", []):
            with contextlib.suppress(Exception):  # a connection already gone: nothing left to answer on it
                await lane.drain()
        if "urgent" in holder:
            with contextlib.suppress(Exception):
                await holder.pop("urgent").drain()
        if "handler" in holder:
            await holder["handler"].close()
        if "store" in holder:
            await holder["store"].close()

    @app.after_shutdown
    async def close_database() -> None:
        if holder.get("pool") is not None:
            await holder["pool"].close()

    return app


async def serve_control(nc: Client, subject: str, holder: dict[str, Any], main: bool) -> Subscription:
    """Answer control requests on `subject` (queue group: one deployer answers each), CONTROL_WORKERS at once.

    Until the handler is in `holder`, a request is told that the deployer is starting. The main lane takes
    no new request while a halt, resume or release is in hand (`ControlHandler.urgent_done`).
    """
    slots = asyncio.Semaphore(CONTROL_WORKERS)
    answering: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        token = context.attach(extract_context(msg.headers))
        try:
            handler: ControlHandler | None = holder.get("handler")
            reply = (await handler.handle(msg.subject, msg.data) if handler is not None
                     else encode(ControlReply(accepted=False, retry=True,
                                              reason="deployer is starting; send the command again")))
            if msg.reply:  # a plain publish is applied and audited all the same, with no one to answer
                await msg.respond(reply)
        except Exception:  # the sender gets no reply and retries with the same command id
            log.exception("control request failed", extra={"subject": msg.subject})
        finally:
            context.detach(token)
            slots.release()

    async def on_request(msg: Msg) -> None:
        if main and "handler" in holder:
            await holder["handler"].urgent_done()
        await slots.acquire()  # a full house holds the next request in the subscription's queue
        task = asyncio.create_task(answer(msg), name="deployer-control-request")
        answering.add(task)
        task.add_done_callback(answering.discard)

    return await nc.subscribe(subject, queue=subjects.DEPLOY_QUEUE, cb=on_request)


def _answer(handle: Callable[[str, bytes], Awaitable[bytes]]) -> Callable[[Msg], Awaitable[None]]:
    """Return a subscription callback that answers each request with what `handle` returns (a failure is
    logged; the sender gets no reply and may send the same request again)."""
    async def on_request(msg: Msg) -> None:
        try:
            reply = await handle(msg.subject, msg.data)
            if msg.reply:
                await msg.respond(reply)
        except Exception:
            log.exception("request failed", extra={"subject": msg.subject})

    return on_request


def _reader(subject: str, reading: Callable[[bytes], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    """Return a subscription callback that hands each message's body to `reading` and logs what it raises."""
    async def on_message(msg: Msg) -> None:
        try:
            await reading(msg.data)
        except Exception:  # one bad reading must not end the subscription's task
            log.exception("gate reading failed", extra={"subject": subject, "received_on": msg.subject})

    return on_message


async def _run_timer(rollouts: RolloutService, settings: DeployerSettings) -> None:
    """Renew the lease every third of its TTL and check the gates every tick; a failure is logged, not fatal."""
    loop = asyncio.get_running_loop()
    renew_every = settings.lease_ttl_s / 3
    next_renewal = loop.time() + renew_every
    while True:
        await asyncio.sleep(min(settings.tick_s, renew_every))
        try:
            if loop.time() >= next_renewal:
                next_renewal = loop.time() + renew_every
                await rollouts.refresh_lease()
            await rollouts.tick()
        except Exception:
            log.exception("deployer timer step failed; retrying at the next tick")
