"""Special functions against scipy.special / scipy.stats (an independent implementation)."""

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from qmp_kernels.special import (
    betainc_nb,
    binom_cdf_nb,
    chi2_sf_nb,
    gammaincc_nb,
    lgamma_half_ratio_nb,
    norm_cdf_nb,
    t_cdf_nb,
    t_pdf_nb,
    t_ppf_nb,
    t_standardized_var_es_nb,
)

NUS = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 4.3, 5.0, 7.5, 10.0, 30.0, 100.0, 999.0]
PROBABILITIES = [1e-12, 1e-8, 1e-5, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.3, 0.49, 0.5, 0.51, 0.7, 0.95, 0.975, 0.99,
                 0.999, 1 - 1e-8]


@pytest.mark.parametrize("nu", NUS)
def test_t_ppf_when_compared_with_scipy_then_equal_to_1e12_relative(nu: float) -> None:
    for p in PROBABILITIES:
        expected = stats.t.ppf(p, nu)
        assert t_ppf_nb(p, nu) == pytest.approx(expected, rel=1e-11, abs=1e-14), (nu, p)


@pytest.mark.parametrize("nu", [1e4, 2e4, 1e6, 1e9])
def test_t_ppf_when_nu_is_huge_then_expansion_agrees_with_scipy_and_tends_to_normal(nu: float) -> None:
    for p in (1e-6, 0.01, 0.3, 0.975):
        assert t_ppf_nb(p, nu) == pytest.approx(stats.t.ppf(p, nu), rel=1e-10)
    assert t_ppf_nb(0.99, math.inf) == pytest.approx(stats.norm.ppf(0.99), rel=1e-14)


def test_t_ppf_when_outside_domain_then_nan() -> None:
    for p, nu in ((0.0, 5.0), (1.0, 5.0), (0.5 - 2.0, 5.0), (0.9, 0.5), (0.9, float("nan"))):
        assert math.isnan(t_ppf_nb(p, nu))


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0, 3.3, 4.0, 10.0, 100.0, 1e4])
def test_t_cdf_and_pdf_when_compared_with_scipy_then_equal(nu: float) -> None:
    for x in (-1e6, -100.0, -30.0, -10.0, -5.0, -2.0, -1.0, -0.1, 0.0, 0.1, 1.0, 3.0, 10.0, 50.0):
        assert t_cdf_nb(x, nu) == pytest.approx(stats.t.cdf(x, nu), rel=1e-11, abs=1e-300), (nu, x)
        if nu < 1e4:  # scipy's own pdf loses ~1e-12 to lgamma cancellation beyond
            assert t_pdf_nb(x, nu) == pytest.approx(stats.t.pdf(x, nu), rel=1e-12, abs=1e-300), (nu, x)


def test_t_pdf_when_nu_is_huge_then_matches_the_gamma_ratio_of_scipy_poch() -> None:
    # poch(a, 1/2) = Gamma(a + 1/2) / Gamma(a) without the cancellation of two large lgamma values
    for nu in (1e4, 1e6, 1e8):
        constant = special.poch(nu / 2, 0.5) / math.sqrt(nu * math.pi)
        for x in (-3.0, 0.0, 2.0):
            expected = constant * math.exp(-(nu + 1) / 2 * math.log1p(x * x / nu))
            assert t_pdf_nb(x, nu) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("x", [1e-3, 0.5, 1.0, 10.0, 99.0, 100.0, 300.0])
def test_lgamma_half_ratio_when_compared_with_log_poch_then_equal(x: float) -> None:
    assert lgamma_half_ratio_nb(x) == pytest.approx(math.log(special.poch(x, 0.5)), rel=1e-13, abs=1e-15)


@pytest.mark.parametrize("x", [1e3, 1e5, 1e8])
def test_lgamma_half_ratio_when_x_large_then_matches_asymptotic_series(x: float) -> None:
    # log Gamma(x + 1/2) / Gamma(x) = log(x)/2 - 1/(8x) + 1/(192 x^3) + O(x^-5); scipy's poch loses ~1e-13 here
    expected = 0.5 * math.log(x) - 1 / (8 * x) + 1 / (192 * x**3)
    assert lgamma_half_ratio_nb(x) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("a", "b", "x"), [(2.0, 0.5, 0.3), (50.0, 0.5, 0.999), (0.5, 0.5, 0.5), (10.0, 20.0, 0.3),
                                           (1e3, 0.5, 0.9), (3.0, 7.0, 0.0), (3.0, 7.0, 1.0), (0.1, 40.0, 0.01)])
def test_betainc_when_compared_with_scipy_then_equal(a: float, b: float, x: float) -> None:
    assert betainc_nb(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("k", [1.0, 2.0, 3.0, 4.0, 7.5, 20.0])
def test_chi2_sf_when_compared_with_scipy_then_equal(k: float) -> None:
    for x in (0.0, 0.01, 0.5, 1.0, 3.84, 10.0, 50.0, 200.0):
        assert chi2_sf_nb(x, k) == pytest.approx(stats.chi2.sf(x, k), rel=1e-12, abs=1e-300)
    assert gammaincc_nb(2.5, 3.0) == pytest.approx(special.gammaincc(2.5, 3.0), rel=1e-13)


def test_binom_cdf_when_compared_with_scipy_then_equal() -> None:
    for n, p in ((250, 0.01), (250, 0.025), (500, 0.05), (10, 0.5)):
        for k in range(0, min(n, 30)):
            assert binom_cdf_nb(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-12)


def test_norm_cdf_when_far_tail_then_no_cancellation() -> None:
    for x in (-38.0, -10.0, -1.0, 0.0, 2.0, 8.0):
        assert norm_cdf_nb(x) == pytest.approx(stats.norm.cdf(x), rel=1e-14)


@pytest.mark.parametrize("nu", [2.5, 4.0, 6.0, 30.0])
def test_t_standardized_var_es_when_integrated_numerically_then_equal(nu: float) -> None:
    scale = math.sqrt((nu - 2) / nu)
    for alpha in (0.95, 0.975, 0.99):
        q, e = t_standardized_var_es_nb(alpha, nu)
        assert q == pytest.approx(scale * stats.t.ppf(alpha, nu), rel=1e-12)
        # ES = mean loss beyond VaR, by quadrature of the (unit-variance) t quantile function
        tail, _ = integrate.quad(lambda u: scale * stats.t.ppf(u, nu), alpha, 1.0, limit=200, epsabs=1e-13)
        assert e == pytest.approx(tail / (1 - alpha), rel=1e-7)


def test_t_standardized_var_es_when_nu_infinite_then_normal() -> None:
    q, e = t_standardized_var_es_nb(0.99, math.inf)
    z = stats.norm.ppf(0.99)
    assert q == pytest.approx(z, rel=1e-14)
    assert e == pytest.approx(stats.norm.pdf(z) / 0.01, rel=1e-13)
    assert all(np.isnan(t_standardized_var_es_nb(0.99, 2.0)))
