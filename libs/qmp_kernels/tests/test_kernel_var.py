"""VaR / ES kernels against straightforward numpy, pandas and stdlib references."""

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qmp_core
from qmp_kernels import status
from qmp_kernels.var import (
    INTERPOLATION_HIGHER,
    INTERPOLATION_LINEAR,
    INTERPOLATION_LOWER,
    historical_var_es_columns_nb,
    historical_var_es_levels_nb,
    historical_var_es_nb,
    norm_ppf_nb,
    normal_var_es_from_moments_nb,
    normal_var_es_nb,
    rolling_historical_var_es_nb,
    rolling_quantile_nb,
)

DATA = Path(qmp_core.__file__).parent / "data"


def sp500_returns() -> np.ndarray:
    prices = pd.read_csv(DATA / "sp500_index.csv.gz", index_col="Date")["SP500"].to_numpy(np.float64)
    return prices[1:] / prices[:-1] - 1.0


def reference_var_es(x: np.ndarray, alpha: float) -> tuple[float, float]:
    """VaR from numpy's 'lower' quantile; ES as the mean of the observations ranked at or below it."""
    x = x[np.isfinite(x)]
    q = 1.0 - alpha
    var = -np.quantile(x, q, method="lower")
    k = int(np.floor((len(x) - 1) * q))
    return var, -np.sort(x)[: k + 1].mean()


@pytest.mark.parametrize("alpha", [0.9, 0.95, 0.975, 0.99])
def test_historical_var_es_when_random_returns_then_matches_numpy_lower_quantile(alpha: float) -> None:
    rng = np.random.default_rng(7)
    for n in (1, 2, 19, 20, 250, 1001):
        x = rng.standard_t(4, size=n) * 0.01
        var, es, code = historical_var_es_nb(x, alpha)
        expected_var, expected_es = reference_var_es(x, alpha)
        assert code == status.OK
        assert var == pytest.approx(expected_var, rel=1e-12, abs=1e-15)
        assert es == pytest.approx(expected_es, rel=1e-12, abs=1e-15)
        assert es >= var


def test_historical_var_es_when_sp500_index_then_matches_numpy_reference() -> None:
    returns = sp500_returns()
    alphas = np.array([0.95, 0.99])
    var, es, code = historical_var_es_levels_nb(returns, alphas)
    assert code == status.OK
    for j, alpha in enumerate(alphas):
        expected_var, expected_es = reference_var_es(returns, alpha)
        assert var[j] == pytest.approx(expected_var, rel=1e-12)
        assert es[j] == pytest.approx(expected_es, rel=1e-12)
    # The index lost more than 2% on more than 1% of days between 1990 and 2022.
    assert 0.02 < var[1] < es[1]


def test_historical_var_es_when_nans_present_then_they_are_skipped() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 0.01, 300)
    holed = x.copy()
    holed[::7] = np.nan
    var, es, code = historical_var_es_nb(holed, 0.95)
    expected_var, expected_es = reference_var_es(x[np.isfinite(holed)], 0.95)
    assert code == status.OK
    assert (var, es) == pytest.approx((expected_var, expected_es), rel=1e-12)


def test_historical_var_es_when_no_finite_observation_then_nan_and_insufficient_status() -> None:
    var, es, code = historical_var_es_nb(np.array([np.nan, np.inf]), 0.95)
    assert code == status.INSUFFICIENT_DATA
    assert np.isnan(var) and np.isnan(es)
    var, es, code = historical_var_es_nb(np.empty(0), 0.99)
    assert code == status.INSUFFICIENT_DATA


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.5, 1.5, float("nan")])
def test_historical_var_es_when_level_out_of_range_then_invalid_argument(alpha: float) -> None:
    var, _, code = historical_var_es_nb(np.ones(10), alpha)
    assert code == status.INVALID_ARGUMENT
    assert np.isnan(var)


def test_historical_var_es_when_zero_variance_then_var_and_es_equal_minus_the_constant() -> None:
    var, es, code = historical_var_es_nb(np.full(50, -0.01), 0.99)
    assert code == status.OK
    assert var == pytest.approx(0.01) and es == pytest.approx(0.01)


def naive_rolling_var_es(x: np.ndarray, window: int, alpha: float, min_periods: int) -> tuple[
    np.ndarray, np.ndarray
]:
    var = np.full(x.shape, np.nan)
    es = np.full(x.shape, np.nan)
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            sample = x[max(0, t - window + 1): t + 1, j]
            if np.isfinite(sample).sum() >= min_periods:
                var[t, j], es[t, j] = reference_var_es(sample, alpha)
    return var, es


