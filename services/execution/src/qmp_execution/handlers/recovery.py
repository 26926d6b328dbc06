"""After a restart: each strategy's book from its last PortfolioSnapshot, its window from the market-data stream,
and the database rows of that last batch if the process stopped before writing them.

A batch's snapshot goes out before its rows are written (the write is off a replay's critical path, and
the bars message is acknowledged only once both are done). A crash in between leaves the snapshot on the
bus and its rows nowhere, and the redelivered batch is not traded again (the book already holds it): so
at start the rows of each strategy's last snapshot are looked for, and written from the bus when missing
(the snapshot, and the fills published between the strategy's previous snapshot and it).
"""

import contextlib
import logging
from collections.abc import Collection

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qmp_core import subjects
from qmp_core.messages import (
    BarBatch,
    BatchEvents,
    Fill,
    PortfolioSnapshot,
    codec,
)
from qmp_execution.engine import ExecutionEngine, StrategyResult
from qmp_execution.handlers.constants import (
    SCAN_PER_ROW,
    venue_of,
)
from qmp_execution.store import ExecutionStore

log = logging.getLogger(__name__)


async def recover(engine: ExecutionEngine, js: JetStreamContext, consumer: str,
                  venues: Collection[str] = ()) -> dict[str, int]:
    """Restore every strategy's book from its last PortfolioSnapshot and rebuild the price windows.

    Windows come from the market-data stream (the data this service traded on, validated the same way),
    read backwards from the last batch delivered to our durable consumer. Returns strategy → restored ts.
    """
    decoder = codec(PortfolioSnapshot)
    restored: dict[str, int] = {}
    for strategy in engine.strategies():
        try:
            raw = await js.get_last_msg(subjects.STREAM_EXEC, subjects.portfolio(strategy))
        except NotFoundError:
            continue
        snapshot = decoder.decode(raw.data or b"")
        engine.restore(snapshot)
        restored[strategy] = snapshot.ts_event
    if restored:
        batches = await recent_bars(js, consumer, max(restored.values()), engine.window_rows(), venues)
        used = engine.warm(batches)
        log.info("recovered", extra={"restored": restored, "window_batches": used})
    return restored


async def write_missing_rows(js: JetStreamContext, store: ExecutionStore, strategies: Collection[str],
                             scan_limit: int = 1_000_000) -> dict[str, int]:
    """Write the rows of each strategy's last snapshot from the bus where the database lacks them; return
    strategy → fills written for the strategies that needed it (see the module docstring)."""
    snapshots, fills_of, events_of = codec(PortfolioSnapshot), codec(Fill), codec(BatchEvents)
    written: dict[str, int] = {}
    for strategy in strategies:
        try:
            raw = await js.get_last_msg(subjects.STREAM_EXEC, subjects.portfolio(strategy))
        except NotFoundError:
            continue
        snapshot = snapshots.decode(raw.data or b"")
        if await store.has_batch(strategy, snapshot.ts_event):
            continue
        fills: list[Fill] = []
        portfolio, fills_subject = subjects.portfolio(strategy), subjects.fills(strategy)
        events_subject = subjects.batch_events(strategy)
        seq = (raw.seq or 0) - 1
        first = (await js.stream_info(subjects.STREAM_EXEC)).state.first_seq
        while seq >= first and scan_limit > 0:  # back to the strategy's previous snapshot
            scan_limit -= 1
            try:
                message = await js.get_msg(subjects.STREAM_EXEC, seq)
            except NotFoundError:
                seq -= 1
                continue
            seq -= 1
            if message.subject == portfolio:
                break
            if message.subject == fills_subject:
                fills.append(fills_of.decode(message.data or b""))
            elif message.subject == events_subject:  # a replay's fills of the batch, in one message
                fills.extend(reversed(events_of.decode(message.data or b"").fills))
        fills.reverse()
        await store.write([StrategyResult(strategy, snapshot.ts_event, [], fills, snapshot)])
        written[strategy] = len(fills)
        log.warning("rows of the last batch written from the bus", extra={
            "strategy": strategy, "ts_event": snapshot.ts_event, "fills": len(fills)})
    return written


async def recent_bars(js: JetStreamContext, consumer: str, upto_ts: int, rows: int,
                      venues: Collection[str] = ()) -> list[BarBatch]:
    """Return the batches of the last `rows` timestamps up to `upto_ts`, newest first."""
    try:
        stream = await js.stream_info(subjects.STREAM_MARKET_DATA)
    except NotFoundError:
        return []
    first, seq = stream.state.first_seq, stream.state.last_seq
    with contextlib.suppress(NotFoundError):
        delivered = (await js.consumer_info(subjects.STREAM_MARKET_DATA, consumer)).delivered
        if delivered is not None and delivered.stream_seq:
            seq = min(seq, delivered.stream_seq)
    decoder = codec(BarBatch)
    wanted = frozenset(venues)
    seen: set[int] = set()
    found: list[BarBatch] = []
    budget = rows * SCAN_PER_ROW
    while seq >= first and budget > 0:
        budget -= 1
        try:
            raw = await js.get_msg(subjects.STREAM_MARKET_DATA, seq)
        except NotFoundError:
            seq -= 1
            continue
        seq -= 1
        subject = raw.subject or ""
        if not subject.endswith(".bars") or (wanted and venue_of(subject) not in wanted):
            continue
        try:
            batch = decoder.decode(raw.data or b"")
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        if batch.ts_event > upto_ts:
            continue
        if batch.ts_event not in seen and len(seen) >= rows:
            break
        seen.add(batch.ts_event)
        found.append(batch)
    return found
