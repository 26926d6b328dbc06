"""Engine: validation in arrival order per (venue, chunk), rejections with reasons, chunking."""

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qmp_collector.engine import CollectorEngine, InputBounds, ResumePoint, chunk
from qmp_collector.sources import SyntheticSource
from qmp_core.clock import TestClock
from qmp_core.messages import BarBatch
from qmp_core.validation import merge_chunks, validate_batch

T0 = 1_700_000_000_000_000_000
STEP = 60_000_000_000


def bar_batch(ts: int = T0, venue: str = "v", n: int = 4, **columns: list[float]) -> BarBatch:
    """A valid batch of n symbols; `columns` overrides whole columns."""
    values: dict[str, list[float]] = {
        "open": [10.0 + i for i in range(n)], "high": [11.0 + i for i in range(n)],
        "low": [9.0 + i for i in range(n)], "close": [10.5 + i for i in range(n)],
        "volume": [100.0] * n,
    }
    values.update(columns)
    return BarBatch(venue=venue, ts_event=ts, symbols=[f"S{i}" for i in range(n)], **values)


WALL = T0 + 365 * 86_400 * 10**9  # the wall clock: a year after the batches' time


def engine(now: int = 123, **bounds: float) -> CollectorEngine:
    return CollectorEngine(TestClock(now), TestClock(WALL), InputBounds(**bounds))


# ---------------------------------------------------------------- bounds
def test_process_when_batch_from_the_future_then_rejected_whole_and_time_not_moved() -> None:
    eng = engine(future_tolerance_s=60.0)
    future = eng.process(bar_batch(ts=WALL + 61 * 10**9))
    assert future.batch is None and "from the future" in future.batch_reason
    # the next honest batch is judged against the last accepted time, not the future one
    assert eng.process(bar_batch(ts=WALL - STEP)).batch is not None


def test_process_when_int64_max_timestamp_then_rejected_whole() -> None:
    outcome = engine().process(bar_batch(ts=2**63 - 1))
    assert "from the future" in outcome.batch_reason


def test_process_when_after_the_replay_window_then_rejected_whole() -> None:
    eng = engine(window_end_ns=T0)
    assert eng.process(bar_batch(ts=T0)).batch is not None
    assert "after the latest allowed" in eng.process(bar_batch(ts=T0 + STEP)).batch_reason


def test_process_when_every_row_rejected_then_time_not_moved() -> None:
    eng = engine()
    eng.process(bar_batch(ts=T0))
    assert eng.process(bar_batch(ts=T0 + 10 * STEP, n=1, close=[1e308], high=[1e308])).batch is None
    assert eng.process(bar_batch(ts=T0 + STEP)).batch is not None  # not "out of order" behind the bad one


def test_process_when_batch_empty_then_rejected_whole_with_reason() -> None:
    outcome = engine().process(bar_batch(n=0))
    assert outcome.batch is None and outcome.batch_reason == "empty batch: no symbols"


def test_process_when_close_jumps_beyond_bound_then_row_held_and_others_published() -> None:
    eng = engine(max_price_jump=5.0)
    eng.process(bar_batch())
    jumped = bar_batch(ts=T0 + STEP, close=[10.5, 1e6, 12.5, 13.5], high=[11.0, 1e6, 13.0, 14.0])
    outcome = eng.process(jumped)
    assert outcome.batch is not None and outcome.batch.symbols == ["S0", "S2", "S3"]
    assert [s for s, _ in outcome.rejected] == ["S1"] and "price held" in outcome.rejected[0][1]
    assert eng.held_prices == 1
    # the held price never became the reference: the usual price is accepted on the next bar
    assert eng.process(bar_batch(ts=T0 + 2 * STEP)).rejected == []


def test_process_when_new_level_holds_for_confirm_bars_then_accepted() -> None:
    eng = engine(max_price_jump=5.0, confirm_bars=3)
    eng.process(bar_batch(n=1))
    split = {"open": [100.0], "high": [110.0], "low": [90.0], "close": [105.0]}
    held = [eng.process(bar_batch(ts=T0 + k * STEP, n=1, **split)) for k in (1, 2, 3)]
    assert [o.batch is None for o in held] == [True, True, False]


