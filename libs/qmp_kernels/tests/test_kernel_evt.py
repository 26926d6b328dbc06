"""Peaks over threshold: the PWM fit against a numpy implementation and scipy.stats.genpareto."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from qmp_core.datasets import load_sp500_index
from qmp_kernels import status
from qmp_kernels.evt import evt_var_es_nb, gpd_fit_pwm_nb, gpd_var_es_nb


def index_returns() -> np.ndarray:
    prices = load_sp500_index()["SP500"].to_numpy()
    return prices[1:] / prices[:-1] - 1.0


def reference_pwm(y: np.ndarray) -> tuple[float, float]:
    """Hosking-Wallis from b0 = mean, b1 = sum (j-1)/(n-1) y(j) / n (ascending): a1 = b0 - b1."""
    y = np.sort(y)
    n = len(y)
    b0 = y.mean()
    b1 = np.sum(np.arange(n) / (n - 1) * y) / n
    a0, a1 = b0, b0 - b1
    return 2 - a0 / (a0 - 2 * a1), 2 * a0 * a1 / (a0 - 2 * a1)


def reference_evt(x: np.ndarray, alpha: float, threshold: float) -> tuple[float, float]:
    """Fit with numpy PWM; VaR from scipy genpareto.ppf of the tail; ES by integrating that quantile."""
    losses = np.sort(-x)[::-1]
    n = len(losses)
    m = int(np.floor(n * (1 - threshold) + 1e-9))
    u = losses[m]
    xi, beta = reference_pwm(losses[:m] - u)
    tail = (1 - alpha) * n / m  # probability of exceeding VaR given an exceedance of u

    def quantile(p: float) -> float:
        return u + stats.genpareto.ppf(1 - p * n / m, xi, scale=beta)

    es, _ = integrate.quad(quantile, 0.0, 1 - alpha, limit=200, epsabs=1e-14)
    return u + stats.genpareto.ppf(1 - tail, xi, scale=beta), es / (1 - alpha)


@pytest.mark.parametrize("alpha", [0.95, 0.975, 0.99])
def test_evt_when_sp500_windows_then_matches_numpy_pwm_and_scipy_genpareto(alpha: float) -> None:
    returns = index_returns()
    for end in (1000, 4750, 8000, len(returns)):
        x = returns[end - 250:end]
        var, es, _, _, code = evt_var_es_nb(x, alpha, 0.90)
        expected_var, expected_es = reference_evt(x, alpha, 0.90)
        assert code == status.OK
        assert var == pytest.approx(expected_var, rel=1e-10)
        assert es == pytest.approx(expected_es, rel=1e-8)
        assert es > var


def test_gpd_fit_when_large_gpd_sample_then_recovers_parameters_like_scipy_mle() -> None:
    sample = stats.genpareto.rvs(0.2, scale=0.01, size=20_000, random_state=np.random.default_rng(3))
    xi, beta, code = gpd_fit_pwm_nb(np.sort(sample))
    mle_xi, _, mle_beta = stats.genpareto.fit(sample, floc=0.0)
    assert code == status.OK
    assert xi == pytest.approx(0.2, abs=0.03) and beta == pytest.approx(0.01, rel=0.05)
    assert xi == pytest.approx(mle_xi, abs=0.03) and beta == pytest.approx(mle_beta, rel=0.05)
    assert (xi, beta) == pytest.approx(reference_pwm(sample), rel=1e-10)


def test_gpd_var_es_when_shape_zero_then_exponential_tail() -> None:
    var, es, code = gpd_var_es_nb(0.02, 0.0, 0.01, math.log(0.25))
    assert code == status.OK
    assert var == pytest.approx(0.02 - 0.01 * math.log(0.25), rel=1e-14)
    assert es == pytest.approx(var + 0.01, rel=1e-14)
    almost, _, _ = gpd_var_es_nb(0.02, 1e-12, 0.01, math.log(0.25))
    assert almost == pytest.approx(var, rel=1e-10)


def test_gpd_var_es_when_shape_at_least_one_then_es_unbounded() -> None:
    var, es, code = gpd_var_es_nb(0.02, 1.2, 0.01, math.log(0.1))
    assert code == status.UNBOUNDED and math.isfinite(var) and math.isnan(es)


def test_evt_when_too_few_peaks_or_level_inside_threshold_then_status_says_so() -> None:
    x = index_returns()[-50:]  # 5 peaks at a 90% threshold
    assert evt_var_es_nb(x, 0.99, 0.90)[4] == status.INSUFFICIENT_DATA
    assert evt_var_es_nb(index_returns()[-250:], 0.85, 0.90)[4] == status.INVALID_ARGUMENT
    assert evt_var_es_nb(index_returns()[-250:], 0.99, 1.5)[4] == status.INVALID_ARGUMENT


def test_evt_when_zero_variance_then_var_and_es_are_the_constant_loss() -> None:
    var, es, _, _, code = evt_var_es_nb(np.full(300, -0.002), 0.99, 0.90)
    assert code == status.OK and var == pytest.approx(0.002) and es == pytest.approx(0.002)


def test_evt_when_nan_gaps_then_skipped() -> None:
    x = index_returns()[-400:].copy()
    holed = x.copy()
    holed[::11] = np.nan
    assert evt_var_es_nb(holed, 0.99, 0.9) == pytest.approx(evt_var_es_nb(x[np.isfinite(holed)], 0.99, 0.9))
