"""A venue's bars as a live feed: the real ccxt library against a fake of Binance's Spot API, and the real
alpaca-py market-data client against a fake of Alpaca's."""

from collections.abc import AsyncIterator

import pytest

from qmp_collector.app import CollectorSettings, build_source, check_settings
from qmp_collector.venue_sources import VenueBars
from qmp_core.clock import LiveClock, TestClock
from qmp_core.messages import BarBatch
from qmp_venues.bars import CcxtBars
from qmp_venues.ccxt_exchange import make_exchange
from qmp_venues.credentials import CredentialsError
from qmp_venues.fake_alpaca import FakeAlpaca
from qmp_venues.fake_exchange import FakeExchange

MINUTE_MS = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC


@pytest.fixture
async def venue() -> AsyncIterator[FakeExchange]:
    fake = FakeExchange()
    fake.add_bars("BTCUSDT", START_MS, [60_000.0 + i for i in range(10)])
    fake.add_bars("ETHUSDT", START_MS, [3_000.0, 3_001.0, 3_002.0])
    fake.add_bars("ETHUSDT", START_MS + 4 * MINUTE_MS, [3_004.0 + i for i in range(6)])  # no bar at minute 3
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


class Polls:
    """The feed's sleep: each wait is a poll interval of market time; the test says what happens in it."""

    def __init__(self, clock: TestClock, plan: list[object]) -> None:
        self.clock, self.plan = clock, plan

    async def __call__(self, seconds: float) -> None:
        self.clock.advance(int(seconds * 1e9))
        if not self.plan:
            raise StopAsyncIteration
        step = self.plan.pop(0)
        if callable(step):
            step()


async def collect(feed: VenueBars) -> list[BarBatch]:
    got = []
    try:
        async for batch in feed:
            got.append(batch)
    except RuntimeError as error:  # StopAsyncIteration raised inside the generator ends it
        assert isinstance(error.__cause__, StopAsyncIteration)
    return got


def feed_for(fake: FakeExchange, clock: TestClock, plan: list[object], backfill: int = 20) -> VenueBars:
    fetcher = CcxtBars(make_exchange("binance", url=fake.url), ["BTC/USDT", "ETH/USDT"], "1m")
    return VenueBars(fetcher, ["BTC/USDT", "ETH/USDT"], "binance", clock, Polls(clock, plan), backfill_bars=backfill,
                     poll_s=60.0)


async def test_feed_when_backfilling_then_a_batch_per_closed_bar_stamped_at_its_close_with_no_stale_bars(
        venue: FakeExchange) -> None:
    clock = TestClock((START_MS + 9 * MINUTE_MS + 30_000) * 1_000_000)  # minute 9 is still forming

    batches = await collect(feed_for(venue, clock, []))

    assert [b.ts_event // 1_000_000 for b in batches] == [START_MS + (i + 1) * MINUTE_MS for i in range(9)]
    assert [b.seq for b in batches] == list(range(1, 10))
    assert batches[3].symbols == ["BTC/USDT"]  # ETH had no bar that minute: left out, not repeated
    assert batches[4].symbols == ["BTC/USDT", "ETH/USDT"] and batches[4].close == [60_004.0, 3_004.0]
    assert batches[1].open == [60_000.0, 3_000.0] and batches[1].high == [60_001.0, 3_001.0]
    assert all(b.venue == "binance" and b.volume == [10.0] * len(b.symbols) for b in batches)


async def test_feed_when_live_then_each_new_bar_once_and_an_unanswered_poll_loses_nothing(
        venue: FakeExchange) -> None:
    clock = TestClock((START_MS + 10 * MINUTE_MS + 1_000) * 1_000_000)  # all ten bars closed

    def next_bar() -> None:
        venue.add_bars("BTCUSDT", START_MS + 10 * MINUTE_MS, [61_000.0])
        venue.behaviour.rate_limited = 2  # the next poll is refused (429 to both symbols), the one after answers

    feed = feed_for(venue, clock, [next_bar, lambda: None], backfill=10)
    batches = await collect(feed)

    assert len(batches) == 11 and batches[-1].symbols == ["BTC/USDT"] and batches[-1].close == [61_000.0]
    assert len({b.ts_event for b in batches}) == 11 and feed.failures == 1


async def test_alpaca_feed_when_backfilling_then_the_same_batches_from_its_market_data_api() -> None:
    fake = FakeAlpaca()
    fake.add_bars("AAPL", START_MS, [190.0 + i for i in range(5)])
    fake.add_bars("MSFT", START_MS + MINUTE_MS, [410.0, 411.0, 412.0, 413.0])
    await fake.start()
    clock = TestClock((START_MS + 5 * MINUTE_MS + 5_000) * 1_000_000)
    try:
        settings = CollectorSettings(source="alpaca", clock="live", venue_symbols=["AAPL", "MSFT"],
                                     alpaca_api_key=fake.key, alpaca_secret_key=fake.secret, alpaca_data_url=fake.url,
                                     venue_backfill_bars=10, venue_poll_s=60.0)
        feed = build_source(settings, clock, Polls(clock, []))  # type: ignore[arg-type]
        assert isinstance(feed, VenueBars)
        batches = await collect(feed)
    finally:
        await fake.stop()

    assert [b.ts_event // 1_000_000 for b in batches] == [START_MS + (i + 1) * MINUTE_MS for i in range(5)]
    assert [b.symbols for b in batches] == [["AAPL"]] + [["AAPL", "MSFT"]] * 4
    assert batches[1].close == [191.0, 410.0] and batches[-1].venue == "alpaca"


async def test_check_settings_when_a_venue_source_misses_symbols_or_live_clock_then_says_which() -> None:
    with pytest.raises(ValueError, match="QMP_VENUE_SYMBOLS"):
        check_settings(CollectorSettings(source="exchange", clock="live"))
    with pytest.raises(ValueError, match="QMP_CLOCK=live"):
        check_settings(CollectorSettings(source="alpaca", venue_symbols=["AAPL"]))
    settings = CollectorSettings(source="exchange", clock="live", venue_symbols=["BTC/USDT"])
    check_settings(settings)
    source = build_source(settings, LiveClock(), lambda s: None)  # type: ignore[arg-type,return-value]
    assert isinstance(source, VenueBars) and source.venue == "binance" == settings.venue_id
    await source.fetcher.close()
    with pytest.raises(CredentialsError, match="QMP_ALPACA_SECRETS_FILE"):
        build_source(CollectorSettings(source="alpaca", clock="live", venue_symbols=["AAPL"]), LiveClock(),
                     lambda s: None)  # type: ignore[arg-type,return-value]
