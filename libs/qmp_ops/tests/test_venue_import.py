"""`qmp import --source exchange:<id> | alpaca`: the real ccxt and alpaca-py clients against fakes of Binance's and
Alpaca's APIs on loopback, into a real PostgreSQL (a database of the test's own): every page of every symbol, each
bar stamped at its close as the collector's feed stamps it, a repeated import writing nothing twice."""

import asyncio
import itertools
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from qmp_ops.venue_import import VenueSource, import_from_venue
from qmp_venues.bars import VenueFetchFailed
from qmp_venues.fake_alpaca import FakeAlpaca
from qmp_venues.fake_exchange import FakeExchange

pytestmark = pytest.mark.integration

MINUTE_MS = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
START = datetime.fromtimestamp(START_MS / 1000, UTC)


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    fake = FakeExchange()
    # 2,600 minutes of BTC: ccxt asks 500 at a time (the fake gives at most 1,000), so six pages; ETH has a gap.
    fake.add_bars("BTCUSDT", START_MS, [60_000.0 + i for i in range(2_600)])
    fake.add_bars("ETHUSDT", START_MS, [3_000.0 + i for i in range(40)])
    fake.add_bars("ETHUSDT", START_MS + 100 * MINUTE_MS, [3_100.0 + i for i in range(20)])
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


async def _bars(url: str, venue: str) -> list[asyncpg.Record]:
    db = await asyncpg.connect(url)
    try:
        return await db.fetch("SELECT symbol, ts, open, close FROM bars WHERE venue = $1 ORDER BY symbol, ts", venue)
    finally:
        await db.close()


async def test_import_when_an_exchange_pages_its_bars_then_every_bar_once_stamped_at_its_close(
        own_database: str, exchange: FakeExchange, tmp_path: Path) -> None:
    source = VenueSource(kind="exchange", symbols=["BTC/USDT", "ETH/USDT", "SOL/USDT"], timeframe="1m",
                         url=exchange.url)
    end = datetime.fromtimestamp((START_MS + 2_500 * MINUTE_MS) / 1000, UTC)  # the last 100 BTC bars are after it

    with pytest.raises(VenueFetchFailed):  # a symbol the exchange does not list: said, nothing imported
        await import_from_venue(own_database, source, START, end, "binance", tmp_path, threads=2)
    source = VenueSource(kind="exchange", symbols=["BTC/USDT", "ETH/USDT"], timeframe="1m", url=exchange.url)
    files, report = await import_from_venue(own_database, source, START, end, "binance", tmp_path, threads=2)
    again_files, again = await import_from_venue(own_database, source, START, end, "binance", tmp_path, threads=2)
    rows = await _bars(own_database, "binance")

    assert report.imported == 2_500 + 60 and report.rejected == 0 and len(files) == 2
    assert again_files == files and again.imported == 0 and again.chunks_skipped == 2  # the same bytes: skipped
    btc = [r for r in rows if r["symbol"] == "BTC/USDT"]
    assert len(btc) == 2_500 and btc[0]["close"] == 60_000.0 and btc[-1]["close"] == 62_499.0
    # stamped at the close: the bar that opened at 00:00 is 00:01's, as the collector's live feed has it
    assert btc[0]["ts"] == datetime.fromtimestamp((START_MS + MINUTE_MS) / 1000, UTC)
    assert all(b["ts"] < c["ts"] for b, c in itertools.pairwise(btc))
    eth = [r["ts"] for r in rows if r["symbol"] == "ETH/USDT"]
    assert len(eth) == 60 and eth[40] == datetime.fromtimestamp((START_MS + 101 * MINUTE_MS) / 1000, UTC)


async def test_import_when_alpaca_then_its_market_data_api_through_alpaca_py(
        own_database: str, tmp_path: Path) -> None:
    fake = FakeAlpaca()
    fake.add_bars("AAPL", START_MS, [190.0 + i for i in range(30)])
    fake.add_bars("MSFT", START_MS + MINUTE_MS, [410.0, 411.0, 412.0])
    await fake.start()
    try:
        source = VenueSource(kind="alpaca", symbols=["AAPL", "MSFT"], url=fake.url, api_key=fake.key,
                             secret_key=fake.secret)
        end = datetime.fromtimestamp((START_MS + 60 * MINUTE_MS) / 1000, UTC)
        _, report = await import_from_venue(own_database, source, START, end, "alpaca", tmp_path)
        wrong = VenueSource(kind="alpaca", symbols=["AAPL"], url=fake.url, api_key=fake.key, secret_key="wrong")
        with pytest.raises(VenueFetchFailed):
            await import_from_venue(own_database, wrong, START, end, "alpaca", tmp_path)
    finally:
        await fake.stop()
    rows = await _bars(own_database, "alpaca")

    assert report.imported == 33 and [r["symbol"] for r in rows].count("MSFT") == 3
    msft = [r for r in rows if r["symbol"] == "MSFT"]
    assert msft[0]["ts"] == datetime.fromtimestamp((START_MS + 2 * MINUTE_MS) / 1000, UTC)
    assert msft[1]["open"] == 410.0 and msft[1]["close"] == 411.0


async def test_import_command_when_a_venue_source_then_fetched_imported_and_misuse_said(
        own_database: str, exchange: FakeExchange, nats_credentials, tmp_path: Path) -> None:
    async def qmp(*arguments: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from qmp_ops.cli.main import main; main()", "--nats-url", nats_credentials.url,
            "--database-url", own_database, "import", *arguments, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    venue = ["--source", "exchange:binance", "--symbols", "BTC/USDT,ETH/USDT", "--timeframe", "1m",
             "--venue-url", exchange.url, "--start", START.isoformat(), "--end", "2026-01-01T00:30:00"]
    code, out = await qmp(*venue)
    no_id = await qmp("--source", "exchange", "--symbols", "BTC/USDT", "--start", "2026-01-01")
    no_start = await qmp("--source", "alpaca", "--symbols", "AAPL")
    no_key = await qmp("--source", "alpaca", "--symbols", "AAPL", "--start", "2026-01-01")

    assert code == 0, out
    assert "fetched 2 of 2 symbols from exchange" in out and "60 bars new under venue binance" in out, out
    assert len(list((tmp_path / ".qmp" / "imports" / "binance").glob("*.csv.gz"))) == 2
    assert no_id[0] == 2 and "exchange:<ccxt id>" in no_id[1]
    assert no_start[0] == 2 and "needs --start" in no_start[1]
    assert no_key[0] == 1 and "QMP_ALPACA_SECRETS_FILE" in no_key[1]
