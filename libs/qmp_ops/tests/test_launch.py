"""The launch report's measures: a histogram's p99 as Prometheus computes it, and the trades and dead letters
of a window read from the streams of a real nats-server."""

import asyncio
import time

import pytest
from nats.aio.client import Client

from qmp_core import bus, subjects
from qmp_core.messages import BatchEvents, Fill, OrderAccepted, OrderDenied
from qmp_ops.launch import gather, quantile_from_buckets, trades_in_window
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.runtime.supervisor import Connection
from qmp_ops.testing import connect_as


def test_quantile_from_buckets_when_cumulative_counts_then_linear_within_the_bucket_like_histogram_quantile() -> None:
    buckets = [(0.001, 10.0), (0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile_from_buckets(buckets, 0.5) == pytest.approx(0.001 + 0.009 * (50 - 10) / 80)
    assert quantile_from_buckets(buckets, 0.99) == pytest.approx(0.01 + 0.09 * (99 - 90) / 10)
    assert quantile_from_buckets([(0.1, 0.0), (float("inf"), 0.0)], 0.99) is None  # nothing observed
    assert quantile_from_buckets([(0.1, 5.0), (float("inf"), 10.0)], 0.99) == 0.1  # beyond the last bound


def order(sid: str, n: int, accepted: bool = True) -> OrderAccepted | OrderDenied:
    kind = OrderAccepted if accepted else OrderDenied
    return kind(strategy=sid, order_id=f"{sid}-o{n}", symbol="A", side="BUY", quantity=1.0, price=10.0,
                ts_event=1)  # event time far in the past: the window is the stream's wall clock


def fill(sid: str, n: int) -> Fill:
    return Fill(strategy=sid, order_id=f"{sid}-o{n}", fill_id=f"{sid}-f{n}", symbol="A", side="BUY", quantity=1.0,
                price=10.0, arrival_price=10.0, slippage_bps=0.0, fee=0.0, ts_event=1)


@pytest.mark.integration
async def test_trades_in_window_when_orders_and_fills_stored_then_this_windows_accepted_and_filled_ids(
        nats_credentials: NatsCredentials, operator_nc: Client, unique_id: str) -> None:
    sid = unique_id
    execution = await connect_as(nats_credentials, "execution")
    js = execution.jetstream()
    try:
        await bus.publish(js, subjects.orders(sid), order(sid, 0))  # stored before the window: left out
        await asyncio.sleep(0.01)
        since = time.time_ns()
        for n in (1, 2, 3):
            await bus.publish(js, subjects.orders(sid), order(sid, n))
        await bus.publish(js, subjects.orders(sid), order(sid, 9, accepted=False))  # denied: not submitted
        await bus.publish(js, subjects.fills(sid), fill(sid, 1))
        await bus.publish(js, subjects.batch_events(sid), BatchEvents(strategy=sid, ts_event=1,
                                                                      decisions=[order(sid, 4)], fills=[fill(sid, 4)]))
        accepted, filled = await trades_in_window(operator_nc, since)
    finally:
        await execution.close()

    ours = {order_id for order_id in accepted if order_id.startswith(sid)}  # the server is shared with other tests
    assert ours == {f"{sid}-o{n}" for n in (1, 2, 3, 4)}
    assert {order_id for order_id in filled if order_id.startswith(sid)} == {f"{sid}-o1", f"{sid}-o4"}


@pytest.mark.integration
async def test_gather_when_no_service_answers_then_uptime_zero_and_unmeasured_criteria_do_not_pass(
        nats_credentials: NatsCredentials, operator_nc: Client) -> None:
    user, password = nats_credentials.for_user("operator")
    connection = Connection(nats_credentials.url, "", "", operator_user=user, operator_password=password,
                            tls_ca=nats_credentials.tls_ca)
    now = time.time_ns()
    report = await gather(connection, now - 60 * 10**9, now, None)

    results = {c.name: c for c in report.criteria}
    assert results["uptime"].value == 0.0 and not results["uptime"].passed
    assert results["control response p99"].value is None and not results["control response p99"].passed
    assert not report.passed
