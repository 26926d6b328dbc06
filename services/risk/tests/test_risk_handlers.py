"""The risk app against real NATS and PostgreSQL: news calendar (file and subject), stop-loss, stored reasons."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_HOUR
from qmp_core.messages import (
    Account,
    BarBatch,
    ClosePosition,
    ControlCommand,
    ControlReply,
    Defensive,
    Halt,
    NewsEvent,
    PortfolioSnapshot,
    RiskSnapshot,
    RolloutState,
    TradingState,
    codec,
    encode,
)
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import settings_for
from qmp_risk.app import RiskService
from qmp_risk.config import RiskSettings

pytestmark = pytest.mark.integration

T0 = 1_700_100_000 * 1_000_000_000
PRICES = [100.0, 101.0, 99.0, 97.0, 95.0, 90.0, 80.0]  # the last is 20% below the entry at 100


@pytest.fixture
async def clients(nats_credentials: NatsCredentials) -> AsyncIterator[dict[str, Client]]:
    connections = {}
    for user in ("collector", "execution", "deployer"):
        connections[user] = await nats_credentials.connect(user)
    yield connections
    for connection in connections.values():
        await connection.drain()


async def test_risk_app_when_news_window_and_stop_loss_then_defensive_close_position_and_reasons_stored(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str, tmp_path: Path,
) -> None:
    venue = strategy = unique_id
    stamps = [T0 + i * NS_PER_HOUR for i in range(len(PRICES))]
    calendar = tmp_path / "calendar.json"
    calendar.write_text(json.dumps([{"event_id": f"{unique_id}-file", "name": "CPI", "start": stamps[1],
                                     "end": stamps[2], "impact": "high", "strategies": [strategy]}]))
    base = settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path))
    settings = msgspec.convert({**msgspec.structs.asdict(base), "min_observations": 3, "var_window": 10,
                                "news_calendar": str(calendar), "news_max_order_fraction": 0.03,
                                "check_interval_s": 0.2, "rebuild": False,
                                # other tests' strategies on the shared stream have no deployer to answer
                                "control_delivery": "next_snapshot"}, RiskSettings)
    commands: list[ControlCommand] = []
    snapshots: dict[int, RiskSnapshot] = {}
    done = asyncio.Event()

    async def deployer(msg: Msg) -> None:
        command = codec(ControlCommand).decode(msg.data)
        commands.append(command)
        await msg.respond(encode(ControlReply(accepted=True, command_id=command.command_id,
                                              state=TradingState(strategy=strategy))))

    async def on_snapshot(msg: Msg) -> None:
        snapshot = codec(RiskSnapshot).decode(msg.data)
        snapshots[snapshot.ts_event] = snapshot
        if len(snapshots) == len(PRICES):
            done.set()

    for urgent in (False, True):  # halts travel their own lane
        await clients["deployer"].subscribe(subjects.control(strategy, "risk", urgent=urgent), cb=deployer)
    await clients["deployer"].flush()
    await operator_nc.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    await operator_nc.flush()
    service = RiskService(settings)
    await service.start()
    try:
        collector_js = clients["collector"].jetstream()
        news = NewsEvent(event_id=f"{unique_id}-bus", name="FOMC", start=stamps[4], end=stamps[6] + 1,
                         strategies=[strategy])
        await bus.publish(collector_js, subjects.NEWS_EVENTS, news, msg_id=news.event_id)
        for _ in range(100):
            if service.engine.detail()["news_events"] >= 2:
                break
            await asyncio.sleep(0.05)
        execution_js = clients["execution"].jetstream()
        for ts, price in zip(stamps, PRICES, strict=True):
            await bus.publish(collector_js, subjects.bars(venue), BarBatch(
                venue=venue, ts_event=ts, symbols=["A"], open=[price], high=[price], low=[price], close=[price],
                volume=[100.0]), msg_id=f"{venue}:{ts}")
            await bus.publish(execution_js, subjects.portfolio(strategy), PortfolioSnapshot(
                strategy=strategy, ts_event=ts, cash=0.0, equity=10_000.0, symbols=["A"], quantities=[10.0],
                prices=[price], venue=venue), msg_id=f"{strategy}:{ts}")
        await asyncio.wait_for(done.wait(), timeout=20)
        stored = await operator_nc.jetstream().get_last_msg(subjects.STREAM_RISK, subjects.stop_loss(strategy))
    finally:
        await service.stop()

    # The file's window (stamps 1..2) and the bus's (4..6) each turned defensive mode on with the cap, then off.
    defensive = [c for c in commands if isinstance(c, Defensive)]
    assert [(c.on, c.ts_event) for c in defensive] == [(True, stamps[1]), (False, stamps[2]), (True, stamps[4])]
    assert defensive[0].max_order_fraction == 0.03 and defensive[0].issued_by == "risk"
    assert "news" in snapshots[stamps[5]].breakers and "news" not in snapshots[stamps[3]].breakers

    close = codec(ClosePosition).decode(stored.data)
    assert (close.symbol, close.quantity, close.ts_event) == ("A", -10.0, stamps[-1])
    assert close.loss == pytest.approx(0.2) and close.entry_price == 100.0
    assert snapshots[stamps[-1]].positions[0].stop_loss

    connection = await asyncpg.connect(database_url)
    try:
        events = await connection.fetch("SELECT breaker, event, detail FROM breaker_events WHERE strategy = $1 "
                                        "ORDER BY ts, breaker", strategy)
        row = await connection.fetchrow("SELECT status, observations, positions, backtests, realized_return "
                                        "FROM risk_snapshots "
                                        "WHERE strategy = $1 ORDER BY ts DESC LIMIT 1", strategy)
    finally:
        await connection.close()
    stored_events = [(r["breaker"], r["event"], r["detail"]) for r in events]
    assert [(b, e) for b, e, _ in stored_events if b == "news"] == [
        ("news", "BreakerTripped"), ("news", "BreakerReleased"), ("news", "BreakerTripped")]
    assert "CPI" in stored_events[0][2] and "window closed" in stored_events[1][2]
    assert [d for b, _, d in stored_events if b == "stop_loss:A"] == ["A long 10 from 100 to 80: -20.00%"]
    assert row is not None and row["status"] == "ok" and row["observations"] == len(PRICES) - 1
    assert json.loads(row["positions"])[0]["symbol"] == "A"
    assert "historical_99" in json.loads(row["backtests"])
    # The day's backtest observation: yesterday's 10 shares at today's price, a share of yesterday's equity.
    assert row["realized_return"] == pytest.approx(10.0 * (PRICES[-1] - PRICES[-2]) / 10_000.0)
    assert snapshots[stamps[-1]].realized_return == pytest.approx(row["realized_return"])


async def test_risk_app_when_an_accounts_drawdown_passes_its_limit_then_every_strategy_of_it_is_halted(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, clients: dict[str, Client],
    unique_id: str, tmp_path: Path,
) -> None:
    account, strategies = f"{unique_id}-acct", [f"{unique_id}-a", f"{unique_id}-b"]
    js = clients["deployer"].jetstream()  # the deployer owns both buckets
    await (await js.key_value(subjects.KV_ACCOUNTS)).put(account, encode(Account(
        account=account, venue="paper", currency="USD", capital=200_000.0, sender="operator")))
    base = settings_for(nats_credentials, "risk", database_url, run_dir=str(tmp_path))
    settings = msgspec.convert({**msgspec.structs.asdict(base), "rebuild": False, "bar_wait_s": 0.0,
                                "control_delivery": "next_snapshot"}, RiskSettings)
    halts: dict[str, ControlCommand] = {}
    last: dict[str, RiskSnapshot] = {}

    async def deployer(msg: Msg) -> None:
        command = codec(ControlCommand).decode(msg.data)
        _, strategy = subjects.control_sender_and_strategy(msg.subject)
        halts[strategy] = command
        await msg.respond(encode(ControlReply(accepted=True, command_id=command.command_id,
                                              state=TradingState(strategy=strategy, status="HALTED"))))

    async def on_snapshot(msg: Msg) -> None:
        snapshot = codec(RiskSnapshot).decode(msg.data)
        last[snapshot.strategy] = snapshot

    for strategy in strategies:
        for urgent in (False, True):
            await clients["deployer"].subscribe(subjects.control(strategy, "risk", urgent=urgent), cb=deployer)
        await operator_nc.subscribe(subjects.snapshot(strategy), cb=on_snapshot)
    await clients["deployer"].flush()
    await operator_nc.flush()
    service = RiskService(settings)
    await service.start()
    try:
        rollouts = await js.key_value(subjects.KV_ROLLOUTS)
        for strategy in strategies:  # deployed after risk started: the watch brings them in
            await rollouts.put(subjects.rollout_key(strategy), encode(RolloutState(
                strategy=strategy, rollout_id="r1", plan="default", phases=[], account=account, budget=1e5)))
        for _ in range(100):
            if service.engine.accounts.members_of(account) == tuple(strategies):
                break
            await asyncio.sleep(0.05)
        execution_js = clients["execution"].jetstream()
        # Each book loses 6% of its 1,000,000: 120,000 of the account's 200,000 (60%); each book alone is
        # far from its own 15% drawdown halt.
        for step, equity in enumerate((1_000_000.0, 970_000.0, 940_000.0)):
            ts = T0 + step * NS_PER_HOUR
            for strategy in strategies:
                await bus.publish(execution_js, subjects.portfolio(strategy), PortfolioSnapshot(
                    strategy=strategy, ts_event=ts, cash=equity, equity=equity, symbols=[], quantities=[],
                    prices=[]), msg_id=f"{strategy}:{ts}")
        for _ in range(200):
            if len(halts) == 2 and all(s in last and last[s].ts_event == T0 + 2 * NS_PER_HOUR for s in strategies):
                break
            await asyncio.sleep(0.05)
    finally:
        await service.stop()

    assert sorted(halts) == strategies
    assert all(isinstance(c, Halt) and c.reason.startswith(f"account {account}: drawdown") for c in halts.values())
    assert last[strategies[1]].account == account and last[strategies[1]].account_equity == pytest.approx(80_000.0)
    assert "account" in last[strategies[0]].breakers and last[strategies[0]].drawdown_24h == pytest.approx(0.06)
