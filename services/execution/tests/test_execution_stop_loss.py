"""A risk stop-loss end to end on real NATS and PostgreSQL: risk publishes ClosePosition, collector the next
batch, and execution (the "execution" NATS user, with no subscription right on `qmp.risk.>`) sells the whole
position with reason code STOP_LOSS."""

import asyncio
import time

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy
from test_execution_app import (
    PRICES,
    WAIT_S,
    bars,
    drain,
    eventually,
    publish_bars,
    receive,
    service_for,
)

from qmp_core import bus, subjects
from qmp_core.clock import NS_PER_DAY
from qmp_core.messages import ClosePosition, DeadLetter, OrderAccepted, OrderDecision, PortfolioSnapshot, codec
from qmp_execution.app import STOP_LOSS_ACK_WAIT_S, ExecutionService
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration


async def execution_may_subscribe(credentials: NatsCredentials, subject: str) -> bool:
    """Return whether the execution user may subscribe to `subject` (core NATS), by asking the server."""
    refused: list[Exception] = []

    async def on_error(error: Exception) -> None:
        refused.append(error)

    nc = await credentials.connect("execution", error_cb=on_error)
    try:
        await nc.subscribe(subject)
        await nc.flush()  # the server answers a refused SUB before the PONG
        await nc.flush()
    finally:
        await nc.close()
    return not any("permissions violation" in str(e).lower() for e in refused)


async def stop_after_two_days(collector_nc: Client, risk_nc: Client, snapshots: Subscription, sid: str,
                              service: ExecutionService) -> tuple[dict[str, float], ClosePosition]:
    """Trade two days, then publish risk's stop-loss on AAA and wait until execution holds it."""
    for day in (0, 1):
        await publish_bars(collector_nc, bars(sid, day))
    held = (await receive(snapshots, codec(PortfolioSnapshot).decode, 2))[-1]
    position = dict(zip(held.symbols, held.quantities, strict=True))
    command = ClosePosition(strategy=sid, symbol="AAA", quantity=-position["AAA"], command_id=f"{sid}:sl:AAA",
                            reason="stop-loss: AAA long down 16.00% <= -15.00%", price=42.0, entry_price=50.0,
                            loss=0.16, ts_event=held.ts_event)
    await bus.publish(risk_nc.jetstream(), subjects.stop_loss(sid), command, msg_id=command.command_id)
    await eventually(lambda: "AAA" in service.engine.hosts[sid].stop_losses, "the stop-loss to reach execution")
    return position, command


async def test_execution_when_risk_publishes_close_position_then_next_batch_sells_whole_position(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, unique_id: str,
) -> None:
    sid = venue = unique_id
    collector_nc = await connect_as(nats_credentials, "collector")
    risk_nc = await connect_as(nats_credentials, "risk")
    orders = await operator_nc.subscribe(subjects.orders(sid))
    snapshots = await operator_nc.subscribe(subjects.portfolio(sid))
    dead = await operator_nc.subscribe(subjects.dlq("execution"))
    decode_snapshot = codec(PortfolioSnapshot).decode
    service = service_for(nats_credentials, database_url, sid)
    await service.app.start()
    try:
        position, _ = await stop_after_two_days(collector_nc, risk_nc, snapshots, sid, service)
        assert set(position) == set(PRICES)
        await publish_bars(collector_nc, bars(venue, 2, {"AAA": 42.0, "BBB": 200.0}))
        after = (await receive(snapshots, decode_snapshot, 1))[0]
        decisions = [codec(OrderDecision).decode(m.data) for m in await drain(orders)]

        await risk_nc.jetstream().publish(subjects.stop_loss(sid), b'{"strategy": "not a ClosePosition"')
        letter = DeadLetter(service="", subject="", reason="", payload="", ts_event=0)
        while letter.subject != subjects.stop_loss(sid):
            letter = msgspec.json.decode((await dead.next_msg(timeout=WAIT_S)).data, type=DeadLetter)
        consumer = await operator_nc.jetstream().consumer_info(subjects.STREAM_RISK, service.stop_loss_consumer)
    finally:
        await service.app.stop()
        await collector_nc.drain()
        await risk_nc.drain()

    closes = [d for d in decisions if d.ts_event == 3 * NS_PER_DAY and d.symbol == "AAA"]
    assert len(closes) == 1
    close = closes[0]
    assert isinstance(close, OrderAccepted)
    assert (close.side, close.reason_code) == ("SELL", "STOP_LOSS")
    assert close.quantity == pytest.approx(position["AAA"], rel=1e-12)
    assert close.reason.startswith("stop-loss: AAA long")
    assert after.ts_event == 3 * NS_PER_DAY
    assert "AAA" not in after.symbols and "BBB" in after.symbols
    assert letter.service == "execution" and "invalid ClosePosition" in letter.reason
    assert consumer.config.filter_subject == subjects.STOP_LOSS_ALL
    assert consumer.config.deliver_policy == DeliverPolicy.NEW
    assert service.stop_loss is not None and service.stop_loss.applied == 1
    if nats_credentials.users:  # the embedded server: the permissions are in force
        assert service.settings.nats_user == "execution"
        assert await execution_may_subscribe(nats_credentials, subjects.health("execution"))
        assert not await execution_may_subscribe(nats_credentials, subjects.stop_loss(sid))


