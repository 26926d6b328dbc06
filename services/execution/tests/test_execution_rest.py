"""The REST broker client against fake brokers on loopback: concurrency, retries, idempotency, failover."""

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from qmp_core.clock import TestClock
from qmp_core.messages import BrokerReply, encode
from qmp_execution.adapters import BrokerAdapter
from qmp_execution.engine.broker import BrokerOrder
from qmp_execution.fake_broker import Behaviour, FakeBrokerBook, FakeBrokerServer
from qmp_execution.handlers import BrokerCommands
from qmp_execution.rest import (
    BACKUP,
    PRIMARY,
    BrokerRejected,
    BrokerUnavailable,
    RestBrokerAdapter,
    RestBrokerClient,
    RestBrokerConfig,
)


def order(i: int, side: str = "BUY") -> BrokerOrder:
    return BrokerOrder(order_id=f"s-1-S{i:04d}", strategy="s", symbol=f"S{i:04d}", side=side,  # type: ignore[arg-type]
                       quantity=10.0, price=100.0, ts_event=1)


async def until_primary(client: RestBrokerClient, timeout_s: float = 3.0) -> None:
    """Poll until the client is back on its primary, or the timeout."""
    for _ in range(int(timeout_s / 0.02)):
        if client.active == PRIMARY:
            return
        await asyncio.sleep(0.02)


class Pair:
    """A primary and a backup endpoint sharing one broker book."""

    def __init__(self) -> None:
        self.book = FakeBrokerBook()
        self.primary = FakeBrokerServer(self.book, Behaviour(), name=PRIMARY)
        self.backup = FakeBrokerServer(self.book, Behaviour(), name=BACKUP)

    def config(self, **overrides: object) -> RestBrokerConfig:
        values: dict[str, object] = {"primary_url": self.primary.url, "backup_url": self.backup.url,
                                     "timeout_s": 0.5, "retries": 3, "backoff_s": 0.01, "hold_s": 0.0,
                                     "probe_interval_s": 0.05, "min_samples": 3, "latency_threshold_ms": 100.0}
        values.update(overrides)
        return msgspec.convert(values, RestBrokerConfig)


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    servers = Pair()
    await servers.primary.start()
    await servers.backup.start()
    yield servers
    await servers.primary.stop()
    await servers.backup.stop()


async def test_submit_many_when_endpoint_has_latency_then_requests_overlap(pair: Pair) -> None:
    pair.primary.behaviour.latency_s = 0.05
    async with RestBrokerClient(pair.config(max_concurrency=50)) as client:
        adapter = RestBrokerAdapter(client)
        start = time.perf_counter()
        acks = await adapter.submit_many([order(i) for i in range(50)])
        elapsed = time.perf_counter() - start

    assert [a.order_id for a in acks] == [order(i).order_id for i in range(50)]
    assert all(a.status == "filled" and a.fills[0].quantity == 10.0 for a in acks)
    assert elapsed < 50 * 0.05 / 5  # sequential would take 2.5 s
    assert pair.book.orders_taken == 50


async def test_request_when_first_attempts_fail_then_retried_until_success(pair: Pair) -> None:
    pair.primary.behaviour.fail_first = 2
    async with RestBrokerClient(pair.config(backup_url="")) as client:
        ack = await RestBrokerAdapter(client).submit(order(1))

    assert ack.status == "filled"
    assert client.endpoints[PRIMARY].errors == 2 and client.endpoints[PRIMARY].requests == 3


async def test_request_when_answer_lost_to_timeout_then_retry_replays_and_order_taken_once(pair: Pair) -> None:
    pair.primary.behaviour.slow_s, pair.primary.behaviour.slow_first = 0.4, 1
    async with RestBrokerClient(pair.config(backup_url="", timeout_s=0.15)) as client:
        ack = await RestBrokerAdapter(client).submit(order(7))

    assert ack.status == "filled"
    assert pair.book.orders_taken == 1 and pair.book.replays == 1
    assert pair.book.positions == {"S0007": 10.0}


async def test_request_when_every_attempt_fails_then_unavailable_with_last_error(pair: Pair) -> None:
    pair.primary.behaviour.fail = True
    async with RestBrokerClient(pair.config(backup_url="", retries=2)) as client:
        with pytest.raises(BrokerUnavailable, match="3 attempts; last: primary answered 503"):
            await RestBrokerAdapter(client).submit(order(1))


async def test_request_when_broker_answers_4xx_then_not_retried(pair: Pair) -> None:
    async with RestBrokerClient(pair.config(backup_url="")) as client:
        with pytest.raises(BrokerRejected) as raised:
            await client.request("POST", "/v1/orders", {"order_id": "x"}, idempotency_key="x")

    assert raised.value.status == 400
    assert client.endpoints[PRIMARY].requests == 1


