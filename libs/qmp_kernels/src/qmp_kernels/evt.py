"""Extreme value theory: peaks over threshold with a generalized Pareto tail (McNeil-Frey 2000).

Input contract
- `returns`: 1-D float64 (a loss is a negative return); non-finite entries are skipped.
- `threshold`: the level of the loss quantile above which the tail is fitted, inside (0, 1), e.g. 0.90;
  `alpha` must lie beyond it: 1 - alpha < m / n.
- Kernels return a status code and NaN where they have no number; UNBOUNDED when the fitted tail has no
  mean (shape >= 1): VaR is still given, ES is NaN.

Method
Losses L = -r. Of the n valid observations the m = floor(n (1 - threshold)) largest losses are the peaks;
the threshold u is the next largest loss, and the excesses y = L - u >= 0 are fitted by a generalized
Pareto distribution G(y) = 1 - (1 + xi y / beta)^(-1/xi) by probability-weighted moments (Hosking and
Wallis 1987): with the excesses in ascending order y(1) <= ... <= y(m),
    a0 = mean(y),  a1 = (1/m) sum_j (m - j) / (m - 1) y(j)   (unbiased estimate of E[Y (1 - G(Y))])
    xi = 2 - a0 / (a0 - 2 a1),  beta = 2 a0 a1 / (a0 - 2 a1).
PWM rather than maximum likelihood: with the m ~ 25 peaks of a 250-day window it is the less variable
estimator for xi < 1/2 (Hosking-Wallis), it is closed form (the per-symbol engine refits it on every
batch) and it always exists.
Tail estimator (Smith 1987), r = (n / m)(1 - alpha):
    VaR = u + (beta / xi) (r^(-xi) - 1)        (u - beta log r when xi = 0)
    ES  = (VaR + beta - xi u) / (1 - xi)       (xi < 1)
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK, UNBOUNDED

EVT_MIN_PEAKS = 8


@njit("int64(int64, float64)", cache=True, error_model="numpy")
def evt_peaks_nb(n: int, threshold: float) -> int:
    """Return the number of peaks m = floor(n (1 - threshold)) used for n valid observations."""
    return math.floor(n * (1.0 - threshold) + 1e-9)


@njit(cache=True, error_model="numpy")
def gpd_fit_pwm_nb(excesses: np.ndarray) -> tuple[float, float, int]:
    """Return (xi, beta, status) of a GPD fitted by probability-weighted moments to ascending excesses >= 0."""
    m = excesses.shape[0]
    if m < 2:
        return np.nan, np.nan, INSUFFICIENT_DATA
    a0 = 0.0
    a1 = 0.0
    for j in range(m):
        a0 += excesses[j]
        a1 += (m - 1 - j) / (m - 1) * excesses[j]
    return _gpd_from_pwm_nb(a0 / m, a1 / m)


@njit("Tuple((float64, float64, int64))(float64, float64)", cache=True, error_model="numpy")
def _gpd_from_pwm_nb(a0: float, a1: float) -> tuple[float, float, int]:
    if a0 <= 0.0:
        return 0.0, 0.0, OK  # every excess is zero: a point mass at the threshold
    d = a0 - 2.0 * a1
    if not (d > 0.0):
        return np.inf, np.nan, UNBOUNDED
    return 2.0 - a0 / d, 2.0 * a0 * a1 / d, OK


@njit("Tuple((float64, float64, int64))(float64, float64, float64, float64)", cache=True, error_model="numpy")
def gpd_var_es_nb(u: float, xi: float, beta: float, log_r: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) from a fitted tail: threshold u, GPD (xi, beta), log_r = log((n/m)(1-alpha))."""
    if beta == 0.0:
        return u, u, OK
    # (r^-xi - 1) / xi = expm1(-xi log r) / xi: exact as xi -> 0, where it tends to -log r
    growth = -log_r if xi == 0.0 else math.expm1(-xi * log_r) / xi
    var = u + beta * growth
    if not (xi < 1.0):
        return var, np.nan, UNBOUNDED
    return var, (var + beta - xi * u) / (1.0 - xi), OK


@njit("float64(int64, int64, float64)", cache=True, error_model="numpy")
def evt_log_ratio_nb(n: int, m: int, alpha: float) -> float:
    """Return log((n / m)(1 - alpha)), the tail estimator's exceedance ratio."""
    return math.log((n / m) * (1.0 - alpha))


