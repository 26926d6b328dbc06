"""Fuzzing the ingest subject: whatever an external feed sends, each message is published or dead-lettered
with a reason, the handler never raises, and a good batch after the noise is still published."""

import asyncio
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_collector_handlers import FakeJetStream, make_collector

from qmp_core import subjects
from qmp_core.messages import BarBatch, encode

VENUE = "fuzz"
T0 = 1_200_000_000 * 10**9  # 2008-01-10, before the wall clock: not "from the future"

prices = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20),
                   st.sampled_from([0.0, -1.0, 1e-9, 1e308, 5e-324, 100.0]))
symbols = st.one_of(st.text(max_size=80), st.sampled_from(["AAPL", "MSFT", "A\x00B", "", " "]))


@st.composite
def batches(draw: st.DrawFn) -> bytes:
    """A BarBatch-shaped message with any values, columns of any lengths, or no shape at all."""
    n = draw(st.integers(0, 6))
    columns = {name: draw(st.lists(prices, min_size=0, max_size=n + 1)) for name in
               ("open", "high", "low", "close", "volume")}
    shaped = {"venue": draw(st.sampled_from([VENUE, "other", ""])),
              "ts_event": draw(st.one_of(st.integers(-1, 2**63 - 1), st.just(T0))),
              "symbols": draw(st.lists(symbols, min_size=n, max_size=n)), **columns}
    if draw(st.booleans()):
        del shaped[draw(st.sampled_from(sorted(shaped)))]
    text = repr(shaped).replace("'", '"').replace("nan", "NaN").replace("inf", "Infinity")
    return draw(st.one_of(st.just(text.encode(errors="surrogatepass")), st.binary(max_size=200),
                          st.just(encode(shaped) if all(not isinstance(v, float) or math.isfinite(v)
                                                        for col in columns.values() for v in col) else b"{}")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(batches(), min_size=1, max_size=8))
def test_ingest_when_anything_arrives_then_each_published_or_dead_lettered_and_a_good_batch_still_goes_through(
        payloads: list[bytes]) -> None:
    async def run() -> tuple[int, int, list[BarBatch]]:
        js = FakeJetStream()
        collector = make_collector(js)
        for seq, payload in enumerate(payloads, start=1):
            before = len(js.calls)
            await collector.on_ingest(subjects.ingest(VENUE), payload, stream_seq=seq)
            assert len(js.calls) > before, f"message {seq} neither published nor dead-lettered: {payload[:200]!r}"
        accepted = [batch.ts_event for batch in js.bars(VENUE)]
        good = BarBatch(venue=VENUE, ts_event=max([T0, *accepted]) + 1, symbols=["GOOD"], open=[10.0], high=[10.0],
                        low=[10.0], close=[10.0], volume=[100.0])
        await collector.on_ingest(subjects.ingest(VENUE), encode(good), stream_seq=len(payloads) + 1)
        letters = js.dead_letters()
        assert all(letter.reason for letter in letters)
        return len(letters), len(js.on(subjects.bars(VENUE))), js.bars(VENUE)

    letters, published, bars = asyncio.run(run())
    assert letters + published >= len(payloads)
    assert bars and bars[-1].symbols == ["GOOD"]  # the pipeline is not frozen by what came before