async def test_client_when_primary_fails_then_switches_to_backup_within_one_request(pair: Pair) -> None:
    pair.primary.behaviour.fail = True
    async with RestBrokerClient(pair.config(failure_switch=2)) as client:
        ack = await RestBrokerAdapter(client).submit(order(1))

    assert ack.endpoint == BACKUP and client.active == BACKUP
    assert client.switches == 1


async def test_client_when_primary_latency_breaches_threshold_then_switches_to_backup(pair: Pair) -> None:
    pair.primary.behaviour.latency_s = 0.15
    async with RestBrokerClient(pair.config(hold_s=10.0)) as client:
        adapter = RestBrokerAdapter(client)
        acks = [await adapter.submit(order(i)) for i in range(6)]

    assert [a.endpoint for a in acks[:3]] == [PRIMARY] * 3
    assert {a.endpoint for a in acks[3:]} == {BACKUP}
    assert client.switches == 1


async def test_client_when_primary_recovers_then_probe_returns_to_it(pair: Pair) -> None:
    pair.primary.behaviour.fail = True
    async with RestBrokerClient(pair.config(failure_switch=1, hold_s=0.1)) as client:
        adapter = RestBrokerAdapter(client)
        await adapter.submit(order(1))
        assert client.active == BACKUP
        pair.primary.behaviour.fail = False
        await until_primary(client)
        ack = await adapter.submit(order(2))

    assert ack.endpoint == PRIMARY and client.switches == 2


async def test_client_when_primary_flaps_then_hold_time_bounds_switches_and_nothing_lost(pair: Pair) -> None:
    pair.primary.behaviour.flap_period, pair.primary.behaviour.flap_mode = 3, "fail"
    async with RestBrokerClient(pair.config(failure_switch=1, hold_s=0.3, probe_interval_s=0.02,
                                            min_samples=2)) as client:
        adapter = RestBrokerAdapter(client)
        start = time.monotonic()
        acks = []
        for i in range(60):
            acks.append(await adapter.submit(order(i)))
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - start

    assert all(a.status == "filled" for a in acks) and pair.book.orders_taken == 60
    assert {a.endpoint for a in acks} == {PRIMARY, BACKUP}
    assert 1 <= client.switches <= elapsed / 0.3 + 1


async def test_force_when_backup_pinned_then_used_until_auto(pair: Pair) -> None:
    async with RestBrokerClient(pair.config(hold_s=0.0)) as client:
        adapter = RestBrokerAdapter(client)
        client.force("backup")
        pinned = [await adapter.submit(order(i)) for i in range(3)]
        await asyncio.sleep(0.3)  # healthy primary probes do not move a pinned client
        still = client.active
        client.force("auto")
        await until_primary(client)

    assert {a.endpoint for a in pinned} == {BACKUP} and still == BACKUP
    assert client.active == PRIMARY and client.forced == ""


async def test_broker_command_when_use_endpoint_then_reply_reports_active_endpoint(pair: Pair) -> None:
    async with RestBrokerClient(pair.config()) as client:
        commands = BrokerCommands("rest", TestClock(5), client)

        pinned = await commands.handle(encode({"command": "use_endpoint", "endpoint": "backup", "command_id": "c1"}))
        bad = await commands.handle(b'{"command":"use_endpoint","endpoint":"moon"}')

    assert isinstance(pinned, BrokerReply) and pinned.accepted and pinned.active == BACKUP and pinned.forced == BACKUP
    assert set(pinned.endpoints) == {PRIMARY, BACKUP}
    assert not bad.accepted and "invalid BrokerCommand" in bad.reason


async def test_broker_command_when_no_backup_configured_then_rejected(pair: Pair) -> None:
    async with RestBrokerClient(pair.config(backup_url="")) as client:
        reply = await BrokerCommands("rest", TestClock(5), client).handle(
            b'{"command":"use_endpoint","endpoint":"backup"}')

    assert not reply.accepted and "no backup endpoint" in reply.reason


async def test_adapter_when_used_through_interface_then_positions_and_account_agree(pair: Pair) -> None:
    async with RestBrokerClient(pair.config()) as client:
        rest = RestBrokerAdapter(client)
        assert isinstance(rest, BrokerAdapter)
        first = await rest.submit(order(1))
        again = await rest.submit(order(1))
        rest_positions, rest_account = await rest.positions(), await rest.account()

    assert first.status in ("accepted", "filled") and again.status == first.status
    assert rest_positions == {"S0001": 10.0} and pair.book.orders_taken == 1
    assert rest_account.cash < 1_000_000.0
