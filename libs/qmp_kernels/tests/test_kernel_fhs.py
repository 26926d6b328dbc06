"""EWMA / GARCH filters, the GARCH fit and FHS VaR / ES against numpy loops and scipy.optimize."""

import math

import numpy as np
import pytest
from scipy import optimize

from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_kernels import status
from qmp_kernels.fhs import (
    EWMA_WARMUP,
    MODEL_EWMA,
    MODEL_GARCH,
    ewma_variance_nb,
    fhs_var_es_nb,
    garch_fit_nb,
    garch_variance_nb,
)


def index_returns() -> np.ndarray:
    prices = load_sp500_index()["SP500"].to_numpy()
    return prices[1:] / prices[:-1] - 1.0


def reference_ewma(x: np.ndarray, lam: float) -> np.ndarray:
    sigma2 = [math.nan]
    for t in range(1, len(x) + 1):
        if t <= EWMA_WARMUP:
            sigma2.append(float(np.mean(x[:t] ** 2)))
        else:
            sigma2.append(lam * sigma2[-1] + (1 - lam) * x[t - 1] ** 2)
    return np.array(sigma2)


def reference_fhs(x: np.ndarray, sigma2: np.ndarray, window: int, alpha: float) -> tuple[float, float]:
    """Residuals of the last `window` days, numpy 'lower' quantile, scaled by the next-day sigma."""
    n = len(x)
    z = x[n - window:] / np.sqrt(sigma2[n - window:n])
    k = int(np.floor((len(z) - 1) * (1 - alpha)))
    q = np.quantile(z, 1 - alpha, method="lower")
    return -math.sqrt(sigma2[n]) * q, -math.sqrt(sigma2[n]) * np.sort(z)[: k + 1].mean()


def garch_nll(params: np.ndarray, x: np.ndarray) -> float:
    a, b = params
    target = np.mean(x**2)
    omega = target * (1 - a - b)
    s2 = target
    total = 0.0
    for r in x:
        total += math.log(s2) + r * r / s2
        s2 = omega + a * r * r + b * s2
    return 0.5 * total


def test_ewma_variance_when_sp500_then_matches_numpy_recursion() -> None:
    x = index_returns()[-400:]
    np.testing.assert_allclose(ewma_variance_nb(x, 0.94)[1:], reference_ewma(x, 0.94)[1:], rtol=1e-13)


@pytest.mark.parametrize("alpha", [0.95, 0.975, 0.99])
def test_fhs_ewma_when_sp500_then_matches_numpy_reference(alpha: float) -> None:
    x = index_returns()[-600:]
    var, es, sigma, code = fhs_var_es_nb(x, 250, alpha, MODEL_EWMA, 0.94, 0.0, 0.0, 0.0)
    sigma2 = reference_ewma(x, 0.94)
    expected_var, expected_es = reference_fhs(x, sigma2, 250, alpha)
    assert code == status.OK
    assert var == pytest.approx(expected_var, rel=1e-12)
    assert es == pytest.approx(expected_es, rel=1e-12)
    assert sigma == pytest.approx(math.sqrt(sigma2[-1]), rel=1e-13)


@pytest.mark.parametrize("column", [0, 7, 13])
def test_garch_fit_when_sp500_then_likelihood_at_least_as_good_as_scipy(column: int) -> None:
    prices = load_sp500_prices().to_numpy()[-1001:, column]
    x = prices[1:] / prices[:-1] - 1.0
    omega, a, b, nll, code = garch_fit_nb(x)
    constraint = {"type": "ineq", "fun": lambda p: 0.9999 - p[0] - p[1]}
    best = optimize.minimize(garch_nll, np.array([0.05, 0.9]), args=(x,), method="SLSQP",
                             bounds=[(0.0, 1.0), (0.0, 1.0)], constraints=[constraint],
                             options={"ftol": 1e-12, "maxiter": 500})
    assert code == status.OK
    assert nll == pytest.approx(garch_nll(np.array([a, b]), x), rel=1e-12)
    assert nll <= best.fun + 1e-6
    assert (a, b) == pytest.approx(tuple(best.x), abs=5e-3)
    assert omega == pytest.approx(np.mean(x**2) * (1 - a - b), rel=1e-12)


def test_fhs_garch_when_given_params_then_matches_numpy_filter() -> None:
    x = index_returns()[-800:]
    omega, a, b, _, _ = garch_fit_nb(x)
    sigma2 = [omega / (1 - a - b)]
    for r in x:
        sigma2.append(omega + a * r * r + b * sigma2[-1])
    np.testing.assert_allclose(garch_variance_nb(x, omega, a, b), sigma2, rtol=1e-13)
    var, es, _, code = fhs_var_es_nb(x, 250, 0.99, MODEL_GARCH, 0.0, omega, a, b)
    expected_var, expected_es = reference_fhs(x, np.array(sigma2), 250, 0.99)
    assert code == status.OK
    assert (var, es) == pytest.approx((expected_var, expected_es), rel=1e-12)


def test_fhs_when_nan_gaps_then_they_are_dropped_before_filtering() -> None:
    x = index_returns()[-500:].copy()
    holed = x.copy()
    holed[5::17] = np.nan
    clean = x[np.isfinite(holed)]
    assert fhs_var_es_nb(holed, 250, 0.99, MODEL_EWMA, 0.94, 0.0, 0.0, 0.0) == pytest.approx(
        fhs_var_es_nb(clean, 250, 0.99, MODEL_EWMA, 0.94, 0.0, 0.0, 0.0))


def test_garch_fit_when_fewer_than_minimum_observations_then_insufficient_data() -> None:
    assert garch_fit_nb(np.full(10, 0.01))[4] == status.INSUFFICIENT_DATA
    assert fhs_var_es_nb(np.array([0.01]), 250, 0.99, MODEL_EWMA, 0.94, 0.0, 0.0, 0.0)[3] == status.INSUFFICIENT_DATA


def test_fhs_when_all_returns_zero_then_var_and_es_zero() -> None:
    zeros = np.zeros(100)
    omega, a, b, _, code = garch_fit_nb(zeros)
    assert code == status.OK and (omega, a, b) == (0.0, 0.0, 0.0)
    for model in (MODEL_EWMA, MODEL_GARCH):
        var, es, sigma, code = fhs_var_es_nb(zeros, 50, 0.99, model, 0.94, 0.0, 0.0, 0.0)
        assert code == status.OK and var == 0.0 and es == 0.0 and sigma == 0.0


def test_fhs_when_bad_parameters_then_invalid_argument() -> None:
    x = index_returns()[-100:]
    assert fhs_var_es_nb(x, 50, 0.99, MODEL_EWMA, 1.5, 0.0, 0.0, 0.0)[3] == status.INVALID_ARGUMENT
    assert fhs_var_es_nb(x, 50, 0.99, MODEL_GARCH, 0.0, 1e-6, 0.6, 0.5)[3] == status.INVALID_ARGUMENT
    assert fhs_var_es_nb(x, 50, 0.99, 9, 0.94, 0.0, 0.0, 0.0)[3] == status.INVALID_ARGUMENT
