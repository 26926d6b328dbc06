"""The risk app in-process against real NATS and PostgreSQL: bars and portfolios in, snapshot, row, halt out."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_HOUR
from qmp_core.messages import (
    BarBatch,
    BreakerEvent,
    ControlCommand,
    ControlReply,
    DeadLetter,
    Halt,
    HealthReply,
    PortfolioSnapshot,
    RiskSnapshot,
    TradingState,
    codec,
    encode,
)
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import settings_for
from qmp_risk.app import RiskService
from qmp_risk.config import RiskSettings

pytestmark = pytest.mark.integration

T0 = 1_700_000_000 * 1_000_000_000
EQUITY = [100.0, 101.0, 102.0, 100.5, 99.0, 101.0, 84.0]  # the last one is 17.6% below the 24h peak
CLOSES = [(50.0, 20.0), (51.0, 19.5), (50.5, 19.9), (49.0, 20.4), (49.8, 20.1), (50.9, 19.7), (47.0, 21.0)]


async def connect_as(credentials: NatsCredentials, user: str) -> Client:
    return await credentials.connect(user)


@pytest.fixture
async def clients(nats_credentials: NatsCredentials) -> AsyncIterator[dict[str, Client]]:
    connections = {user: await connect_as(nats_credentials, user) for user in ("collector", "execution", "deployer")}
    yield connections
    for connection in connections.values():
        await connection.drain()


async def test_risk_app_when_bars_and_portfolios_flow_then_snapshots_rows_halt_and_dead_letter(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str, tmp_path: object,
) -> None:
    venue = strategy = unique_id
    base = settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path))
    # next_snapshot: other tests' strategies pass through the shared durable with no deployer to answer them
    # (waiting for an answer before the snapshot is held by the chaos suite's SIGKILL of the deployer).
    settings = msgspec.convert({**msgspec.structs.asdict(base), "min_observations": 3, "var_window": 10,
                                "control_timeout_s": 2.0, "rebuild": False, "control_delivery": "next_snapshot"},
                               RiskSettings)
    timeline: list[str] = []
    snapshots: dict[int, RiskSnapshot] = {}
    letters: list[DeadLetter] = []
    commands: list[ControlCommand] = []
    done = asyncio.Event()

    async def deployer(msg: Msg) -> None:
        command = codec(ControlCommand).decode(msg.data)
        commands.append(command)
        timeline.append(f"control:{command.ts_event}")
        state = TradingState(strategy=strategy, status="HALTED", issued_by="deployer")
        await msg.respond(encode(ControlReply(accepted=True, command_id=command.command_id, state=state)))

    async def on_snapshot(msg: Msg) -> None:
        snapshot = codec(RiskSnapshot).decode(msg.data)
        snapshots[snapshot.ts_event] = snapshot
        timeline.append(f"snapshot:{snapshot.ts_event}")
        if len(snapshots) == len(EQUITY):
            done.set()

    async def on_letter(msg: Msg) -> None:
        letter = codec(DeadLetter).decode(msg.data)
        if letter.subject == subjects.bars(venue):
            letters.append(letter)

    for urgent in (False, True):  # halts travel their own lane
        await clients["deployer"].subscribe(subjects.control(strategy, "risk", urgent=urgent), cb=deployer)
    await clients["deployer"].flush()
    await operator_nc.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    await operator_nc.subscribe(subjects.dlq("risk"), cb=on_letter)
    await operator_nc.flush()

    service = RiskService(settings)
    await service.start()
    try:
        collector_js = clients["collector"].jetstream()
        execution_js = clients["execution"].jetstream()
        await collector_js.publish(subjects.bars(venue), b'{"venue": "' + venue.encode() + b'", "ts_event": ')
        stamps = [T0 + i * NS_PER_HOUR for i in range(len(EQUITY))]
        for ts, (a, b) in zip(stamps, CLOSES, strict=True):
            await bus.publish(collector_js, subjects.bars(venue), BarBatch(
                venue=venue, ts_event=ts, symbols=["A", "B"], open=[a, b], high=[a, b], low=[a, b], close=[a, b],
                volume=[100.0, 100.0]), msg_id=f"{venue}:{ts}")
        for ts, equity, (a, b) in zip(stamps, EQUITY, CLOSES, strict=True):
            await bus.publish(execution_js, subjects.portfolio(strategy), PortfolioSnapshot(
                strategy=strategy, ts_event=ts, cash=equity - (0.5 * a - 1.0 * b), equity=equity,
                symbols=["A", "B"], quantities=[0.5, -1.0], prices=[a, b], venue=venue), msg_id=f"{strategy}:{ts}")
        await asyncio.wait_for(done.wait(), timeout=20)
        health_msg = await operator_nc.request(subjects.health("risk"), b"", timeout=5)
        health = codec(HealthReply).decode(health_msg.data)
    finally:
        await service.stop()

    # A malformed bar message is dead-lettered with its reason, and the valid ones after it are processed.
    assert len(letters) == 1 and "invalid BarBatch" in letters[0].reason
    assert set(snapshots) == set(stamps)
    last = snapshots[stamps[-1]]
    assert last.status == "ok" and last.observations == len(EQUITY) - 1
    assert {"historical_95", "historical_99", "normal_95", "normal_99"} <= set(last.var)
    assert last.drawdown_24h == pytest.approx(1 - 84.0 / 102.0)
    assert last.breakers == ["drawdown_24h"]
    assert snapshots[stamps[0]].status == "insufficient_data" and snapshots[stamps[0]].var == {}

    # The halt went out as a request, and was answered, before the snapshot of its timestamp was published.
    assert len(commands) == 1 and isinstance(commands[0], Halt) and commands[0].issued_by == "risk"
    assert timeline.index(f"control:{stamps[-1]}") < timeline.index(f"snapshot:{stamps[-1]}")

    stored = await operator_nc.jetstream().get_last_msg(subjects.STREAM_RISK, subjects.snapshot(strategy))
    assert codec(RiskSnapshot).decode(stored.data) == last
    event_msg = await operator_nc.jetstream().get_last_msg(subjects.STREAM_RISK, subjects.breaker_events(strategy))
    event = codec(BreakerEvent).decode(event_msg.data)
    assert (event.breaker, event.action, event.ts_event) == ("drawdown_24h", "halt", stamps[-1])

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT drawdown_24h, breakers, var FROM risk_snapshots WHERE strategy = $1 "
                                      "ORDER BY ts", strategy)
        breaker_rows = await connection.fetch("SELECT breaker, event, action FROM breaker_events WHERE strategy = $1",
                                              strategy)
    finally:
        await connection.close()
    assert len(rows) == len(EQUITY)
    assert rows[-1]["drawdown_24h"] == pytest.approx(last.drawdown_24h)
    assert rows[-1]["breakers"] == ["drawdown_24h"]
    assert msgspec.json.decode(rows[-1]["var"]) == pytest.approx(last.var)
    assert [tuple(r) for r in breaker_rows] == [("drawdown_24h", "BreakerTripped", "halt")]

    # The service is shared-nothing per strategy, but other tests' strategies may pass through the same
    # durable consumer: count this strategy's snapshots on the stream, the global counter only bounds it.
    info = await operator_nc.jetstream().stream_info(subjects.STREAM_RISK, subjects_filter=subjects.snapshot(strategy))
    assert info.state.subjects[subjects.snapshot(strategy)] == len(EQUITY)
    assert health.detail["snapshots_published"] >= len(EQUITY)
    assert health.detail["strategies_tracked"] >= 1 and health.detail["symbols_tracked"] >= 2
    assert (health.detail["drawdown_halt"], health.detail["stop_loss"]) == (settings.drawdown_halt, settings.stop_loss)

    # What Prometheus scrapes: the last snapshot's measures, the trip, the messages handled, the dead letter.
    def sample(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert sample("qmp_risk_var", strategy=strategy, measure="historical_99") == last.var["historical_99"]
    assert sample("qmp_risk_es", strategy=strategy, measure="normal_95") == last.es["normal_95"]
    assert sample("qmp_risk_drawdown", strategy=strategy, window="24h") == pytest.approx(last.drawdown_24h)
    assert sample("qmp_breaker_trips_total", strategy=strategy, breaker="drawdown_24h") == 1.0
    assert (sample("qmp_messages_handled_total", service="risk", what="portfolio snapshot") or 0) >= len(EQUITY)
    assert (sample("qmp_dead_letters_total", service="risk") or 0) >= 1


async def test_risk_app_when_nobody_answers_the_halt_then_snapshot_still_published_and_next_one_retries(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str, tmp_path: object,
) -> None:
    strategy = unique_id
    base = settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path))
    settings = msgspec.convert({**msgspec.structs.asdict(base), "control_attempts": 2, "control_timeout_s": 0.3,
                                "bar_wait_s": 0.0, "rebuild": False, "control_delivery": "next_snapshot"},
                               RiskSettings)
    seen: dict[int, RiskSnapshot] = {}
    both = asyncio.Event()

    async def on_snapshot(msg: Msg) -> None:
        snapshot = codec(RiskSnapshot).decode(msg.data)
        seen[snapshot.ts_event] = snapshot
        if len(seen) == 3:
            both.set()

    await operator_nc.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    await operator_nc.flush()
    service = RiskService(settings)
    await service.start()
    try:
        execution_js = clients["execution"].jetstream()
        for i, equity in enumerate((100.0, 80.0, 79.0)):
            ts = T0 + i * NS_PER_HOUR
            await bus.publish(execution_js, subjects.portfolio(strategy), PortfolioSnapshot(
                strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=[], quantities=[], prices=[]),
                msg_id=f"{strategy}:{ts}")
        await asyncio.wait_for(both.wait(), timeout=20)
        failed = service.handlers.commands_failed
    finally:
        await service.stop()
    # Undelivered halts do not stall the snapshots, and every later snapshot tries the halt again.
    assert failed == 2
    assert [seen[T0 + i * NS_PER_HOUR].breakers for i in range(3)] == [[], ["drawdown_24h"], ["drawdown_24h"]]


async def test_risk_app_when_deployer_answers_retry_while_starting_then_the_halt_is_sent_again_and_applied(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str, tmp_path: object,
) -> None:
    # A deployer restarted from its warm spare answers before its handler exists: `retry`, not a refusal.
    strategy = unique_id
    base = settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path))
    settings = msgspec.convert({**msgspec.structs.asdict(base), "control_attempts": 3, "control_timeout_s": 1.0,
                                "bar_wait_s": 0.0, "rebuild": False, "control_delivery": "before_snapshot"},
                               RiskSettings)
    received: list[str] = []

    async def deployer(msg: Msg) -> None:
        command = codec(ControlCommand).decode(msg.data)
        received.append(command.command_id)
        if len(received) == 1:
            await msg.respond(encode(ControlReply(accepted=False, retry=True, reason="deployer is starting")))
            return
        state = TradingState(strategy=strategy, status="HALTED", issued_by="risk")
        await msg.respond(encode(ControlReply(accepted=True, command_id=command.command_id, state=state)))

    for urgent in (False, True):
        await clients["deployer"].subscribe(subjects.control(strategy, "risk", urgent=urgent), cb=deployer)
    await clients["deployer"].flush()
    snapshots: asyncio.Queue[RiskSnapshot] = asyncio.Queue()

    async def on_snapshot(msg: Msg) -> None:
        await snapshots.put(codec(RiskSnapshot).decode(msg.data))

    await operator_nc.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    await operator_nc.flush()
    service = RiskService(settings)
    await service.start()
    try:
        execution_js = clients["execution"].jetstream()
        for i, equity in enumerate((100.0, 80.0)):
            ts = T0 + i * NS_PER_HOUR
            await bus.publish(execution_js, subjects.portfolio(strategy), PortfolioSnapshot(
                strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=[], quantities=[], prices=[]),
                msg_id=f"{strategy}:{ts}")
        last = [await asyncio.wait_for(snapshots.get(), 20) for _ in range(2)][-1]
        failed, sent = service.handlers.commands_failed, service.handlers.commands_sent
    finally:
        await service.stop()
    assert last.breakers == ["drawdown_24h"]
    assert len(received) == 2 and received[0] == received[1]  # the same command, sent again, applied once
    assert failed == 0 and sent >= 2


async def test_risk_app_when_restarted_mid_run_then_rebuilt_and_snapshots_equal_an_undisturbed_run(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str,
    tmp_path: object,
) -> None:
    # Two instances on the same messages: one runs through, the other stops after day 4 and a new process
    # of it (same consumers) continues. The rebuilt one must answer exactly as the undisturbed one.
    strategy, venue = unique_id, unique_id + "v"
    base = msgspec.structs.asdict(settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path)))

    def settings(prefix: str) -> RiskSettings:
        return msgspec.convert({**base, "min_observations": 3, "var_window": 5, "vol_window": 3,
                                "vol_average_window": 3, "bar_wait_s": 2.0, "control_timeout_s": 0.2,
                                "control_attempts": 1, "control_delivery": "next_snapshot",  # no deployer here
                                "consumer_prefix": f"{prefix}-{unique_id}"}, RiskSettings)

    equity = [100.0, 101.0, 99.0, 103.0, 97.0, 98.0, 84.0, 85.0]
    stamps = [T0 + i * NS_PER_HOUR for i in range(len(equity))]

    async def publish(days: range) -> None:
        for i in days:
            close = [50.0 + i, 20.0 - i * 0.3]
            await bus.publish(clients["collector"].jetstream(), subjects.bars(venue), BarBatch(
                venue=venue, ts_event=stamps[i], symbols=["RB1", "RB2"], open=close, high=close, low=close,
                close=close, volume=[1e3, 1e3]), msg_id=f"{venue}:{stamps[i]}")
            await bus.publish(clients["execution"].jetstream(), subjects.portfolio(strategy), PortfolioSnapshot(
                strategy=strategy, ts_event=stamps[i], cash=equity[i] - 10.0, equity=equity[i], symbols=["RB1"],
                quantities=[10.0 / close[0]], prices=[close[0]], venue=venue), msg_id=f"{strategy}:{stamps[i]}")

    async def reached(service: RiskService, ts: int) -> None:
        for _ in range(600):
            if (service.engine.last_ts(strategy) or 0) >= ts:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"risk did not reach {ts}")

    undisturbed, first = RiskService(settings("gold")), RiskService(settings("kill"))
    await undisturbed.start()
    await first.start()
    try:
        await publish(range(4))
        await reached(first, stamps[3])
    finally:
        await first.stop()
    await publish(range(4, len(equity)))
    restarted = RiskService(settings("kill"))
    await restarted.start()
    try:
        assert restarted.rebuilt.snapshots >= 4 and restarted.rebuilt.bars >= 4  # other tests share the server
        await reached(restarted, stamps[-1])
        await reached(undisturbed, stamps[-1])
        final = PortfolioSnapshot(strategy=strategy, ts_event=stamps[-1], cash=equity[-1] - 10.0,
                                  equity=equity[-1], symbols=["RB1"], quantities=[10.0 / (50.0 + 7)],
                                  prices=[57.0], venue=venue)
        gold = undisturbed.engine.on_portfolio(final).snapshot
        again = restarted.engine.on_portfolio(final).snapshot
    finally:
        await restarted.stop()
        await undisturbed.stop()
    assert again.observations == gold.observations and again.observations >= 5
    assert (again.var, again.es, again.drawdown_max, again.drawdown_24h, again.breakers) == (
        gold.var, gold.es, gold.drawdown_max, gold.drawdown_24h, gold.breakers)
    assert again.drawdown_max > 0.15  # the day-6 fall is remembered across the restart
