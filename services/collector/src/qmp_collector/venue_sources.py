"""Market data from a venue, as a live feed: a crypto exchange's bars (OHLCV) through ccxt, and Alpaca's
stock bars through alpaca-py's market-data client.

`VenueBars` yields one `BarBatch` per bar time for the whole universe: the venue's bars of every symbol
that opened at that time, stamped at the bar's close (open time + the bar's length, as daily bars are
stamped at the session's close), and only once the bar has closed. It starts `backfill_bars` bars back,
then asks every `poll_s` for what closed since. A symbol with no bar at a time is left out of that batch
(no bar, not a stale one). A venue that does not answer (a disconnect, a rate limit) is logged and asked
again at the next poll from the last bar published: the feed never ends on it and skips nothing, and a
poll where one symbol's answer failed publishes nothing (never a batch short of a symbol that has a bar).
What is venue-specific is only how to ask (`qmp_venues.bars`: bars since a time, by open time).

The collector's engine validates every batch as it does any source's (future timestamps, jumps, order).
"""

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from qmp_core import subjects
from qmp_core.clock import Clock
from qmp_core.messages import BarBatch
from qmp_venues.bars import Bars, VenueFetchFailed

log = logging.getLogger(__name__)

MS = 1_000_000  # ns per ms


class VenueBars:
    """A venue's closed bars as an async iterator of batches (a live feed)."""

    def __init__(self, fetcher: Any, symbols: Sequence[str], venue: str, clock: Clock,
                 sleep: Callable[[float], Awaitable[None]], backfill_bars: int = 0, poll_s: float = 10.0) -> None:
        if not symbols:
            raise ValueError("a venue source needs symbols (QMP_EXCHANGE_SYMBOLS or QMP_ALPACA_SYMBOLS)")
        self.fetcher = fetcher
        self.symbols = list(symbols)
        self.venue = subjects.check_token(venue, "venue")
        self.clock = clock
        self.poll_s = poll_s
        self.frame_ms: int = fetcher.frame_ms
        self._sleep = sleep
        self._backfill = backfill_bars
        self.polls = 0
        self.failures = 0

    async def __aiter__(self) -> AsyncIterator[BarBatch]:
        now_ms = self.clock.now_ns() // MS
        next_ms = (now_ms // self.frame_ms - self._backfill) * self.frame_ms  # the first bar to publish
        seq = 0
        try:
            while True:
                rows = await self._fetch(next_ms)
                closed_before = self.clock.now_ns() // MS - self.frame_ms  # a bar opened later is still forming
                times = sorted(t for t in rows if next_ms <= t <= closed_before)
                for opened in times:
                    seq += 1
                    yield self._batch(opened, rows[opened], seq)
                if times:
                    next_ms = times[-1] + self.frame_ms
                if not times or len(times) < self.fetcher.limit:  # caught up: wait for the next bar to close
                    await self._sleep(self.poll_s)
        finally:
            await self.fetcher.close()

    async def _fetch(self, since_ms: int) -> Bars:
        """Every symbol's bars from `since_ms`, by open time; {} when the venue does not answer."""
        self.polls += 1
        try:
            return await self.fetcher.fetch(since_ms)
        except VenueFetchFailed as error:  # asked again at the next poll, from the same bar
            self.failures += 1
            log.warning("venue bars not fetched; asking again", extra={"venue": self.venue, "error": str(error)})
            return {}

    def _batch(self, opened_ms: int, bars: dict[str, list[float]], seq: int) -> BarBatch:
        symbols = [s for s in self.symbols if s in bars]
        column = [bars[s] for s in symbols]
        return BarBatch(venue=self.venue, ts_event=(opened_ms + self.frame_ms) * MS, symbols=symbols,
                        open=[c[0] for c in column], high=[c[1] for c in column], low=[c[2] for c in column],
                        close=[c[3] for c in column], volume=[c[4] for c in column], seq=seq)
