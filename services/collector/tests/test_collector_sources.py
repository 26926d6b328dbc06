"""Sources: bundled history, synthetic generator, files, the synthetic live adapter."""

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qmp_collector.sources import (
    DAILY_NOTIONAL_USD,
    FileSource,
    HistorySource,
    SyntheticLiveAdapter,
    SyntheticParams,
    SyntheticSource,
)
from qmp_core.bar_files import CLOSE_HOUR_UTC
from qmp_core.clock import NS_PER_SECOND, TestClock
from qmp_core.datasets import load_sp500_index, load_sp500_prices, sp500_symbols
from qmp_core.messages import BarBatch
from qmp_core.validation import validate_batch

START_NS = int(pd.Timestamp("2024-01-02", tz="UTC").value)


def columns(batches: list[BarBatch], name: str) -> np.ndarray:
    return np.array([getattr(b, name) for b in batches], dtype=np.float64)


def excess_kurtosis(x: np.ndarray) -> np.ndarray:
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    return (z**4).mean(axis=0) - 3.0


# ---------------------------------------------------------------- datasets
def test_load_prices_when_range_and_symbols_given_then_float_frame_within_range() -> None:
    frame = load_sp500_prices("2008-09-01", "2008-09-30", ["AAPL", "JPM"])
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert list(frame.columns) == ["AAPL", "JPM"]
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert frame.index.min() >= pd.Timestamp("2008-09-01")
    assert frame.index.max() <= pd.Timestamp("2008-09-30")
    assert 15 <= len(frame) <= 22


def test_load_prices_when_unknown_symbol_then_value_error_names_it() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        load_sp500_prices(symbols=["AAPL", "NOPE"])


def test_load_index_when_march_2020_then_worst_day_is_a_crash() -> None:
    index = load_sp500_index("2020-03-01", "2020-03-31")
    assert list(index.columns) == ["SP500"]
    assert index["SP500"].pct_change().min() < -0.10


def test_load_prices_when_cached_frame_mutated_by_caller_then_next_load_unchanged() -> None:
    first = load_sp500_prices("2010-01-04", "2010-01-04")
    first.iloc[0, 0] = -1.0
    assert load_sp500_prices("2010-01-04", "2010-01-04").iloc[0, 0] > 0


# ---------------------------------------------------------------- history
def test_iterate_history_when_range_given_then_one_batch_per_trading_day_at_close() -> None:
    prices = load_sp500_prices("2008-09-01", "2008-10-31")
    batches = list(HistorySource("2008-09-01", "2008-10-31"))
    assert len(batches) == len(prices)
    assert [b.seq for b in batches] == list(range(1, len(prices) + 1))
    stamps = pd.to_datetime([b.ts_event for b in batches], unit="ns", utc=True)
    assert list(stamps.normalize().tz_localize(None)) == list(prices.index)
    assert set(stamps.hour) == {CLOSE_HOUR_UTC}
    assert all(b.symbols == sp500_symbols() for b in batches)
    np.testing.assert_array_equal(columns(batches, "close"), prices.to_numpy())
    for name in ("open", "high", "low"):
        np.testing.assert_array_equal(columns(batches, name), columns(batches, "close"))
    np.testing.assert_allclose(columns(batches, "volume") * columns(batches, "close"), DAILY_NOTIONAL_USD)


def test_iterate_history_when_symbols_given_then_only_those_columns() -> None:
    batches = list(HistorySource("2020-03-02", "2020-03-06", symbols=["MSFT", "KO"], venue="us"))
    assert len(batches) == 5
    assert all(b.symbols == ["MSFT", "KO"] and b.venue == "us" for b in batches)


def test_create_history_when_range_has_no_data_then_value_error() -> None:
    with pytest.raises(ValueError, match="no bundled"):
        HistorySource("2030-01-01", "2030-12-31")


def test_create_history_when_venue_not_a_token_then_value_error() -> None:
    with pytest.raises(ValueError, match="venue"):
        HistorySource("2008-01-01", "2008-01-31", venue="us.equities")


# ---------------------------------------------------------------- synthetic
def test_generate_synthetic_when_iterated_then_shapes_times_and_seq_consistent() -> None:
    source = SyntheticSource(37, seed=1, start_ns=START_NS, bar_seconds=30)
    batches = [next(source) for _ in range(10)]
    assert [b.seq for b in batches] == list(range(1, 11))
    assert [b.ts_event for b in batches] == [START_NS + i * 30 * NS_PER_SECOND for i in range(10)]
    for b in batches:
        assert b.venue == "synth"
        assert len(set(b.symbols)) == 37
        assert {len(b.open), len(b.high), len(b.low), len(b.close), len(b.volume)} == {37}


def test_generate_synthetic_when_same_seed_then_identical_batches() -> None:
    a = SyntheticSource(20, seed=42, start_ns=START_NS)
    b = SyntheticSource(20, seed=42, start_ns=START_NS)
    c = SyntheticSource(20, seed=43, start_ns=START_NS)
    first = [next(a) for _ in range(50)]
    assert first == [next(b) for _ in range(50)]
    assert [x.close for x in first] != [next(c).close for _ in range(50)]


def test_generate_synthetic_when_many_bars_then_ohlcv_consistent_and_valid() -> None:
    source = SyntheticSource(50, seed=3, start_ns=START_NS)
    batches = [next(source) for _ in range(2_000)]
    o, h, lo, c, v = (columns(batches, name) for name in ("open", "high", "low", "close", "volume"))
    assert (h >= np.maximum(o, c)).all()
    assert (lo <= np.minimum(o, c)).all()
    assert (lo > 0).all() and (v > 0).all()
    np.testing.assert_array_equal(o[1:], c[:-1])
    assert all(not validate_batch(b).rejected for b in batches)


