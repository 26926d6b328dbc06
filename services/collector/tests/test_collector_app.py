"""The collector in-process against a real nats-server and PostgreSQL, connected as the `collector` user."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from qmp_collector.app import CollectorService, CollectorSettings
from qmp_collector.sources import HistorySource
from qmp_collector.store import BarStore
from qmp_core import subjects
from qmp_core.clock import to_datetime
from qmp_core.messages import BarBatch, DeadLetter, HealthReply, RiskSnapshot, codec, encode
from qmp_ops.runtime.nats_server import NatsCredentials
from qmp_ops.testing import settings_for

pytestmark = pytest.mark.integration

START, END = "2008-09-01", "2008-10-31"
DAYS = len(HistorySource(START, END))
SYMBOLS = 20


def collector_settings(
    credentials: NatsCredentials, database_url: str, run_dir: Path, venue: str, **values: object
) -> CollectorSettings:
    base = settings_for(credentials, "collector", database_url)
    merged = {**msgspec.structs.asdict(base), "run_dir": str(run_dir), "source": "history", "venue": venue,
              "start": START, "end": END, "ingest_durable": f"collector-ingest-{venue}", **values}
    return msgspec.convert(merged, CollectorSettings)


async def run_to_end(settings: CollectorSettings) -> CollectorService:
    service = CollectorService(settings)
    await service.start()
    try:
        await service.wait_done(60)
    finally:
        await service.stop()
    return service


async def count_on_stream(nc: Client, subject: str) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_MARKET_DATA, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def eventually(probe: Callable[[], Awaitable[object]], expected: object, timeout_s: float = 10.0) -> bool:
    """Return True as soon as probe() returns expected, False after timeout_s."""
    for _ in range(int(timeout_s / 0.05)):
        if await probe() == expected:
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def test_replay_history_when_run_restarted_and_repeated_then_stream_and_table_exact(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, db: asyncpg.Connection,
    unique_id: str, tmp_path: Path,
) -> None:
    subject = subjects.bars(unique_id)
    settings = collector_settings(nats_credentials, database_url, tmp_path, unique_id)

    partial = await run_to_end(msgspec.structs.replace(settings, max_batches=10))
    assert partial.collector is not None and partial.collector.published == 10
    assert await count_on_stream(operator_nc, subject) == 10
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", unique_id) == 10 * SYMBOLS

    resumed = await run_to_end(settings)
    assert resumed.collector is not None and resumed.collector.skipped == 10
    assert await count_on_stream(operator_nc, subject) == DAYS

    again = await run_to_end(settings)
    assert again.collector is not None and again.collector.published == 0
    assert await count_on_stream(operator_nc, subject) == DAYS
    rows = await db.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT (symbol, ts)) AS distinct_bars, count(DISTINCT ts) AS days "
        "FROM bars WHERE venue = $1", unique_id)
    assert (rows["n"], rows["distinct_bars"], rows["days"]) == (DAYS * SYMBOLS, DAYS * SYMBOLS, DAYS)

    last = codec(BarBatch).decode(
        (await operator_nc.jetstream().get_last_msg(subjects.STREAM_MARKET_DATA, subject)).data)
    assert last.ts_event == list(HistorySource(START, END))[-1].ts_event
    stored = await db.fetchval("SELECT close FROM bars WHERE venue = $1 AND symbol = $2 AND ts = $3",
                               unique_id, last.symbols[0], to_datetime(last.ts_event))
    assert stored == last.close[0]


async def test_replay_history_when_table_lost_recent_bars_then_restart_restores_them_without_republishing(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, db: asyncpg.Connection,
    unique_id: str, tmp_path: Path,
) -> None:
    settings = collector_settings(nats_credentials, database_url, tmp_path, unique_id, end="2008-09-30")
    days = len(HistorySource(START, "2008-09-30"))
    await run_to_end(settings)
    # As if the previous run died with its last bars still buffered.
    await db.execute("DELETE FROM bars WHERE venue = $1 AND ts >= $2", unique_id,
                     to_datetime(next(iter(HistorySource("2008-09-20", "2008-09-30"))).ts_event))
    restarted = await run_to_end(settings)
    assert restarted.collector is not None and restarted.collector.published == 0
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", unique_id) == days * SYMBOLS
    assert await count_on_stream(operator_nc, subjects.bars(unique_id)) == days


async def test_store_when_same_batches_written_twice_then_no_duplicate_rows(
    database_url: str, db: asyncpg.Connection, unique_id: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = BarStore(pool, flush_rows=10**6)
        batches = list(HistorySource("2008-10-01", "2008-10-10", venue=unique_id))
        for batch in batches + batches[:3]:
            await store.add(batch)
        first = await store.flush()
        for batch in batches:
            await store.add(batch)
        second = await store.flush()
        assert (first, second) == (len(batches) * SYMBOLS, 0)
        assert await store.last_ts(unique_id) == batches[-1].ts_event
        assert await store.last_ts(unique_id + "x") is None
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", unique_id) == len(batches) * SYMBOLS


async def test_store_when_writes_overlap_stored_bars_then_only_new_rows_land_and_plain_copy_resumes(
    database_url: str, db: asyncpg.Connection, unique_id: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = BarStore(pool, flush_rows=10**6)
        batches = list(HistorySource("2008-10-01", "2008-10-31", venue=unique_id))
        written = []
        for part in (batches[:5], batches[3:10], batches[10:15]):  # the second restarts over two stored days
            for batch in part:
                await store.add(batch)
            written.append((await store.flush(), store.staging))
    finally:
        await pool.close()
    # The overlapping write lands only its new days and leaves the store staging; the next write, staged,
    # finds nothing stored and sends the store back to plain COPY.
    assert written == [(5 * SYMBOLS, False), (5 * SYMBOLS, True), (5 * SYMBOLS, False)]
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", unique_id) == 15 * SYMBOLS


async def test_store_when_database_refuses_one_row_then_it_is_reported_and_the_rest_written(
    database_url: str, db: asyncpg.Connection, unique_id: str,
) -> None:
    # A NUL cannot be stored in text: PostgreSQL refuses the whole COPY. (Decoding refuses it on the bus;
    # a file or a custom source could still produce one.)
    refused: list[tuple[object, str]] = []

    async def on_rejected(row: object, reason: str) -> None:
        refused.append((row, reason))

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        store = BarStore(pool, flush_rows=10**6, on_rejected=on_rejected)
        symbols = [f"S{i}" for i in range(7)] + ["BAD\x00"]
        values = [10.0] * len(symbols)
        await store.add(BarBatch(venue=unique_id, ts_event=1_222_000_000_000_000_000, symbols=symbols, open=values,
                                 high=values, low=values, close=values, volume=values))
        written = await store.flush()
    finally:
        await pool.close()
    assert written == 7 and store.rows_rejected == 1
    assert len(refused) == 1 and "refused by the database" in refused[0][1] and "BAD" in str(refused[0][0])
    assert await db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", unique_id) == 7


async def test_store_when_buffer_fills_then_background_writes_and_flush_keep_every_row(
    database_url: str, db: asyncpg.Connection, unique_id: str,
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    try:
        store = BarStore(pool, flush_rows=SYMBOLS, max_pending_rows=3 * SYMBOLS)
        batches = list(HistorySource("2008-10-01", "2008-10-31", venue=unique_id))
        for batch in batches:
            await store.add(batch)
        await store.flush()
        assert store.pending_rows == 0
        assert store.rows_written == len(batches) * SYMBOLS
    finally:
        await pool.close()
    assert await db.fetchval("SELECT count(DISTINCT ts) FROM bars WHERE venue = $1", unique_id) == len(batches)


async def test_ingest_when_malformed_then_dead_lettered_and_next_valid_published(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, db: asyncpg.Connection,
    unique_id: str, tmp_path: Path,
) -> None:
    feed = unique_id + "f"
    settings = collector_settings(nats_credentials, database_url, tmp_path, unique_id, max_batches=1)
    service = CollectorService(settings)
    await service.start()
    try:
        await service.wait_done(30)
        js = operator_nc.jetstream()
        arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def on_bars(msg: Msg) -> None:
            if not arrived.done():
                arrived.set_result(msg.data)

        watcher = await operator_nc.subscribe(subjects.bars(feed), cb=on_bars)
        marker = f"broken-{unique_id}"
        await js.publish(subjects.ingest(feed), f'{{"venue": "{feed}", "ts_event": "{marker}"'.encode())
        valid = BarBatch(venue=feed, ts_event=1_222_000_000_000_000_000,  # within the replay window
                         symbols=["AAA", "BBB"],
                         open=[10.0, 20.0], high=[11.0, 21.0], low=[9.0, 19.0], close=[10.5, 20.5],
                         volume=[100.0, 200.0])
        await js.publish(subjects.ingest(feed), encode(valid))
        published = codec(BarBatch).decode(await asyncio.wait_for(arrived, 15))
        await watcher.unsubscribe()
        raw = await js.get_last_msg(subjects.STREAM_DLQ, subjects.dlq("collector"))
        letter = codec(DeadLetter).decode(raw.data)
        assert letter.subject == subjects.ingest(feed)
        assert marker in letter.payload
        assert letter.reason.startswith("invalid BarBatch")
        assert await count_on_stream(operator_nc, subjects.bars(feed)) == 1
        assert (published.symbols, published.close) == (valid.symbols, valid.close)
        # The bars are written after they are published: give the write its moment.
        assert await eventually(lambda: db.fetchval("SELECT count(*) FROM bars WHERE venue = $1", feed), 2)

        reply = await operator_nc.request(subjects.health("collector"), b"", timeout=5)
        health = codec(HealthReply).decode(reply.data)
        assert health.detail["done"] is True
        assert health.detail["published"] == 2
        assert health.detail["last_ts"] == valid.ts_event
    finally:
        await service.stop()


async def test_replay_when_lockstep_then_each_batch_waits_for_a_risk_snapshot(
    nats_credentials: NatsCredentials, database_url: str, operator_nc: Client, unique_id: str, tmp_path: Path,
) -> None:
    strategy = unique_id + "s"
    risk = await nats_credentials.connect("risk")
    seen: list[int] = []

    async def answer(msg: Msg) -> None:
        batch = codec(BarBatch).decode(msg.data)
        seen.append(batch.ts_event)
        await asyncio.sleep(0.05)
        snapshot = RiskSnapshot(strategy=strategy, ts_event=batch.ts_event, equity=1.0, var={}, es={},
                                drawdown_24h=0.0, drawdown_max=0.0, volatility_ratio=1.0, breakers=[])
        await risk.publish(subjects.snapshot(strategy), encode(snapshot))

    await risk.subscribe(subjects.bars(unique_id), cb=answer)
    try:
        settings = collector_settings(nats_credentials, database_url, tmp_path, unique_id, max_batches=5,
                                      lockstep_strategy=strategy, lockstep_timeout=5.0)
        started = time.monotonic()
        service = await run_to_end(settings)
        elapsed = time.monotonic() - started
    finally:
        await risk.drain()
    assert elapsed >= 5 * 0.05
    assert service.collector is not None and service.collector.lockstep is not None
    assert service.collector.lockstep.timeouts == 0
    assert seen == [b.ts_event for b in list(HistorySource(START, END))[:5]]
