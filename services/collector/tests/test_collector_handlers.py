"""Handlers against an in-memory JetStream stand-in: publish path, DLQ, resume, pacing, lockstep, settings."""

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from qmp_collector.app import CollectorSettings, build_source, check_settings
from qmp_collector.engine import CollectorEngine
from qmp_collector.handlers import Collector, LockstepGate
from qmp_collector.sources import FileSource, HistorySource, SyntheticLiveAdapter, SyntheticSource
from qmp_core import subjects
from qmp_core.clock import LiveClock, ReplayClock
from qmp_core.config import load_settings
from qmp_core.messages import BarBatch, DeadLetter, RiskSnapshot, codec, encode

DLQ = subjects.dlq("collector")


@dataclass
class Published:
    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def msg_id(self) -> str:
        return self.headers["Nats-Msg-Id"]


@dataclass
class RawMsg:
    data: bytes


class FakeJetStream:
    """Records every publish; drops duplicates by Nats-Msg-Id like the server's dedup window."""

    def __init__(self) -> None:
        self.calls: list[Published] = []
        self.stored: list[Published] = []
        self.on_publish: list[Any] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        message = Published(subject, payload, dict(headers or {}))
        self.calls.append(message)
        if message.msg_id not in {m.msg_id for m in self.stored}:
            self.stored.append(message)
        for hook in self.on_publish:
            hook(message)

    async def get_last_msg(self, stream: str, subject: str) -> RawMsg:
        for message in reversed(self.stored):
            if message.subject == subject:
                return RawMsg(message.data)
        raise NotFoundError

    def on(self, subject: str) -> list[Published]:
        return [m for m in self.stored if m.subject == subject]

    def bars(self, venue: str) -> list[BarBatch]:
        return [codec(BarBatch).decode(m.data) for m in self.on(subjects.bars(venue))]

    def dead_letters(self) -> list[DeadLetter]:
        return [codec(DeadLetter).decode(m.data) for m in self.on(DLQ)]


