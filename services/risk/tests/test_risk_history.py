"""PriceHistory: bounded rows, late rows, growth in symbols, contiguous return windows."""

import numpy as np

from qmp_risk.engine.history import INITIAL_COLUMNS, PriceHistory


def test_record_when_more_rows_than_capacity_then_keeps_the_latest_in_order() -> None:
    history = PriceHistory(rows=5)
    for ts in range(1, 24):  # several compactions
        history.record(ts, ["A"], np.array([float(ts)]))
    assert history.timestamps().tolist() == [19, 20, 21, 22, 23]
    returns = history.returns(["A"], through_ts=23, count=10)
    assert returns is not None
    np.testing.assert_allclose(returns[:, 0], [20 / 19 - 1, 21 / 20 - 1, 22 / 21 - 1, 23 / 22 - 1])


def test_record_when_a_late_timestamp_arrives_then_it_is_inserted_in_order() -> None:
    history = PriceHistory(rows=4)
    history.record(10, ["A"], np.array([1.0]))
    history.record(30, ["A"], np.array([3.0]))
    history.record(20, ["B"], np.array([7.0]))
    history.record(20, ["A"], np.array([2.0]))
    assert history.timestamps().tolist() == [10, 20, 30]
    returns = history.returns(["A"], through_ts=30, count=5)
    assert returns is not None
    np.testing.assert_allclose(returns[:, 0], [1.0, 0.5])


def test_record_when_older_than_the_kept_range_then_dropped() -> None:
    history = PriceHistory(rows=3)
    for ts in (10, 20, 30, 40):
        history.record(ts, ["A"], np.array([1.0]))
    assert history.record(5, ["A"], np.array([1.0])) is False
    assert history.timestamps().tolist() == [20, 30, 40]


def test_record_when_late_insert_overflows_then_the_oldest_row_falls_out() -> None:
    history = PriceHistory(rows=3)
    for ts in (10, 20, 40):
        history.record(ts, ["A"], np.array([float(ts)]))
    assert history.record(30, ["A"], np.array([30.0])) is True
    assert history.timestamps().tolist() == [20, 30, 40]


def test_record_when_more_symbols_than_initial_columns_then_grows_and_keeps_values() -> None:
    history = PriceHistory(rows=3)
    symbols = [f"S{i}" for i in range(INITIAL_COLUMNS * 2 + 3)]
    history.record(1, symbols, np.arange(1.0, len(symbols) + 1))
    history.record(2, symbols, 2 * np.arange(1.0, len(symbols) + 1))
    returns = history.returns([symbols[0], symbols[-1]], through_ts=2, count=1)
    assert history.symbols == len(symbols)
    assert returns is not None
    np.testing.assert_allclose(returns, [[1.0, 1.0]])


def test_returns_when_symbol_unknown_then_none_and_when_single_row_then_empty() -> None:
    history = PriceHistory(rows=3)
    history.record(1, ["A"], np.array([1.0]))
    assert history.returns(["B"], through_ts=1, count=2) is None
    empty = history.returns(["A"], through_ts=1, count=2)
    assert empty is not None and empty.shape == (0, 1)
