"""After a restart: each strategy's book from its last PortfolioSnapshot, its window from the market-data stream."""

import contextlib
import logging
from collections.abc import Collection

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from qmp_core import subjects
from qmp_core.messages import (
    BarBatch,
    PortfolioSnapshot,
    codec,
)
from qmp_execution.engine import ExecutionEngine
from qmp_execution.handlers.constants import (
    SCAN_PER_ROW,
    venue_of,
)

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