class SpanRecorder(SpanProcessor):
    """Keeps finished spans while active (a provider's processors cannot be removed)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.active = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.active:
            self.spans.append(span)


def make_collector(js: FakeJetStream, chunk_size: int = 1000, lockstep: LockstepGate | None = None,
                   timeout_s: float = 1.0) -> Collector:
    clock = ReplayClock()
    return Collector(js, CollectorEngine(clock, LiveClock()), clock, None, chunk_size, lockstep, timeout_s)  # type: ignore[arg-type]


def history(days_from: str = "2008-10-01", days_to: str = "2008-10-31") -> HistorySource:
    return HistorySource(days_from, days_to, venue="hist")


# ---------------------------------------------------------------- publish path
async def test_run_source_when_history_then_one_message_per_day_with_stable_ids() -> None:
    js = FakeJetStream()
    collector = make_collector(js)
    source = history()
    await collector.run_source(source)
    batches = js.bars("hist")
    assert len(batches) == len(source)
    assert [m.msg_id for m in js.on(subjects.bars("hist"))] == [f"hist:{b.ts_event}:0" for b in source]
    assert collector.done
    assert collector.detail()["published"] == len(source)
    assert collector.detail()["last_ts"] == batches[-1].ts_event


async def test_publish_when_tracing_on_then_one_span_per_batch_and_context_in_headers() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    recorder = SpanRecorder()
    provider.add_span_processor(recorder)
    js = FakeJetStream()
    try:
        await make_collector(js).run_source(history("2008-10-01", "2008-10-03"))
    finally:
        recorder.active = False
    spans = [s for s in recorder.spans if s.name == "collector.publish_batch"]
    assert len(spans) == 3
    trace_ids = {format(s.context.trace_id, "032x") for s in spans}
    assert {m.headers["traceparent"].split("-")[1] for m in js.calls} == trace_ids


async def test_run_source_when_chunk_size_small_then_chunks_cover_every_symbol() -> None:
    js = FakeJetStream()
    await make_collector(js, chunk_size=7).run_source(history("2008-10-01", "2008-10-03"))
    batches = js.bars("hist")
    assert len(batches) == 3 * 3
    assert {(b.chunk, b.chunks) for b in batches} == {(0, 3), (1, 3), (2, 3)}
    assert sum(len(b.symbols) for b in batches) == 3 * 20


async def test_run_source_when_max_batches_set_then_stops_after_that_many() -> None:
    js = FakeJetStream()
    collector = make_collector(js)
    await collector.run_source(SyntheticSource(5, 1, 10**18), max_batches=12)
    assert len(js.bars("synth")) == 12 and collector.done


async def test_run_source_when_restarted_then_neither_lost_nor_doubled() -> None:
    js = FakeJetStream()
    first = make_collector(js)
    await first.run_source(history(), max_batches=9)
    second = make_collector(js)
    resume = await second.seed("hist")
    assert resume is not None
    await second.run_source(history(), resume=resume)
    expected = [b.ts_event for b in history()]
    assert [b.ts_event for b in js.bars("hist")] == expected
    assert len(js.calls) == len(expected)
    assert second.skipped == 9


async def test_run_source_when_nothing_on_stream_then_no_resume_point() -> None:
    assert await make_collector(FakeJetStream()).seed("empty") is None


async def test_run_source_when_rate_set_then_paced_by_injected_sleep() -> None:
    js = FakeJetStream()
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    await make_collector(js).run_source(SyntheticSource(3, 1, 10**18), max_batches=8, replay_rate=4.0,
                                        sleep=fake_sleep, monotonic=lambda: now[0])
    assert len(slept) == 8
    assert now[0] == pytest.approx(8 / 4.0)


async def test_run_source_when_file_has_bad_rows_then_rows_dead_lettered_with_reasons(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text(
        "ts,symbol,open,high,low,close,volume\n"
        "1000,A,1,2,0.5,1.5,10\n1000,B,1,2,0.5,-1.5,10\n"
        "2000,A,1,2,0.5,1.5,-3\n2000,B,1,2,0.5,1.5,10\n"
        "2000,B,1,2,0.5,1.5,10\n"
    )
    js = FakeJetStream()
    collector = make_collector(js)
    await collector.run_source(FileSource(path, "fv"))
    assert [(b.ts_event, b.symbols) for b in js.bars("fv")] == [(1000, ["A"]), (2000, ["B"])]
    letters = js.dead_letters()
    assert len(letters) == 2
    assert "B: price below 1e-08" in letters[0].reason
    assert "A: volume negative, non-finite or above 1e15" in letters[1].reason
    assert "B: duplicate symbol" in letters[1].reason
    assert all(letter.subject == subjects.bars("fv") for letter in letters)
    assert collector.detail()["rejected"] == 3


async def test_run_source_when_file_repeats_or_reverses_dates_then_batches_dead_lettered(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("Date,A\n2021-01-05,10\n2021-01-05,11\n2021-01-04,12\n2021-01-06,13\n")
    js = FakeJetStream()
    await make_collector(js).run_source(FileSource(path, "fw"))
    assert [b.close for b in js.bars("fw")] == [[10.0], [13.0]]
    reasons = [letter.reason for letter in js.dead_letters()]
    assert len(reasons) == 2
    assert "duplicate timestamp" in reasons[0] and "out-of-order timestamp" in reasons[1]


# ---------------------------------------------------------------- ingest
async def test_on_ingest_when_malformed_then_dead_lettered_and_next_valid_published() -> None:
    js = FakeJetStream()
    collector = make_collector(js)
    subject = subjects.ingest("feed")
    await collector.on_ingest(subject, b'{"venue": "feed", "ts_event": ', stream_seq=1)
    wrong_type = b'{"venue":"feed","ts_event":"soon","symbols":[],"open":[],"high":[],"low":[],"close":[],"volume":[]}'
    await collector.on_ingest(subject, wrong_type, stream_seq=2)
    valid = BarBatch(venue="feed", ts_event=5_000, symbols=["X"], open=[1.0], high=[1.0], low=[1.0],
                     close=[1.0], volume=[1.0])
    await collector.on_ingest(subject, encode(valid), stream_seq=3)
    letters = js.dead_letters()
    assert [letter.subject for letter in letters] == [subject, subject]
    assert letters[0].reason.startswith("invalid BarBatch")
    assert "Expected `int`, got `str`" in letters[1].reason and "ts_event" in letters[1].reason
    assert letters[1].payload == wrong_type.decode()
    assert [b.symbols for b in js.bars("feed")] == [["X"]]


async def test_on_ingest_when_venue_differs_from_subject_then_dead_lettered() -> None:
    js = FakeJetStream()
    batch = BarBatch(venue="other", ts_event=5, symbols=["X"], open=[1.0], high=[1.0], low=[1.0],
                     close=[1.0], volume=[1.0])
    await make_collector(js).on_ingest(subjects.ingest("feed"), encode(batch), stream_seq=1)
    assert js.bars("other") == [] and "does not match" in js.dead_letters()[0].reason


async def test_on_ingest_when_redelivered_then_published_once() -> None:
    js = FakeJetStream()
    batch = BarBatch(venue="feed", ts_event=5, symbols=["X"], open=[1.0], high=[1.0], low=[1.0],
                     close=[1.0], volume=[1.0])
    await make_collector(js).on_ingest(subjects.ingest("feed"), encode(batch), stream_seq=1)
    restarted = make_collector(js)
    await restarted.on_ingest(subjects.ingest("feed"), encode(batch), stream_seq=1)
    assert len(js.bars("feed")) == 1
    assert "duplicate" in js.dead_letters()[0].reason


# ---------------------------------------------------------------- lockstep
async def test_wait_when_snapshot_arrives_later_then_returns_true() -> None:
    gate = LockstepGate("s1")

    async def later() -> None:
        await asyncio.sleep(0.01)
        gate.on_snapshot(encode(snapshot("s1", 99)))

    task = asyncio.create_task(later())
    assert await gate.wait(99, timeout_s=2.0)
    await task


async def test_wait_when_only_other_strategy_or_garbage_then_times_out() -> None:
    gate = LockstepGate("s1")
    gate.on_snapshot(encode(snapshot("s2", 500)))
    gate.on_snapshot(b"not json")
    assert not await gate.wait(100, timeout_s=0.05)
    assert gate.timeouts == 1


async def test_wait_when_subscription_missed_the_snapshot_then_found_on_the_stream() -> None:
    stored: list[bytes] = []
    asked = 0

    async def stream_last() -> bytes | None:  # what the risk stream holds for the strategy
        nonlocal asked
        asked += 1
        return stored[-1] if stored else None

    gate = LockstepGate("s1", stream_last, poll_s=0.01)
    stored.append(encode(snapshot("s1", 50)))
    asyncio.get_running_loop().call_later(0.05, lambda: stored.append(encode(snapshot("s1", 99))))

    assert await gate.wait(99, timeout_s=2.0)  # published while the subscription was reconnecting
    assert asked >= 2 and gate.timeouts == 0 and gate.latest == 99


async def test_wait_when_stream_has_nothing_newer_then_times_out_once() -> None:
    async def nothing() -> bytes | None:
        return None

    gate = LockstepGate("s1", nothing, poll_s=0.01)
    assert not await gate.wait(99, timeout_s=0.1)
    assert gate.timeouts == 1


async def test_wait_when_the_loop_waits_on_a_database_then_the_wait_goes_on_until_the_snapshot() -> None:
    answers = ["execution: bar store", "execution: bar store", ""]  # degraded twice, then the outage is over
    asked = 0

    async def loop_waiting_on() -> str:
        nonlocal asked
        asked += 1
        if asked == 2:  # the database is back during the second extension: the snapshot comes
            asyncio.get_running_loop().call_later(0.02, gate.on_snapshot, encode(snapshot("s1", 99)))
        return answers[asked - 1]

    gate = LockstepGate("s1", dependency_wait=loop_waiting_on)
    assert await gate.wait(99, timeout_s=0.05)  # three timeouts' worth: not sent early
    assert gate.extended == 2 and gate.timeouts == 0


async def test_wait_when_no_service_in_the_loop_is_waiting_on_anything_then_times_out_once() -> None:
    async def nothing_waited_on() -> str:
        return ""  # risk gone or silent: a service that is down costs the timeout, as before

    gate = LockstepGate("s1", dependency_wait=nothing_waited_on)
    assert not await gate.wait(99, timeout_s=0.05)
    assert gate.timeouts == 1 and gate.extended == 0


async def test_run_source_when_lockstep_then_each_batch_waits_for_its_snapshot() -> None:
    js = FakeJetStream()
    gate = LockstepGate("s1")
    order: list[str] = []

    def risk(message: Published) -> None:
        if message.subject == subjects.bars("hist"):
            ts = codec(BarBatch).decode(message.data).ts_event
            order.append(f"bar:{ts}")
            asyncio.get_running_loop().call_later(0.001, lambda: (order.append(f"risk:{ts}"),
                                                                  gate.observe(ts)))

    js.on_publish.append(risk)
    collector = make_collector(js, lockstep=gate, timeout_s=2.0)
    await collector.run_source(history("2008-10-01", "2008-10-07"))
    assert gate.timeouts == 0
    assert order == [f"{kind}:{b.ts_event}" for b in history("2008-10-01", "2008-10-07")
                     for kind in ("bar", "risk")]


async def test_run_source_when_lockstep_and_no_risk_then_each_batch_times_out() -> None:
    gate = LockstepGate("s1")
    await make_collector(FakeJetStream(), lockstep=gate, timeout_s=0.01).run_source(
        history("2008-10-01", "2008-10-03"))
    assert gate.timeouts == 3


def snapshot(strategy: str, ts: int) -> RiskSnapshot:
    return RiskSnapshot(strategy=strategy, ts_event=ts, equity=1.0, var={}, es={}, drawdown_24h=0.0,
                        drawdown_max=0.0, volatility_ratio=1.0, breakers=[])


# ---------------------------------------------------------------- settings
def test_load_settings_when_env_given_then_typed_collector_settings() -> None:
    settings = load_settings(CollectorSettings, {
        "QMP_SOURCE": "history", "QMP_SYMBOLS": "200", "QMP_REPLAY_RATE": "2.5", "QMP_MAX_BATCHES": "3",
        "QMP_LOCKSTEP_STRATEGY": "mom", "QMP_CHUNK_SIZE": "250", "QMP_OTHER_SERVICE_KNOB": "x",
    })
    assert (settings.source, settings.symbols, settings.replay_rate) == ("history", 200, 2.5)
    assert (settings.max_batches, settings.lockstep_strategy, settings.chunk_size) == (3, "mom", 250)
    assert settings.venue_id == "sp500"
    assert (settings.start, settings.end, settings.bar_seconds) == ("2007-01-01", "2009-12-31", 60.0)


@pytest.mark.parametrize("env", [
    {"QMP_SOURCE": "ftp"}, {"QMP_SYMBOLS": "0"}, {"QMP_REPLAY_RATE": "-1"}, {"QMP_CHUNK_SIZE": "many"},
])
def test_load_settings_when_value_invalid_then_value_error(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="CollectorSettings"):
        load_settings(CollectorSettings, env)


@pytest.mark.parametrize(("values", "match"), [
    ({"source": "file"}, "QMP_FILE"), ({"venue": "a.b"}, "QMP_VENUE"),
    ({"lockstep_strategy": "x y"}, "QMP_LOCKSTEP_STRATEGY"), ({"start": "someday"}, "QMP_START"),
])
def test_check_settings_when_inconsistent_then_value_error(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_settings(msgspec.convert(values, CollectorSettings))


def test_build_source_when_synthetic_on_live_clock_then_live_adapter() -> None:
    settings = CollectorSettings(source="synthetic", symbols=3)
    assert isinstance(build_source(settings, LiveClock(), asyncio.sleep), SyntheticLiveAdapter)
    replay = build_source(settings, ReplayClock(), asyncio.sleep)
    assert isinstance(replay, SyntheticSource)
    assert next(iter(replay)).ts_event == 1_167_609_600_000_000_000  # 2007-01-01T00:00Z
