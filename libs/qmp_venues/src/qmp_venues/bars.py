"""How to ask a venue for its bars: a crypto exchange's OHLCV through ccxt, Alpaca's stock bars through alpaca-py's
market-data client. Each answers `fetch(since_ms)` with every symbol's bars from that open time on (one page);
`history` follows the pages of one symbol to the end of a range. The collector's live feed
(`qmp_collector.venue_sources`) and `qmp import --source exchange|alpaca` both ask through these.
"""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

Bars = dict[int, dict[str, list[float]]]  # open time (ms) → symbol → [open, high, low, close, volume]


class VenueFetchFailed(Exception):
    """The venue did not answer a poll (the feed asks again at the next one)."""


class CcxtBars:
    """How to ask a ccxt exchange for bars: `fetch_ohlcv` per symbol, concurrently (ccxt spaces them)."""

    def __init__(self, exchange: Any, symbols: Sequence[str], timeframe: str, limit: int = 500) -> None:
        self.exchange = exchange
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.limit = limit
        self.frame_ms = int(exchange.parse_timeframe(timeframe) * 1000)

    async def fetch(self, since_ms: int) -> Bars:
        from ccxt.base import errors  # ccxt is imported only for an exchange source

        answers = await asyncio.gather(*(self.exchange.fetch_ohlcv(symbol, self.timeframe, since_ms, self.limit)
                                         for symbol in self.symbols), return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        if failed:
            if not all(isinstance(a, errors.BaseError) for a in failed):
                raise next(a for a in failed if not isinstance(a, errors.BaseError))
            raise VenueFetchFailed(str(failed[0]))
        by_time: Bars = {}
        for symbol, candles in zip(self.symbols, answers, strict=True):
            for opened, *values in candles:  # type: ignore[union-attr]
                by_time.setdefault(int(opened), {})[symbol] = [float(v) for v in values]
        return by_time

    async def close(self) -> None:
        await self.exchange.close()


class AlpacaBars:
    """How to ask Alpaca for stock bars: one market-data request for every symbol (the SDK follows its pages),
    in a worker thread (the SDK is synchronous)."""

    def __init__(self, client: Any, symbols: Sequence[str], minutes: int = 1, feed: str = "iex",
                 limit: int = 10_000) -> None:
        self.client = client
        self.symbols = list(symbols)
        self.minutes = minutes
        self.feed = feed
        self.limit = limit
        self.frame_ms = minutes * 60_000

    async def fetch(self, since_ms: int) -> Bars:
        from alpaca.common.exceptions import APIError
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
        from requests import RequestException

        request = StockBarsRequest(symbol_or_symbols=self.symbols, timeframe=TimeFrame(self.minutes,
                                                                                       TimeFrameUnit.Minute),
                                   start=datetime.fromtimestamp(since_ms / 1000, UTC), limit=self.limit,
                                   feed=self.feed)
        try:
            barset = await asyncio.to_thread(self.client.get_stock_bars, request)
        except (APIError, RequestException) as error:
            raise VenueFetchFailed(str(error)[:300]) from error
        by_time: Bars = {}
        for symbol, bars in barset.data.items():
            for bar in bars:
                opened = int(bar.timestamp.timestamp() * 1000)
                by_time.setdefault(opened, {})[symbol] = [float(bar.open), float(bar.high), float(bar.low),
                                                          float(bar.close), float(bar.volume)]
        return by_time

    async def close(self) -> None:
        return None


class BarFetcher(Protocol):
    symbols: list[str]
    frame_ms: int

    async def fetch(self, since_ms: int) -> Bars: ...

    async def close(self) -> None: ...


async def history(fetcher: BarFetcher, symbol: str, start_ms: int, end_ms: int) -> dict[int, list[float]]:
    """One symbol's bars that opened in [start_ms, end_ms), page after page (each from the bar after the last
    one the venue gave): open time (ms) → [open, high, low, close, volume]. Raises VenueFetchFailed."""
    found: dict[int, list[float]] = {}
    since = start_ms
    while since < end_ms:
        page = {t: bars[symbol] for t, bars in (await fetcher.fetch(since)).items() if symbol in bars}
        times = sorted(t for t in page if since <= t < end_ms)
        if not times:
            return found
        found.update((t, page[t]) for t in times)
        since = times[-1] + fetcher.frame_ms
    return found
