"""Moments, Student-t (maximum likelihood) and Cornish-Fisher VaR / ES against scipy.stats on S&P 500 data."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from qmp_core.datasets import load_sp500_prices
from qmp_kernels import status
from qmp_kernels.student_t import NU_MAX, t_fit_nb, t_log_likelihood_nb, t_var_es_from_fit_nb
from qmp_kernels.var import (
    cornish_fisher_var_es_from_moments_nb,
    cornish_fisher_var_es_nb,
    moments_nb,
    scale_horizon_nb,
    student_t_var_es_nb,
)

ALPHAS = (0.95, 0.975, 0.99)


def stock_returns() -> np.ndarray:
    """Column-major, so that one symbol's returns are contiguous (as the service's series are)."""
    prices = load_sp500_prices().to_numpy()
    return np.asfortranarray(prices[1:] / prices[:-1] - 1.0)


def reference_t(x: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Student-t fitted by scipy's maximum likelihood: VaR from t.ppf, ES from t.expect, and the log-likelihood."""
    nu, loc, scale = stats.t.fit(x)
    var = -stats.t.ppf(1 - alpha, nu, loc=loc, scale=scale)
    tail = stats.t.expect(lambda y: y, args=(nu,), loc=loc, scale=scale, ub=-var, conditional=True)
    return var, -tail, float(stats.t.logpdf(x, nu, loc, scale).sum())


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
def test_student_t_when_sp500_stocks_then_fit_is_at_least_scipys_and_var_es_match(alpha: float) -> None:
    returns = stock_returns()
    for column in range(0, returns.shape[1], 3):
        x = returns[-250:, column]
        var, es, code = student_t_var_es_nb(x, alpha)
        mu, s, nu, _ = t_fit_nb(x)
        expected_var, expected_es, scipy_loglik = reference_t(x, alpha)
        assert code == status.OK
        assert t_log_likelihood_nb(x, mu, s, nu) >= scipy_loglik - 1e-7  # our maximum is no lower than scipy's
        assert var == pytest.approx(expected_var, rel=1e-5)  # two optimisers agree to their tolerances
        assert es == pytest.approx(expected_es, rel=1e-5)
        assert es > var


def test_student_t_when_sp500_index_windows_then_fits_heavier_tails_than_moments_allow() -> None:
    prices = load_sp500_prices().to_numpy()
    returns = (prices[1:] / prices[:-1] - 1.0).mean(axis=1)
    nus = [t_fit_nb(returns[start:start + 250])[2] for start in range(0, returns.shape[0] - 250, 250)]
    assert min(nus) < 4.0  # the method of moments cannot go below 4
    assert all(2.0 < nu for nu in nus)


def test_student_t_when_sample_drawn_from_a_t_then_recovers_its_parameters() -> None:
    x = stats.t.rvs(3.5, loc=0.001, scale=0.01, size=20_000, random_state=np.random.default_rng(7))
    mu, s, nu, code = t_fit_nb(x)
    assert code == status.OK
    assert nu == pytest.approx(3.5, rel=0.1)
    assert mu == pytest.approx(0.001, abs=2e-4) and s == pytest.approx(0.01, rel=0.03)


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


def test_student_t_when_tails_lighter_than_any_t_then_normal() -> None:
    x = np.linspace(-0.02, 0.02, 200)  # uniform: the likelihood rises with nu up to NU_MAX
    assert t_fit_nb(x)[2] == math.inf and NU_MAX < math.inf
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
    assert t_var_es_from_fit_nb(0.0, -1.0, 5.0, 0.99)[2] == status.INVALID_ARGUMENT
    assert t_var_es_from_fit_nb(0.0, 0.01, 2.0, 0.99)[2] == status.INVALID_ARGUMENT  # no finite variance
    assert student_t_var_es_nb(np.zeros(10), 1.0)[2] == status.INVALID_ARGUMENT
    assert cornish_fisher_var_es_from_moments_nb(0.0, 0.01, math.nan, 0.0, 0.99)[2] == status.INVALID_ARGUMENT


def test_scale_horizon_when_ten_days_then_square_root_of_time() -> None:
    assert scale_horizon_nb(0.02, 10.0) == pytest.approx(0.02 * math.sqrt(10.0), rel=1e-15)
