"""`qmp import --source exchange|alpaca`: a venue's historical bars, fetched through its client library (ccxt,
alpaca-py) and imported like files.

Each symbol's bars in [start, end) are asked for page after page (`qmp_venues.bars.history`), several symbols at
once, and written as one long CSV.gz per symbol under `<downloads>/<venue>/` (a file names its range and bar
length). Each bar is stamped at its close, open time + the bar's length, as the collector's live feed stamps the
venue's bars, so an import and the feed that follows it put the same bar at the same time. The files then go
through `history_import.import_bars`: the collector's row checks and dead letters, chunks committed with their
record, nothing imported twice (a fetch that gives the same bars again gives the same file, which an earlier run
committed).
"""

import asyncio
import gzip
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from qmp_ops.history_import import ImportReport, import_bars
from qmp_venues.bars import AlpacaBars, BarFetcher, CcxtBars, history

MS_PER_NS = 1_000_000
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class VenueSource:
    """Where the bars come from: `kind` exchange (a ccxt exchange id) or alpaca, and how to reach it."""

    kind: str  # "exchange" | "alpaca"
    symbols: list[str]
    exchange_id: str = "binance"
    timeframe: str = "1d"  # ccxt's timeframe; Alpaca's bars are `minutes` long
    minutes: int = 1
    url: str = ""  # another base URL (a fake venue on loopback, a proxy); "" for the venue's own
    sandbox: bool = True
    api_key: str = ""
    secret_key: str = ""
    secrets_file: str = ""


def make_fetcher(source: VenueSource, symbols: list[str]) -> BarFetcher:
    """The venue's client library asked for `symbols` (its credentials checked here for Alpaca)."""
    if source.kind == "exchange":
        from qmp_venues.ccxt_exchange import make_exchange

        exchange = make_exchange(source.exchange_id, sandbox=source.sandbox, url=source.url)
        return CcxtBars(exchange, symbols, source.timeframe)
    if source.kind != "alpaca":
        raise ValueError(f"unknown venue source {source.kind!r}: exchange or alpaca")
    with warnings.catch_warnings():  # alpaca-py's streams import `websockets.legacy`, which warns on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from alpaca.data.historical import StockHistoricalDataClient

    from qmp_venues.credentials import load_credentials

    key, secret = load_credentials("Alpaca", "QMP_ALPACA", source.api_key, source.secret_key, source.secrets_file)
    client = StockHistoricalDataClient(key, secret, url_override=source.url or None)
    return AlpacaBars(client, symbols, source.minutes)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def download(source: VenueSource, start: datetime, end: datetime, folder: Path, threads: int = 8,
                   progress: Callable[[str, int], None] | None = None) -> list[Path]:
    """Fetch each symbol's bars that opened in [start, end) into `folder`; return the files (a symbol without
    bars in the range gets none). Raises `qmp_venues.bars.VenueFetchFailed` when the venue does not answer."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    start_ms, end_ms = _ms(start), _ms(end)
    asking = asyncio.Semaphore(threads)
    length = source.timeframe if source.kind == "exchange" else f"{source.minutes}m"

    async def one(symbol: str) -> Path | None:
        async with asking:
            fetcher = make_fetcher(source, [symbol])
            try:
                bars = await history(fetcher, symbol, start_ms, end_ms)
            finally:
                await fetcher.close()
            frame_ms = fetcher.frame_ms
        if progress:
            progress(symbol, len(bars))
        if not bars:
            return None
        path = folder / f"{UNSAFE.sub('-', symbol)}_{length}_{start:%Y%m%d}-{end:%Y%m%d}.csv.gz"
        await asyncio.to_thread(write_bars, path, symbol, bars, frame_ms)
        return path

    # Every symbol's fetch runs to its end (its client closed) before a failure is raised.
    found = await asyncio.gather(*(one(symbol) for symbol in source.symbols), return_exceptions=True)
    for outcome in found:
        if isinstance(outcome, BaseException):
            raise outcome
    return [path for path in found if isinstance(path, Path)]


def write_bars(path: Path, symbol: str, bars: dict[int, list[float]], frame_ms: int) -> None:
    """One symbol's bars as a long CSV.gz, each stamped at its close (open time + `frame_ms`)."""
    lines = ["ts,symbol,open,high,low,close,volume"]
    lines += [f"{datetime.fromtimestamp((opened + frame_ms) / 1000, UTC).isoformat()},{symbol},"
              + ",".join(repr(v) for v in values) for opened, values in sorted(bars.items())]
    # mtime 0: the same bars make the same bytes, so a repeated import finds the file's chunks committed
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(("\n".join(lines) + "\n").encode())


async def import_from_venue(database_url: str, source: VenueSource, start: datetime, end: datetime, venue: str,
                            downloads: Path, threads: int = 8,
                            progress: Callable[[int, int], None] | None = None,
                            fetched: Callable[[str, int], None] | None = None) -> tuple[list[Path], ImportReport]:
    """Fetch the venue's bars into files under `downloads/<venue>`, then import them under `venue`."""
    files = await download(source, start, end, downloads / venue, threads, fetched)
    if not files:
        return files, ImportReport()
    return files, await import_bars(database_url, files, venue, threads=threads, progress=progress)
