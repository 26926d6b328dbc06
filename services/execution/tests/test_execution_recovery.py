"""After a crash between a batch's snapshot and its database write: the rows of the last snapshot's batch are
written at start from the bus (real NATS with execution's credentials, real PostgreSQL)."""

import asyncpg
import pytest
from nats.aio.client import Client

from qmp_core import bus, subjects
from qmp_core.db import connect_pool
from qmp_core.messages import BatchEvents, Fill, PortfolioSnapshot
from qmp_execution.handlers import write_missing_rows
from qmp_execution.store import ExecutionStore
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import connect_as

pytestmark = pytest.mark.integration
DAY = 86_400 * 10**9


def fill(sid: str, ts: int, n: int) -> Fill:
    return Fill(strategy=sid, order_id=f"{sid}-{ts}-A", fill_id=f"{sid}-{ts}-A-f{n}", symbol="A", side="BUY",
                quantity=1.0, price=100.0, arrival_price=100.0, slippage_bps=0.0, fee=0.0, ts_event=ts)


def book(sid: str, ts: int, quantity: float) -> PortfolioSnapshot:
    return PortfolioSnapshot(strategy=sid, ts_event=ts, cash=1_000.0, equity=1_000.0 + 100.0 * quantity,
                             symbols=["A"], quantities=[quantity], prices=[100.0])


async def test_write_missing_rows_when_the_last_batch_has_no_rows_then_written_from_the_bus_once(
        nats_credentials: NatsCredentials, operator_nc: Client, database_url: str, unique_id: str) -> None:
    sid, other = unique_id, f"{unique_id}-other"
    nc = await connect_as(nats_credentials, "execution")  # the streams: declared by the operator's connection
    js = nc.jetstream()
    pool = await connect_pool(database_url, max_size=1)
    store = ExecutionStore(pool)
    try:
        # Day 1 traded and stored; day 2's fills and snapshot reached the bus, its rows never the database.
        await bus.publish(js, subjects.fills(sid), fill(sid, DAY, 1), msg_id=f"{sid}:d1f1")
        await bus.publish(js, subjects.portfolio(sid), book(sid, DAY, 1.0), msg_id=f"{sid}:d1")
        for n in (1, 2):
            await bus.publish(js, subjects.fills(sid), fill(sid, 2 * DAY, n), msg_id=f"{sid}:d2f{n}")
            await bus.publish(js, subjects.fills(other), fill(other, 2 * DAY, n), msg_id=f"{other}:d2f{n}")
        await bus.publish(js, subjects.portfolio(sid), book(sid, 2 * DAY, 3.0), msg_id=f"{sid}:d2")
        assert not await store.has_batch(sid, 2 * DAY)

        written = await write_missing_rows(js, store, [sid, f"{unique_id}-never-traded"])
        again = await write_missing_rows(js, store, [sid])

        rows = await pool.fetch("SELECT fill_id FROM fills WHERE strategy = $1 ORDER BY fill_id", sid)
        equity = await pool.fetch("SELECT equity FROM equity_curve WHERE strategy = $1", sid)
        positions = await pool.fetch("SELECT quantity FROM positions WHERE strategy = $1", sid)
    finally:
        await pool.close()
        await nc.drain()

    assert written == {sid: 2} and again == {}  # the second start finds the rows
    assert [r["fill_id"] for r in rows] == [f"{sid}-{2 * DAY}-A-f1", f"{sid}-{2 * DAY}-A-f2"]  # not day 1's
    assert [r["equity"] for r in equity] == [1_300.0] and [r["quantity"] for r in positions] == [3.0]


async def test_has_batch_when_asked_of_a_written_batch_then_true(database_url: str, unique_id: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("INSERT INTO equity_curve VALUES (to_timestamp(86400), $1, 0, 0, 0, 0, 0, 0, 0, "
                                 "0, 0)", unique_id)
    finally:
        await connection.close()
    pool = await connect_pool(database_url, max_size=1)
    try:
        assert await ExecutionStore(pool).has_batch(unique_id, DAY)
        assert not await ExecutionStore(pool).has_batch(unique_id, 2 * DAY)
    finally:
        await pool.close()


async def test_write_missing_rows_when_a_replay_published_the_batch_as_one_message_then_its_fills_written(
        nats_credentials: NatsCredentials, operator_nc: Client, database_url: str, unique_id: str) -> None:
    sid = unique_id
    nc = await connect_as(nats_credentials, "execution")
    js = nc.jetstream()
    pool = await connect_pool(database_url, max_size=1)
    store = ExecutionStore(pool)
    try:
        await bus.publish(js, subjects.portfolio(sid), book(sid, DAY, 0.0), msg_id=f"{sid}:d1")
        events = BatchEvents(strategy=sid, ts_event=2 * DAY, fills=[fill(sid, 2 * DAY, n) for n in (1, 2)])
        await bus.publish(js, subjects.batch_events(sid), events, msg_id=f"{sid}:d2:events")
        await bus.publish(js, subjects.portfolio(sid), book(sid, 2 * DAY, 2.0), msg_id=f"{sid}:d2")

        written = await write_missing_rows(js, store, [sid])

        rows = await pool.fetch("SELECT fill_id FROM fills WHERE strategy = $1 ORDER BY fill_id", sid)
    finally:
        await pool.close()
        await nc.drain()

    assert written == {sid: 2}
    assert [r["fill_id"] for r in rows] == [f"{sid}-{2 * DAY}-A-f1", f"{sid}-{2 * DAY}-A-f2"]