def _held_row_by_row(paths: list[list[float]], jump: float, confirm: int) -> list[list[str]]:
    """The price-hold rule stated one symbol and one bar at a time: the symbols held at each bar."""
    last: dict[str, float] = {}
    pending: dict[str, tuple[float, int]] = {}
    out = []
    for row in paths:
        held = []
        for j, close in enumerate(row):
            symbol = f"S{j}"
            if symbol not in last or 1 / jump <= close / last[symbol] <= jump:
                last[symbol] = close
                pending.pop(symbol, None)
                continue
            level = pending.get(symbol)
            count = level[1] + 1 if level is not None and 1 / jump <= close / level[0] <= jump else 1
            if count >= confirm:
                last[symbol] = close
                del pending[symbol]
                continue
            pending[symbol] = (close, count)
            held.append(symbol)
        out.append(held)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([1.0, 1.5, 4.0, 9.0, 30.0, 200.0]), min_size=5, max_size=5),
                min_size=1, max_size=12))
def test_process_when_prices_jump_and_settle_then_held_rows_follow_the_rule(paths: list[list[float]]) -> None:
    eng = engine(max_price_jump=5.0, confirm_bars=3)
    held = []
    for k, row in enumerate(paths):
        outcome = eng.process(bar_batch(ts=T0 + k * STEP, n=5, open=row, high=row, low=row, close=row))
        held.append([s for s, why in outcome.rejected if why.startswith("price held")])
    assert held == _held_row_by_row(paths, 5.0, 3)


def test_process_when_jump_bound_is_zero_then_nothing_held() -> None:
    eng = engine(max_price_jump=0.0)
    eng.process(bar_batch(n=1))
    assert eng.process(bar_batch(ts=T0 + STEP, n=1, open=[1e5], high=[1e5], low=[1e5], close=[1e5])).batch


# ---------------------------------------------------------------- rows
def test_process_when_all_rows_valid_then_batch_passes_whole_with_ts_init() -> None:
    batch = bar_batch()
    outcome = engine(now=555).process(batch)
    assert outcome.rejected == []
    assert outcome.batch == msgspec.structs.replace(batch, ts_init=555)


@pytest.mark.parametrize(("column", "bad", "reason"), [
    ("close", math.nan, "non-finite"),
    ("open", math.inf, "non-finite"),
    ("low", 0.0, "price below"),
    ("close", -1.0, "price below"),
    ("low", 5e-324, "price below"),
    ("high", 1e308, "price above"),
    ("volume", -5.0, "volume negative"),
    ("volume", math.nan, "volume negative, non-finite"),
    ("volume", 1e16, "above 1e15"),
])
def test_process_when_one_row_bad_then_only_that_row_rejected_with_reason(
    column: str, bad: float, reason: str
) -> None:
    batch = bar_batch()
    values = list(getattr(batch, column))
    values[2] = bad
    outcome = engine().process(msgspec.structs.replace(batch, **{column: values}))
    assert [symbol for symbol, _ in outcome.rejected] == ["S2"]
    assert reason in outcome.rejected[0][1]
    assert outcome.batch is not None
    assert outcome.batch.symbols == ["S0", "S1", "S3"]
    assert outcome.batch.close == [batch.close[i] for i in (0, 1, 3)]
    assert outcome.batch.volume == [batch.volume[i] for i in (0, 1, 3)]


def test_process_when_high_below_low_then_row_rejected_as_high_below_low() -> None:
    batch = bar_batch(n=2, open=[5.0, 5.0], high=[4.0, 6.0], low=[6.0, 4.0], close=[5.0, 5.0])
    outcome = engine().process(batch)
    assert outcome.rejected[0][0] == "S0"
    assert "high below low" in outcome.rejected[0][1]
    assert outcome.batch is not None and outcome.batch.symbols == ["S1"]


def test_process_when_every_row_bad_then_no_batch_and_timestamp_not_consumed() -> None:
    eng = engine()
    outcome = eng.process(bar_batch(n=2, close=[math.nan, -1.0]))
    assert outcome.batch is None
    assert len(outcome.rejected) == 2 and not outcome.whole_batch_rejected
    assert eng.last_ts("v") is None
    assert eng.process(bar_batch(ts=T0)).batch is not None  # a corrected batch of that time is taken


def test_process_when_rows_rejected_then_counters_add_up() -> None:
    eng = engine()
    eng.process(bar_batch(ts=T0, n=3, close=[math.nan, 10.5, 11.5]))
    eng.process(bar_batch(ts=T0))
    assert (eng.accepted_batches, eng.rejected_batches, eng.rejected_rows) == (1, 1, 1 + 4)


# ---------------------------------------------------------------- order
def test_process_when_timestamp_goes_back_then_whole_batch_rejected_out_of_order() -> None:
    eng = engine()
    assert eng.process(bar_batch(ts=T0 + STEP)).batch is not None
    outcome = eng.process(bar_batch(ts=T0))
    assert outcome.batch is None
    assert outcome.whole_batch_rejected and "out-of-order" in outcome.batch_reason
    assert [s for s, _ in outcome.rejected] == ["S0", "S1", "S2", "S3"]
    assert eng.last_ts("v") == T0 + STEP