async def test_execution_when_restarted_before_the_next_batch_then_stop_loss_redelivered_and_position_closed(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, unique_id: str,
) -> None:
    sid = venue = unique_id
    collector_nc = await connect_as(nats_credentials, "collector")
    risk_nc = await connect_as(nats_credentials, "risk")
    orders = await operator_nc.subscribe(subjects.orders(sid))
    snapshots = await operator_nc.subscribe(subjects.portfolio(sid))
    decode_snapshot = codec(PortfolioSnapshot).decode
    js = operator_nc.jetstream()
    first = service_for(nats_credentials, database_url, sid)
    await first.app.start()
    try:
        position, command = await stop_after_two_days(collector_nc, risk_nc, snapshots, sid, first)
        unacknowledged = (await js.consumer_info(subjects.STREAM_RISK, first.stop_loss_consumer)).num_ack_pending
    finally:
        await first.app.stop()  # gone before the next batch: no snapshot holds the stop-loss yet

    second = service_for(nats_credentials, database_url, sid)
    await second.app.start()
    try:
        restored = dict(second.engine.hosts[sid].portfolio.positions)
        deadline = time.monotonic() + STOP_LOSS_ACK_WAIT_S + WAIT_S  # JetStream redelivers after the ack wait
        while "AAA" not in second.engine.hosts[sid].stop_losses:
            assert time.monotonic() < deadline, "the stop-loss was not redelivered to the restarted service"
            await asyncio.sleep(0.05)
        await publish_bars(collector_nc, bars(venue, 2, {"AAA": 42.0, "BBB": 200.0}))
        after = (await receive(snapshots, decode_snapshot, 1))[0]
        decisions = [codec(OrderDecision).decode(m.data) for m in await drain(orders)]
        settled = (await js.consumer_info(subjects.STREAM_RISK, second.stop_loss_consumer)).num_ack_pending
    finally:
        await second.app.stop()
        await collector_nc.drain()
        await risk_nc.drain()

    assert unacknowledged == 1  # held until a snapshot carries it
    assert restored == pytest.approx(position)
    closes = [d for d in decisions if d.ts_event == 3 * NS_PER_DAY and d.symbol == "AAA"]
    assert len(closes) == 1 and isinstance(closes[0], OrderAccepted)
    assert (closes[0].side, closes[0].reason_code) == ("SELL", "STOP_LOSS")
    assert closes[0].quantity == pytest.approx(position["AAA"], rel=1e-12)
    assert "AAA" not in after.symbols
    assert [s.command_id for s in after.stop_losses] == [command.command_id]  # released on the next batch
    assert settled == 0  # acknowledged once the snapshot held it
