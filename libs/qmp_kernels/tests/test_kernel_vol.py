"""Realized volatility kernels against pandas rolling references."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import qmp_core
from qmp_kernels import status
from qmp_kernels.vol import rolling_mean_1d_nb, rolling_std_1d_nb, rolling_std_nb, vol_ratio_1d_nb

DATA = Path(qmp_core.__file__).parent / "data"


def sp500_returns() -> np.ndarray:
    prices = pd.read_csv(DATA / "sp500_index.csv.gz")["SP500"].to_numpy(np.float64)
    return prices[1:] / prices[:-1] - 1.0


@pytest.mark.parametrize(("window", "min_periods", "ddof"), [(2, 2, 1), (20, 20, 1), (20, 10, 0), (63, 63, 1)])
def test_rolling_std_when_random_matrix_with_gaps_then_matches_pandas(window: int, min_periods: int,
                                                                       ddof: int) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0.0003, 0.01, size=(2000, 3)) + 0.05  # an offset stresses the running sums
    x[rng.random(x.shape) < 0.05] = np.nan
    out, code = rolling_std_nb(x, window, ddof, min_periods)
    expected = pd.DataFrame(x).rolling(window, min_periods=min_periods).std(ddof=ddof).to_numpy()
    assert code == status.OK
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-14)


def test_rolling_std_when_sp500_then_matches_pandas() -> None:
    returns = sp500_returns()
    out, code = rolling_std_1d_nb(returns, 20, 1, 20)
    assert code == status.OK
    np.testing.assert_allclose(out, pd.Series(returns).rolling(20).std().to_numpy(), rtol=1e-9)


def test_rolling_std_when_window_constant_after_a_move_then_exactly_zero() -> None:
    x = np.concatenate([np.array([0.013, -0.021, 0.007]), np.zeros(12)])
    out, code = rolling_std_1d_nb(x, 5, 1, 5)
    assert code == status.OK
    assert (out[7:] == 0.0).all()
    assert out[4] > 0.0


def test_rolling_std_when_fewer_observations_than_window_then_nan() -> None:
    out, code = rolling_std_1d_nb(np.array([0.01, 0.02, np.nan, 0.03]), 4, 1, 4)
    assert code == status.OK
    assert np.isnan(out).all()


def test_rolling_std_when_ddof_not_below_min_periods_then_invalid_argument() -> None:
    _, code = rolling_std_1d_nb(np.zeros(5), 3, 3, 3)
    assert code == status.INVALID_ARGUMENT


def test_rolling_mean_when_random_with_gaps_then_matches_pandas() -> None:
    x = np.random.default_rng(1).normal(size=300)
    x[::11] = np.nan
    out, code = rolling_mean_1d_nb(x, 20, 15)
    assert code == status.OK
    np.testing.assert_allclose(out, pd.Series(x).rolling(20, min_periods=15).mean().to_numpy(), rtol=1e-10)


def test_vol_ratio_when_sp500_then_matches_pandas_and_flags_the_2020_crash() -> None:
    frame = pd.read_csv(DATA / "sp500_index.csv.gz", index_col="Date", parse_dates=True)
    returns = frame["SP500"].pct_change().iloc[1:]
    ratio, code = vol_ratio_1d_nb(returns.to_numpy(np.float64), 10, 20)
    vol = returns.rolling(10).std()
    expected = (vol / vol.rolling(20).mean()).to_numpy()
    assert code == status.OK
    np.testing.assert_allclose(ratio, expected, rtol=1e-9)
    crash = pd.Series(ratio, index=returns.index).loc["2020-02-20":"2020-03-20"]
    assert crash.max() > 2.0


def test_vol_ratio_when_flat_series_then_nan_not_infinite() -> None:
    ratio, code = vol_ratio_1d_nb(np.zeros(40), 5, 5)
    assert code == status.OK
    assert np.isnan(ratio).all()


def test_vol_ratio_when_windows_too_small_then_invalid_argument() -> None:
    _, code = vol_ratio_1d_nb(np.zeros(40), 1, 5)
    assert code == status.INVALID_ARGUMENT


def test_vol_ratio_when_a_book_reenters_from_flat_then_no_ratio_until_its_average_has_no_flat_window() -> None:
    # issue 11 #5: after 20 flat days the average was vol / 20, so the ratio read exactly 20 on re-entry and
    # tripped the volatility breaker for no market reason (twice in the demo).
    rng = np.random.default_rng(3)
    returns = np.concatenate([np.zeros(40), rng.normal(0.0, 0.01, 60)])

    ratio, code = vol_ratio_1d_nb(returns, 10, 20)

    assert code == status.OK
    first = 40 + 20 - 1  # vol is positive from the first traded day; 20 positive vols make an average
    assert np.isnan(ratio[:first]).all()
    assert np.isfinite(ratio[first:]).all() and ratio[first:].max() < 3.0
