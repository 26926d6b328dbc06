"""Moments, Student-t and Cornish-Fisher VaR / ES against scipy.stats on the bundled S&P 500 data."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from qmp_core.datasets import load_sp500_prices
from qmp_core.kernels import status
from qmp_core.kernels.var import (
    cornish_fisher_var_es_from_moments_nb,
    cornish_fisher_var_es_nb,
    moments_nb,
    scale_horizon_nb,
    student_t_var_es_from_moments_nb,
    student_t_var_es_nb,
)

ALPHAS = (0.95, 0.975, 0.99)


def stock_returns() -> np.ndarray:
    """Column-major, so that one symbol's returns are contiguous (as the service's series are)."""
    prices = load_sp500_prices().to_numpy()
    return np.asfortranarray(prices[1:] / prices[:-1] - 1.0)


def reference_t(x: np.ndarray, alpha: float) -> tuple[float, float]:
    """Student-t with nu = 4 + 6/K scaled to the sample variance: VaR from t.ppf, ES from t.expect."""
    mean, std = x.mean(), x.std(ddof=1)
    nu = 4.0 + 6.0 / stats.kurtosis(x)
    scale = std * math.sqrt((nu - 2) / nu)
    var = -stats.t.ppf(1 - alpha, nu, loc=mean, scale=scale)
    tail = stats.t.expect(lambda y: y, args=(nu,), loc=mean, scale=scale, ub=-var, conditional=True)
    return var, -tail


def reference_cornish_fisher(x: np.ndarray, alpha: float) -> tuple[float, float]:
    """VaR from the Cornish-Fisher quantile; ES by integrating that quantile over the tail (scipy.integrate)."""
    mean, std = x.mean(), x.std(ddof=1)
    s, k = stats.skew(x), stats.kurtosis(x)

    def quantile(u: float) -> float:
        z = stats.norm.ppf(u)
        return mean + std * (z + (z**2 - 1) * s / 6 + (z**3 - 3 * z) * k / 24 - (2 * z**3 - 5 * z) * s**2 / 36)

    tail, _ = integrate.quad(quantile, 0.0, 1 - alpha, limit=200, epsabs=1e-14, epsrel=1e-12)
    return -quantile(1 - alpha), -tail / (1 - alpha)


def test_moments_when_sp500_windows_then_match_scipy() -> None:
    returns = stock_returns()
    for column in range(returns.shape[1]):
        x = returns[-250:, column]
        n, mean, std, skew, kurt = moments_nb(x)
        assert n == 250
        assert mean == pytest.approx(x.mean(), rel=1e-12)
        assert std == pytest.approx(x.std(ddof=1), rel=1e-12)
        assert skew == pytest.approx(stats.skew(x), rel=1e-10)
        assert kurt == pytest.approx(stats.kurtosis(x), rel=1e-10)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_student_t_when_sp500_stocks_then_matches_scipy_t(alpha: float) -> None:
    returns = stock_returns()
    for column in range(0, returns.shape[1], 3):
        x = returns[-250:, column]
        var, es, code = student_t_var_es_nb(x, alpha)
        expected_var, expected_es = reference_t(x, alpha)
        assert code == status.OK
        assert var == pytest.approx(expected_var, rel=1e-10)
        assert es == pytest.approx(expected_es, rel=1e-7)
        assert es > var


@pytest.mark.parametrize("alpha", ALPHAS)
def test_cornish_fisher_when_sp500_stocks_then_matches_integrated_expansion(alpha: float) -> None:
    returns = stock_returns()
    for column in range(1, returns.shape[1], 3):
        x = returns[-500:, column]
        var, es, code = cornish_fisher_var_es_nb(x, alpha)
        expected_var, expected_es = reference_cornish_fisher(x, alpha)
        assert code == status.OK
        assert var == pytest.approx(expected_var, rel=1e-11)
        assert es == pytest.approx(expected_es, rel=1e-9)


def test_student_t_when_kurtosis_not_positive_then_normal() -> None:
    x = np.linspace(-0.02, 0.02, 200)  # uniform: excess kurtosis -1.2, no t fit
    var, es, code = student_t_var_es_nb(x, 0.99)
    z = stats.norm.ppf(0.99)
    assert code == status.OK
    assert var == pytest.approx(x.std(ddof=1) * z - x.mean(), rel=1e-12, abs=1e-15)
    assert es == pytest.approx(x.std(ddof=1) * stats.norm.pdf(z) / 0.01, rel=1e-12)


def test_cornish_fisher_when_no_skew_or_kurtosis_then_normal() -> None:
    var, es, code = cornish_fisher_var_es_from_moments_nb(0.001, 0.02, 0.0, 0.0, 0.975)
    z = stats.norm.ppf(0.975)
    assert code == status.OK
    assert var == pytest.approx(0.02 * z - 0.001, rel=1e-14)
    assert es == pytest.approx(0.02 * stats.norm.pdf(z) / 0.025 - 0.001, rel=1e-13)


def test_parametric_when_zero_variance_then_var_and_es_are_minus_the_constant() -> None:
    x = np.full(100, 0.003)
    for kernel in (student_t_var_es_nb, cornish_fisher_var_es_nb):
        var, es, code = kernel(x, 0.99)
        assert code == status.OK
        assert var == pytest.approx(-0.003, rel=1e-12) and es == pytest.approx(-0.003, rel=1e-12)


def test_parametric_when_too_few_or_nan_observations_then_insufficient_or_skipped() -> None:
    short = np.array([0.01, np.nan, -0.02, 0.005])
    for kernel in (student_t_var_es_nb, cornish_fisher_var_es_nb):
        var, _, code = kernel(short, 0.99)
        assert code == status.INSUFFICIENT_DATA and math.isnan(var)
    x = stock_returns()[-300:, 2].copy()
    holed = x.copy()
    holed[::9] = np.nan
    assert student_t_var_es_nb(holed, 0.99) == pytest.approx(student_t_var_es_nb(x[np.isfinite(holed)], 0.99))


def test_student_t_when_bad_arguments_then_invalid_argument() -> None:
    assert student_t_var_es_from_moments_nb(0.0, -1.0, 1.0, 0.99)[3] == status.INVALID_ARGUMENT
    assert student_t_var_es_nb(np.zeros(10), 1.0)[2] == status.INVALID_ARGUMENT
    assert cornish_fisher_var_es_from_moments_nb(0.0, 0.01, math.nan, 0.0, 0.99)[2] == status.INVALID_ARGUMENT


def test_scale_horizon_when_ten_days_then_square_root_of_time() -> None:
    assert scale_horizon_nb(0.02, 10.0) == pytest.approx(0.02 * math.sqrt(10.0), rel=1e-15)