@njit("Tuple((float64, float64, int64))(float64[:, :, ::1], int64, int64, int64, int64, float64[::1], "
      "float64[:, ::1], int64, float64, float64[:, :, ::1], float64[:, :, ::1], int64, int64)",
      cache=True, error_model="numpy")
def evt_tail_into_nb(buffers: np.ndarray, which: int, row: int, held: int, n: int, alphas: np.ndarray,
                     log_ratios: np.ndarray, ratio_row: int, threshold: float, var_out: np.ndarray,
                     es_out: np.ndarray, out_row: int, out_method: int) -> tuple[float, float, int]:
    """Fit the tail from buffers[which, row, :held] (the smallest of n returns, ascending) and write VaR / ES.

    Writes var_out[out_row, out_method, level] for each level, with log_ratios[ratio_row, level] =
    log((n / m)(1 - alpha)). Index-addressed (no array views) for the incremental engine's hot loop;
    returns (xi, beta, status).
    """
    if not (0.0 < threshold < 1.0):
        return np.nan, np.nan, INVALID_ARGUMENT
    m = evt_peaks_nb(n, threshold)
    if m < EVT_MIN_PEAKS or held < m + 1:
        return np.nan, np.nan, INSUFFICIENT_DATA
    for level in range(alphas.shape[0]):
        if not (0.0 < alphas[level] < 1.0) or not ((1.0 - alphas[level]) * n < m):
            return np.nan, np.nan, INVALID_ARGUMENT
    u = -buffers[which, row, m]
    a0 = 0.0
    a1 = 0.0
    for j in range(m):
        # the j-th smallest excess belongs to the (m - 1 - j)-th smallest return
        excess = -buffers[which, row, m - 1 - j] - u
        a0 += excess
        a1 += (m - 1 - j) * excess
    xi, beta, code = _gpd_from_pwm_nb(a0 / m, a1 / (m * (m - 1.0)))
    if code != OK:
        return xi, beta, code
    status = OK
    for level in range(alphas.shape[0]):
        var, es, level_code = gpd_var_es_nb(u, xi, beta, log_ratios[ratio_row, level])
        var_out[out_row, out_method, level] = var
        es_out[out_row, out_method, level] = es
        if level_code != OK:
            status = level_code
    return xi, beta, status


@njit(cache=True, error_model="numpy")
def evt_var_es_ascending_nb(smallest: np.ndarray, n: int, alphas: np.ndarray, threshold: float,
                            var_out: np.ndarray, es_out: np.ndarray) -> tuple[float, float, int]:
    """Write EVT VaR and ES per level from the m + 1 smallest of n returns, ascending; return (xi, beta, status).

    `smallest` needs at least evt_peaks_nb(n, threshold) + 1 entries (the incremental engine passes its
    tail buffer, the point kernel a sorted copy).
    """
    m = evt_peaks_nb(n, threshold) if 0.0 < threshold < 1.0 else 0
    log_ratios = np.full((1, alphas.shape[0]), np.nan)
    if m >= 1:
        for level in range(alphas.shape[0]):
            if 0.0 < alphas[level] < 1.0:
                log_ratios[0, level] = evt_log_ratio_nb(n, m, alphas[level])
    var = np.full((1, 1, alphas.shape[0]), np.nan)
    es = np.full((1, 1, alphas.shape[0]), np.nan)
    buffers = np.ascontiguousarray(smallest).reshape(1, 1, smallest.shape[0])
    xi, beta, code = evt_tail_into_nb(buffers, 0, 0, smallest.shape[0], n, alphas, log_ratios, 0, threshold, var,
                                      es, 0, 0)
    var_out[:] = var[0, 0]
    es_out[:] = es[0, 0]
    return xi, beta, code


@njit(cache=True, error_model="numpy")
def evt_var_es_nb(returns: np.ndarray, alpha: float, threshold: float) -> tuple[float, float, float, float, int]:
    """Return (VaR, ES, xi, beta, status) of a 1-D return vector by peaks over threshold."""
    if not (0.0 < alpha < 1.0):
        return np.nan, np.nan, np.nan, np.nan, INVALID_ARGUMENT
    ordered = np.empty(returns.shape[0])
    n = 0
    for i in range(returns.shape[0]):
        if math.isfinite(returns[i]):
            ordered[n] = returns[i]
            n += 1
    ordered = np.sort(ordered[:n])
    var = np.full(1, np.nan)
    es = np.full(1, np.nan)
    xi, beta, code = evt_var_es_ascending_nb(ordered, n, np.array([alpha]), threshold, var, es)
    return var[0], es[0], xi, beta, code