@pytest.mark.parametrize(("window", "min_periods"), [(1, 1), (5, 5), (60, 60), (60, 30)])
def test_rolling_var_es_when_random_matrix_with_gaps_then_matches_window_by_window_reference(
    window: int, min_periods: int
) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_t(3, size=(400, 3)) * 0.01
    x[rng.random(x.shape) < 0.05] = np.nan
    x[100:104, 1] = 0.0  # ties
    var, es, code = rolling_historical_var_es_nb(x, window, 0.95, min_periods)
    expected_var, expected_es = naive_rolling_var_es(x, window, 0.95, min_periods)
    assert code == status.OK
    np.testing.assert_allclose(var, expected_var, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(es, expected_es, rtol=1e-12, atol=1e-15)


def test_rolling_var_es_when_sp500_then_nan_before_full_window_and_matches_reference() -> None:
    returns = sp500_returns()[:1500].reshape(-1, 1)
    window = 250
    var, es, code = rolling_historical_var_es_nb(returns, window, 0.99, window)
    assert code == status.OK
    assert np.isnan(var[: window - 1]).all() and np.isnan(es[: window - 1]).all()
    assert np.isfinite(var[window - 1:]).all()
    expected_var, expected_es = naive_rolling_var_es(returns, window, 0.99, window)
    np.testing.assert_allclose(var, expected_var, rtol=1e-12)
    np.testing.assert_allclose(es, expected_es, rtol=1e-12)


def test_rolling_var_es_when_fewer_rows_than_window_then_all_nan() -> None:
    var, es, code = rolling_historical_var_es_nb(np.full((10, 2), 0.01), 20, 0.95, 20)
    assert code == status.OK
    assert np.isnan(var).all() and np.isnan(es).all()


@pytest.mark.parametrize(("window", "min_periods", "alpha"), [(0, 1, 0.95), (5, 6, 0.95), (5, 0, 0.95),
                                                              (5, 5, 1.0)])
def test_rolling_var_es_when_bad_arguments_then_invalid_argument(window: int, min_periods: int,
                                                                 alpha: float) -> None:
    var, _, code = rolling_historical_var_es_nb(np.zeros((10, 1)), window, alpha, min_periods)
    assert code == status.INVALID_ARGUMENT
    assert np.isnan(var).all()


@pytest.mark.parametrize(
    ("interpolation", "name"),
    [(INTERPOLATION_LINEAR, "linear"), (INTERPOLATION_LOWER, "lower"), (INTERPOLATION_HIGHER, "higher")],
)
def test_rolling_quantile_when_compared_with_pandas_then_equal(interpolation: int, name: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 0.01, size=(600, 4))
    x[rng.random(x.shape) < 0.03] = np.nan
    out, code = rolling_quantile_nb(x, 50, 0.05, 40, interpolation)
    expected = pd.DataFrame(x).rolling(50, min_periods=40).quantile(0.05, interpolation=name).to_numpy()
    assert code == status.OK
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("p", [1e-12, 1e-6, 0.001, 0.01, 0.02425, 0.05, 0.3, 0.5, 0.7, 0.95, 0.975, 0.99,
                               0.999999])
def test_norm_ppf_when_compared_with_stdlib_then_equal_to_machine_precision(p: float) -> None:
    assert norm_ppf_nb(p) == pytest.approx(NormalDist().inv_cdf(p), rel=1e-13, abs=1e-14)


def test_norm_ppf_when_outside_unit_interval_then_nan() -> None:
    assert np.isnan(norm_ppf_nb(0.0)) and np.isnan(norm_ppf_nb(1.0)) and np.isnan(norm_ppf_nb(-1.0))


@pytest.mark.parametrize("alpha", [0.95, 0.99])
def test_normal_var_es_when_random_returns_then_matches_closed_form(alpha: float) -> None:
    x = np.random.default_rng(2).normal(0.0005, 0.012, 500)
    mean, std = x.mean(), x.std(ddof=1)
    dist = NormalDist()
    z = dist.inv_cdf(alpha)
    var, es, code = normal_var_es_nb(x, alpha)
    assert code == status.OK
    assert var == pytest.approx(std * z - mean, rel=1e-12)
    assert es == pytest.approx(std * dist.pdf(z) / (1 - alpha) - mean, rel=1e-12)


def test_normal_var_es_when_sp500_then_es_exceeds_var_and_historical_99_tail_is_fatter() -> None:
    returns = sp500_returns()
    normal_var, normal_es, code = normal_var_es_nb(returns, 0.99)
    _, hist_es, _ = historical_var_es_nb(returns, 0.99)
    assert code == status.OK
    assert normal_es > normal_var > 0
    assert hist_es > normal_es  # fat tails: the normal fit understates the 1% tail


def test_normal_var_es_when_single_observation_then_insufficient_data() -> None:
    var, _, code = normal_var_es_nb(np.array([0.01, np.nan]), 0.95)
    assert code == status.INSUFFICIENT_DATA
    assert np.isnan(var)


def test_normal_var_es_when_zero_variance_then_minus_mean() -> None:
    var, es, code = normal_var_es_from_moments_nb(0.001, 0.0, 0.99)
    assert code == status.OK
    assert var == pytest.approx(-0.001) and es == pytest.approx(-0.001)
    _, _, code = normal_var_es_from_moments_nb(0.0, -1.0, 0.99)
    assert code == status.INVALID_ARGUMENT


@pytest.mark.parametrize("window", [3, 5, 14, 15, 40, 250])
def test_rolling_when_small_windows_gaps_and_infinities_then_equals_a_plain_numpy_window(window: int) -> None:
    """The single-level kernel's shortcut for cells that change nothing, against a sort of every window."""
    from qmp_kernels.var import rolling_historical_var_es

    rng = np.random.default_rng(window)
    x = rng.standard_t(3, size=(600, 7)) * 0.01
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.005] = np.inf
    x[::97, 2] = -0.5  # repeated tail values: ties in the buffer
    alpha, min_periods = 0.95, max(1, window // 2)
    var, es, code = rolling_historical_var_es(x, window, alpha, min_periods=min_periods)
    assert code == status.OK
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            values = np.sort(x[max(0, t - window + 1):t + 1, j][np.isfinite(x[max(0, t - window + 1):t + 1, j])])
            if values.size < min_periods:
                assert np.isnan(var[t, j]) and np.isnan(es[t, j])
                continue
            k = int(np.floor((values.size - 1) * (1 - alpha)))
            assert var[t, j] == -values[k]
            assert es[t, j] == pytest.approx(-values[: k + 1].mean(), rel=1e-12, abs=1e-15)


def test_rolling_when_out_arrays_given_then_written_in_place_and_equal_to_fresh_ones() -> None:
    from qmp_kernels.var import rolling_historical_var_es

    x = np.random.default_rng(3).standard_t(4, size=(400, 9)) * 0.01
    fresh_var, fresh_es, _ = rolling_historical_var_es(x, 250, 0.99)
    out = (np.full(x.shape, 7.0), np.full(x.shape, 7.0))
    var, es, code = rolling_historical_var_es(x, 250, 0.99, out=out)
    assert code == status.OK
    assert np.shares_memory(var, out[0]) and np.shares_memory(es, out[1])
    np.testing.assert_array_equal(out[0], fresh_var)
    np.testing.assert_array_equal(out[1], fresh_es)
    with pytest.raises(ValueError, match="C-contiguous float64"):
        rolling_historical_var_es(x, 250, 0.99, out=(np.empty((400, 9)), np.empty((9, 400)).T))


@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 6), st.floats(0.0, 0.6), st.integers(1, 30))
@settings(max_examples=60, deadline=None)
def test_historical_var_es_columns_when_columns_have_gaps_then_each_equals_the_levels_kernel_on_its_own_rows(
        seed: int, rows: int, columns: int, missing: float, min_count: int) -> None:
    rng = np.random.default_rng(seed)
    scenarios = rng.standard_t(4, (rows, columns)) * 0.01
    scenarios[rng.random((rows, columns)) < missing] = np.nan
    weights = rng.uniform(-2.0, 2.0, columns)
    alphas = np.array([0.99, 0.975, 0.95])

    var, es, codes = historical_var_es_columns_nb(scenarios, weights, alphas, min_count)

    for c in range(columns):
        finite = scenarios[:, c][np.isfinite(scenarios[:, c])]
        if len(finite) < min_count or len(finite) == 0:
            assert codes[c] == status.INSUFFICIENT_DATA and np.isnan(var[c]).all() and np.isnan(es[c]).all()
            continue
        expected_var, expected_es, code = historical_var_es_levels_nb(finite * weights[c], alphas)
        assert codes[c] == code
        np.testing.assert_array_equal(var[c], expected_var)  # the same arithmetic: equal, not close
        np.testing.assert_array_equal(es[c], expected_es)
