"""The replay observer counts each published message once, also when a publisher sends it again."""

import asyncio

from qmp_core import subjects
from qmp_core.messages import Fill, OrderAccepted, encode
from qmp_ops.replay import RunObserver
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as


async def test_run_observer_when_message_republished_with_same_id_then_counted_once(
    nats_credentials: NatsCredentials, unique_id: str,
) -> None:
    execution = await connect_as(nats_credentials, "execution")
    # A connection of its own: the session's shared one carries every earlier test's subscriptions, and a
    # message lost to it under the suite's load (a slow-consumer cut) was once a repeat not seen.
    watcher = await connect_as(nats_credentials, "operator")
    observer = RunObserver(unique_id)
    await observer.start(watcher)
    order = OrderAccepted(strategy=unique_id, order_id=f"{unique_id}-1", symbol="AAPL", side="buy", quantity=10.0,
                          price=100.0, ts_event=1)
    fill = Fill(strategy=unique_id, order_id=order.order_id, fill_id=f"{order.order_id}-f", symbol="AAPL", side="buy",
                quantity=10.0, price=100.0, arrival_price=100.0, slippage_bps=1.5, fee=0.0, ts_event=1)
    try:
        for _ in range(2):  # a publisher that lost the stream's ack publishes again under the same id
            await execution.publish(subjects.orders(unique_id), encode(order),
                                      headers={"Nats-Msg-Id": f"{order.order_id}:decision"})
            await execution.publish(subjects.fills(unique_id), encode(fill), headers={"Nats-Msg-Id": fill.fill_id})
        other = Fill(**{**{f: getattr(fill, f) for f in fill.__struct_fields__}, "fill_id": f"{order.order_id}-g"})
        await execution.publish(subjects.fills(unique_id), encode(other), headers={"Nats-Msg-Id": other.fill_id})
        await execution.flush()
        for _ in range(200):  # up to 10 s: a loaded machine (the suite's chaos replays beside it) is slow
            if observer.fills == 2 and observer.repeats == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await observer.stop()
        await execution.close()
        await watcher.close()
    assert (observer.accepted, observer.fills, observer.repeats) == (1, 2, 2)
    assert observer.slippage_bps == [1.5, 1.5]