def test_generate_synthetic_when_many_bars_then_returns_fat_tailed() -> None:
    source = SyntheticSource(40, seed=11, start_ns=START_NS)
    close = columns([next(source) for _ in range(5_000)], "close")
    kurtosis = excess_kurtosis(np.diff(np.log(close), axis=0))
    assert np.median(kurtosis) > 3.0
    assert (kurtosis > 1.0).all()


def test_generate_synthetic_when_jumps_off_then_garch_t_alone_gives_fat_tails() -> None:
    source = SyntheticSource(40, seed=12, start_ns=START_NS, params=SyntheticParams(jumps_per_day=0.0))
    close = columns([next(source) for _ in range(5_000)], "close")
    assert np.median(excess_kurtosis(np.diff(np.log(close), axis=0))) > 1.0


def test_generate_synthetic_when_daily_bars_then_volatility_in_configured_range() -> None:
    params = SyntheticParams(jumps_per_day=0.0, daily_vol_low=0.01, daily_vol_high=0.03)
    source = SyntheticSource(30, seed=5, start_ns=START_NS, bar_seconds=86_400, params=params)
    close = columns([next(source) for _ in range(3_000)], "close")
    vol = np.diff(np.log(close), axis=0).std(axis=0)
    assert 0.007 < np.median(vol) < 0.035


def test_generate_synthetic_when_1000_symbols_then_a_bar_costs_under_two_ms() -> None:
    source = SyntheticSource(1_000, seed=9, start_ns=START_NS)
    next(source)
    started = time.perf_counter()
    for _ in range(200):
        next(source)
    per_bar = (time.perf_counter() - started) / 200
    assert per_bar < 0.002, f"{per_bar * 1e3:.2f} ms per 1,000-symbol bar"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"n_symbols": 0}, "n_symbols"), ({"bar_seconds": 0.0}, "bar_seconds"), ({"start_ns": 0}, "start_ns"),
    ({"params": SyntheticParams(alpha=0.2, beta=0.85)}, "alpha"),
])
def test_create_synthetic_when_parameters_invalid_then_value_error(kwargs: dict[str, object], match: str) -> None:
    values: dict[str, object] = {"n_symbols": 5, "seed": 1, "start_ns": START_NS, **kwargs}
    with pytest.raises(ValueError, match=match):
        SyntheticSource(**values)  # type: ignore[arg-type]


async def test_iterate_live_adapter_when_clock_advances_then_batches_stamped_by_clock() -> None:
    clock = TestClock(START_NS)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(int(seconds * NS_PER_SECOND) + 7)

    adapter = SyntheticLiveAdapter(SyntheticSource(3, 1, START_NS, bar_seconds=5), clock, fake_sleep)
    stamps = []
    async for batch in adapter:
        stamps.append(batch.ts_event)
        if len(stamps) == 3:
            break
    assert slept == [5, 5, 5]
    assert stamps == [START_NS + k * (5 * NS_PER_SECOND + 7) for k in (1, 2, 3)]


# ---------------------------------------------------------------- files
def test_read_file_when_wide_csv_of_bundled_data_then_same_batches_as_history(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    load_sp500_prices("2008-10-01", "2008-10-15", ["AAPL", "XOM"]).to_csv(path)
    from_file = list(FileSource(path, "sp500"))
    from_history = list(HistorySource("2008-10-01", "2008-10-15", ["AAPL", "XOM"]))
    assert from_file == from_history


def test_read_file_when_wide_csv_has_gaps_then_missing_cells_left_out(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("Date,A,B\n2021-01-04,10.0,\n2021-01-05,10.5,20.0\n")
    batches = list(FileSource(path, "f"))
    assert [b.symbols for b in batches] == [["A"], ["A", "B"]]


def test_read_file_when_long_csv_then_grouped_by_ts_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(
        "TS,Symbol,Open,High,Low,Close,Volume\n"
        "2000,A,1,2,0.5,1.5,10\n"
        "1000,A,1,1,1,1,5\n"
        "2000,B,3,4,2,3.5,20\n"
        "1000,B,2,2,2,2,6\n"
    )
    batches = list(FileSource(path, "lf"))
    assert [b.ts_event for b in batches] == [2000, 1000]
    assert batches[0].symbols == ["A", "B"]
    assert batches[0].high == [2.0, 4.0] and batches[0].volume == [10.0, 20.0]
    assert [b.seq for b in batches] == [1, 2]


def test_read_file_when_long_csv_has_datetimes_then_naive_times_taken_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "long_dt.csv"
    path.write_text("ts,symbol,open,high,low,close,volume\n2021-06-01 14:30:00,A,1,1,1,1,1\n")
    (batch,) = list(FileSource(path, "lf"))
    assert batch.ts_event == pd.Timestamp("2021-06-01 14:30:00", tz="UTC").value


@pytest.mark.parametrize(("content", "match"), [
    ("", "cannot parse"),
    ("Date,A\n", "at least one data row"),
    ("Date,A\nnot-a-date,1.0\n", "dates or times"),
    ("Date,A\n2021-01-04,abc\n", "numeric"),
    ("ts,symbol,close\n1,A,1.0\n", "missing"),
    ("ts,symbol,open,high,low,close,volume\n1,A,1,1,1,x,1\n", "numeric"),
])
def test_read_file_when_malformed_then_value_error_says_what_is_wrong(
    tmp_path: Path, content: str, match: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        FileSource(path, "bad")


def test_read_file_when_path_missing_then_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        FileSource(tmp_path / "absent.csv", "x")
