"""Drawdown kernels against numpy references and hand-checked event-time windows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qmp_core
from qmp_kernels import status
from qmp_kernels.drawdown import (
    drawdown_nb,
    max_drawdown_nb,
    running_max_drawdown_nb,
    trailing_drawdown_nb,
)

HOUR = 3_600_000_000_000
DATA = Path(qmp_core.__file__).parent / "data"


def naive_trailing(ts: np.ndarray, equity: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(equity), np.nan)
    for t in range(len(equity)):
        if not np.isfinite(equity[t]):
            continue
        in_window = (ts >= ts[t] - window) & (np.arange(len(ts)) <= t) & np.isfinite(equity)
        out[t] = 1.0 - equity[t] / equity[in_window].max()
    return out


def test_drawdown_when_sp500_index_then_matches_numpy_running_peak() -> None:
    prices = pd.read_csv(DATA / "sp500_index.csv.gz")["SP500"].to_numpy(np.float64)
    dd, code = drawdown_nb(prices)
    expected = 1.0 - prices / np.maximum.accumulate(prices)
    assert code == status.OK
    np.testing.assert_allclose(dd, expected, rtol=1e-12, atol=1e-15)
    running, _ = running_max_drawdown_nb(prices)
    np.testing.assert_allclose(running, np.maximum.accumulate(expected), rtol=1e-12, atol=1e-15)
    worst, _ = max_drawdown_nb(prices)
    assert worst == pytest.approx(expected.max())
    assert 0.5 < worst < 0.6  # the index fell more than 50% from its 2007 peak


def test_trailing_drawdown_when_irregular_timestamps_then_matches_window_by_window_reference() -> None:
    rng = np.random.default_rng(9)
    n = 500
    ts = np.cumsum(rng.integers(1, 3 * HOUR, n)).astype(np.int64)
    ts[50:53] = ts[50]  # equal timestamps are allowed
    equity = 100.0 * np.cumprod(1.0 + rng.normal(0.0, 0.02, n))
    equity[77] = np.nan
    out, code = trailing_drawdown_nb(ts, equity, 24 * HOUR)
    assert code == status.OK
    np.testing.assert_allclose(out, naive_trailing(ts, equity, 24 * HOUR), rtol=1e-12, atol=1e-15)
    assert np.isnan(out[77])


def test_trailing_drawdown_when_peak_leaves_the_window_then_it_no_longer_counts() -> None:
    ts = np.array([0, 1, 25, 26], dtype=np.int64) * HOUR
    equity = np.array([100.0, 90.0, 85.0, 84.0])
    out, code = trailing_drawdown_nb(ts, equity, 24 * HOUR)
    assert code == status.OK
    # at 25h the 100 peak (0h) is out of the window and 90 (1h) is the peak; ts >= now - window is inclusive
    np.testing.assert_allclose(out, [0.0, 0.10, 1 - 85 / 90, 1 - 84 / 85])
    out_inclusive, _ = trailing_drawdown_nb(ts, equity, 25 * HOUR)
    assert out_inclusive[2] == pytest.approx(0.15)


def test_trailing_drawdown_when_timestamps_unsorted_then_invalid_input_and_nan() -> None:
    out, code = trailing_drawdown_nb(np.array([2, 1], dtype=np.int64), np.array([1.0, 1.0]), 10)
    assert code == status.INVALID_INPUT
    assert np.isnan(out).all()


def test_trailing_drawdown_when_lengths_differ_then_invalid_argument() -> None:
    _, code = trailing_drawdown_nb(np.array([1], dtype=np.int64), np.array([1.0, 1.0]), 10)
    assert code == status.INVALID_ARGUMENT


def test_drawdown_when_peak_not_positive_then_nan_and_invalid_input() -> None:
    dd, code = drawdown_nb(np.array([-5.0, -1.0]))
    assert code == status.INVALID_INPUT
    assert np.isnan(dd).all()


def test_drawdown_when_equity_turns_negative_then_drawdown_exceeds_one() -> None:
    dd, code = drawdown_nb(np.array([100.0, -20.0]))
    assert code == status.OK
    assert dd[1] == pytest.approx(1.2)


def test_max_drawdown_when_empty_then_nan() -> None:
    worst, code = max_drawdown_nb(np.empty(0))
    assert code == status.OK
    assert np.isnan(worst)