def test_process_when_timestamp_repeats_then_whole_batch_rejected_duplicate() -> None:
    eng = engine()
    eng.process(bar_batch(ts=T0))
    outcome = eng.process(bar_batch(ts=T0))
    assert outcome.batch is None and "duplicate" in outcome.batch_reason


def test_process_when_venues_differ_then_timestamps_tracked_separately() -> None:
    eng = engine()
    assert eng.process(bar_batch(ts=T0 + STEP, venue="a")).batch is not None
    assert eng.process(bar_batch(ts=T0, venue="b")).batch is not None


def test_process_when_chunks_share_timestamp_then_each_chunk_accepted_once() -> None:
    eng = engine()
    parts = chunk(bar_batch(n=10), 4)
    assert all(eng.process(part).batch is not None for part in parts)
    assert all(eng.process(part).whole_batch_rejected for part in parts)
    later = chunk(bar_batch(ts=T0 + STEP, n=10), 4)
    assert all(eng.process(part).batch is not None for part in later)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"venue": "bad.venue"}, "venue"),
    ({"chunk": 2, "chunks": 2}, "chunk"),
    ({"ts_event": 0}, "positive"),
    ({"close": [1.0]}, "column lengths"),
])
def test_process_when_envelope_invalid_then_whole_batch_rejected_with_reason(
    changes: dict[str, object], reason: str
) -> None:
    outcome = engine().process(msgspec.structs.replace(bar_batch(), **changes))
    assert outcome.batch is None
    assert reason in outcome.batch_reason


def test_seed_when_resuming_mid_timestamp_then_older_rejected_and_later_chunks_accepted() -> None:
    eng = engine()
    eng.seed("v", ResumePoint(T0, chunk=0, chunks=3))
    parts = chunk(bar_batch(ts=T0, n=9), 3)
    assert eng.process(parts[0]).whole_batch_rejected
    assert eng.process(parts[1]).batch is not None
    assert eng.process(parts[2]).batch is not None
    assert eng.process(bar_batch(ts=T0 - STEP)).whole_batch_rejected


def test_covers_when_compared_with_resume_point_then_earlier_and_same_chunks_covered() -> None:
    point = ResumePoint(T0, chunk=1, chunks=3)
    parts = chunk(bar_batch(ts=T0, n=9), 3)
    assert [point.covers(p) for p in parts] == [True, True, False]
    assert point.covers(bar_batch(ts=T0 - 1))
    assert not point.covers(bar_batch(ts=T0 + 1))


def test_clean_when_rows_bad_then_valid_rows_returned_and_state_untouched() -> None:
    eng = engine()
    cleaned = eng.clean(bar_batch(n=3, close=[10.5, math.nan, 12.5]))
    assert cleaned is not None and cleaned.symbols == ["S0", "S2"]
    assert eng.last_ts("v") is None and eng.rejected_rows == 0


# ---------------------------------------------------------------- chunking
def test_chunk_when_merged_back_then_original_batch() -> None:
    batch = next(SyntheticSource(1_003, seed=2, start_ns=T0))
    parts = chunk(batch, 250)
    assert [len(p.symbols) for p in parts] == [250, 250, 250, 250, 3]
    assert [(p.chunk, p.chunks) for p in parts] == [(i, 5) for i in range(5)]
    assert {p.ts_event for p in parts} == {batch.ts_event}
    merged = merge_chunks([validate_batch(p) for p in parts])
    whole = validate_batch(batch)
    assert merged.symbols == whole.symbols
    for column in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(getattr(merged, column), getattr(whole, column))


def test_chunk_when_batch_small_enough_then_returned_unchanged() -> None:
    batch = bar_batch(n=5)
    assert chunk(batch, 5) == [batch]


def test_chunk_when_max_symbols_not_positive_then_value_error() -> None:
    with pytest.raises(ValueError, match="max_symbols"):
        chunk(bar_batch(), 0)


def test_chunk_when_batch_already_a_chunk_then_value_error() -> None:
    part = chunk(bar_batch(n=6), 3)[0]
    with pytest.raises(ValueError, match="already"):
        chunk(part, 2)


def test_merge_chunks_when_timestamps_differ_then_value_error() -> None:
    parts = [validate_batch(bar_batch(n=3, ts=ts)) for ts in (T0, T0 + 1)]
    with pytest.raises(ValueError, match="one timestamp"):
        merge_chunks(parts)
