"""Bars into PostgreSQL: COPY straight into the table; through a staging table when some bars are stored.

COPY is the fast path (FIELD_NOTES: ~5x executemany) but cannot skip rows that exist already: a COPY that
meets a stored bar fails whole, and the same rows then go through a temporary table and INSERT ... ON
CONFLICT DO NOTHING, so a replay or a redelivered batch never doubles a bar. After such a conflict the store
stages every write (a replay restarting over stored days would otherwise fail one COPY per write) until a
write finds nothing stored. Several batches go into one COPY (`tests/bench/bench_bar_ingest.py` measures
the store against raw COPY).

A database that is down is waited for (retried with backoff, the buffer bounded, the publish loop slowed
down, nothing dropped); a row the database refuses is found by halving the write and handed to
`on_rejected` (the collector dead-letters it), so it never blocks the rows behind it.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import repeat

import asyncpg

from qmp_core.clock import to_datetime
from qmp_core.messages import BarBatch
from qmp_core.retry import is_transient, until_available

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS = ("ts", "venue", "symbol", "open", "high", "low", "close", "volume")
Record = tuple[datetime, str, str, float, float, float, float, float]


def datetime_to_ns(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1) * 1_000


def records(batch: BarBatch) -> list[Record]:
    n = len(batch.symbols)
    return list(zip(repeat(to_datetime(batch.ts_event), n), repeat(batch.venue, n), batch.symbols, batch.open,
                    batch.high, batch.low, batch.close, batch.volume, strict=True))


class BarStore:
    """Buffer bars; write them in one COPY in the background once `flush_rows` are pending, or on `flush()`.

    The background write lets publishing go on while PostgreSQL works (the table's primary key makes
    the write several times slower than the publish). When more than `max_pending_rows` wait, `add`
    waits for the write in progress: memory stays bounded and a slow database slows the collector down.
    A write that fails for any other reason than a refused row keeps its rows pending and raises from the
    next `add`; `flush` retries it.
    """

    def __init__(self, pool: asyncpg.Pool, flush_rows: int = 50_000, max_pending_rows: int | None = None,
                 on_retry: Callable[[BaseException | None], None] | None = None,
                 on_rejected: Callable[[Record, str], Awaitable[None]] | None = None) -> None:
        self._pool = pool
        self.on_retry = on_retry
        self.on_rejected = on_rejected
        self.rows_rejected = 0
        self.flush_rows = flush_rows
        self.max_pending_rows = max_pending_rows or 4 * flush_rows
        self._pending: list[Record] = []
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[int] | None = None
        self._staging = False  # the last write met stored bars: stage the next one
        self.rows_written = 0

    @property
    def staging(self) -> bool:
        """True while writes go through the staging table (the last write met bars stored already)."""
        return self._staging

    @property
    def pending_rows(self) -> int:
        return len(self._pending)

    async def add(self, batch: BarBatch) -> None:
        """Buffer a batch's bars; start a background write when the buffer is full."""
        self._raise_failed_write()
        self._pending.extend(records(batch))
        if len(self._pending) < self.flush_rows:
            return
        if self._writer is not None and not self._writer.done():
            if len(self._pending) < self.max_pending_rows:
                return
            await asyncio.wait([self._writer])
            self._raise_failed_write()
        self._writer = asyncio.create_task(self._write_pending(), name="bar-store-write")

    def _raise_failed_write(self) -> None:
        if self._writer is not None and self._writer.done():
            writer, self._writer = self._writer, None
            if not writer.cancelled() and writer.exception() is not None:
                raise RuntimeError("writing bars to the database failed") from writer.exception()

    async def flush(self) -> int:
        """Write every pending bar, retrying a failed background write; return how many rows were new."""
        written = 0
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await asyncio.wait([writer])
            if writer.cancelled() or writer.exception() is not None:
                # Its rows are pending again: the write below retries them.
                log.warning("background bar write failed; retrying", extra={"error": repr(writer)})
            else:
                written = writer.result()
        return written + await self._write_pending()

    async def _write_pending(self) -> int:
        async with self._lock:
            if not self._pending:
                return 0
            rows = self._pending
            self._pending = []
            try:
                inserted = await until_available(lambda: self._write_isolating(rows), "bar store", self.on_retry)
            except BaseException:
                self._pending = rows + self._pending
                raise
            self.rows_written += inserted
            return inserted

    async def _write_isolating(self, rows: list[Record]) -> int:
        """Write the rows; when the database refuses the write for its data, write halves to find the rows."""
        try:
            return await self._write(rows)
        except asyncpg.PostgresError as error:
            if is_transient(error):
                raise
            if len(rows) == 1:
                self.rows_rejected += 1
                log.error("bar refused by the database", extra={"row": repr(rows[0])[:300], "error": str(error)})
                if self.on_rejected is not None:
                    await self.on_rejected(rows[0], f"refused by the database: {error}")
                return 0
            half = len(rows) // 2
            return await self._write_isolating(rows[:half]) + await self._write_isolating(rows[half:])

    async def _write(self, rows: list[Record]) -> int:
        if not self._staging:
            try:
                async with self._pool.acquire() as connection:
                    await connection.copy_records_to_table("bars", records=rows, columns=COLUMNS)
                return len(rows)
            except asyncpg.UniqueViolationError:
                self._staging = True
        inserted = await self._write_staged(rows)
        self._staging = inserted < len(rows)
        return inserted

    async def _write_staged(self, rows: list[Record]) -> int:
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "CREATE TEMP TABLE bars_stage (LIKE bars INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            await connection.copy_records_to_table("bars_stage", records=rows, columns=COLUMNS)
            status = await connection.execute(
                "INSERT INTO bars (ts, venue, symbol, open, high, low, close, volume) "
                "SELECT ts, venue, symbol, open, high, low, close, volume FROM bars_stage "
                "ON CONFLICT (venue, symbol, ts) DO NOTHING"
            )
        return int(status.rsplit(" ", 1)[-1])

    async def last_ts(self, venue: str) -> int | None:
        """Return the latest stored bar time of a venue in int ns, or None when it has none."""
        async with self._pool.acquire() as connection:
            value = await connection.fetchval("SELECT max(ts) FROM bars WHERE venue = $1", venue)
        return None if value is None else datetime_to_ns(value)
