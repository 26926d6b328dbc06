"""Filtered historical simulation: EWMA and GARCH(1,1) volatility, GARCH fitting, FHS VaR and ES.

Input contract
- `returns`: 1-D float64, oldest first; non-finite entries are missing and dropped before filtering (the
  recursion runs over the valid observations as if the gaps were not there).
- Returns are taken as zero-mean, r_t = sigma_t z_t (Barone-Adesi et al. 1999): at a daily horizon the
  mean is noise next to the volatility.
- Kernels return a status code from `qmp_kernels.status` and NaN where they have no number.

Volatility models (one-step-ahead: sigma_t uses returns up to t - 1 only)
- EWMA (RiskMetrics): sigma2_t = lambda sigma2_{t-1} + (1 - lambda) r2_{t-1}, lambda = 0.94 by default.
  It starts from the expanding mean of the squares: sigma2_t = mean(r2_0 .. r2_{t-1}) for
  t <= EWMA_WARMUP, so the first returns are not scaled by one squared return; r_0 has no sigma and no
  residual.
- GARCH(1,1): sigma2_t = omega + a r2_{t-1} + b sigma2_{t-1}, started at the unconditional variance
  omega / (1 - a - b). Fitted by Gaussian quasi-maximum likelihood with variance targeting
  (omega = v (1 - a - b), v = mean r2, Engle-Mezrich 1996), so that only (a, b) are searched:
  minimise 1/2 sum (log sigma2_t + r2_t / sigma2_t) over a >= 0, b >= 0, a + b <= PERSISTENCE_MAX, by
  Nelder-Mead in unconstrained coordinates (persistence = PERSISTENCE_MAX * logistic(u1),
  a = persistence * logistic(u2)), restarted once from its own optimum.

FHS VaR and ES
Standardized residuals z_t = r_t / sigma_t over the window; with the empirical 'lower' quantile of the
z's (as in historical simulation, `var.py`) and the one-step forecast sigma_{T+1}:
VaR = -sigma_{T+1} z(k) and ES = -sigma_{T+1} mean(z(0) .. z(k)), k = floor((n - 1)(1 - alpha)).
A sigma_t of 0 (all returns before t were 0) standardizes a 0 return to 0 and leaves any other out.
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK
from qmp_kernels.var import historical_var_es_levels_nb

EWMA_WARMUP = 20
PERSISTENCE_MAX = 0.9999
GARCH_MIN_OBSERVATIONS = 30
GARCH_START_A = 0.05
GARCH_START_B = 0.90
MODEL_EWMA = 0
MODEL_GARCH = 1


@njit(cache=True, error_model="numpy")
def finite_nb(x: np.ndarray) -> np.ndarray:
    """Return the finite entries of x, in order."""
    out = np.empty(x.shape[0])
    n = 0
    for i in range(x.shape[0]):
        if math.isfinite(x[i]):
            out[n] = x[i]
            n += 1
    return out[:n]


@njit(cache=True, error_model="numpy")
def ewma_variance_nb(x: np.ndarray, lam: float) -> np.ndarray:
    """Return sigma2[0..n] of the finite series x (n = len(x)): sigma2[t] is the forecast for x[t].

    sigma2[0] is NaN (nothing observed yet); sigma2[n] is the forecast for the next, unseen return.
    """
    n = x.shape[0]
    out = np.full(n + 1, np.nan)
    squares = 0.0
    for t in range(1, n + 1):
        r2 = x[t - 1] * x[t - 1]
        if t <= EWMA_WARMUP:
            squares += r2
            out[t] = squares / t
        else:
            out[t] = lam * out[t - 1] + (1.0 - lam) * r2
    return out


@njit(cache=True, error_model="numpy")
def garch_variance_nb(x: np.ndarray, omega: float, a: float, b: float) -> np.ndarray:
    """Return sigma2[0..n] of the finite series x under GARCH(1,1), started at the unconditional variance."""
    n = x.shape[0]
    out = np.empty(n + 1)
    if a + b < 1.0 and omega > 0.0:
        out[0] = omega / (1.0 - a - b)
    else:
        total = 0.0
        for t in range(n):
            total += x[t] * x[t]
        out[0] = total / n if n > 0 else 0.0
    for t in range(n):
        out[t + 1] = omega + a * x[t] * x[t] + b * out[t]
    return out


@njit(cache=True, error_model="numpy")
def _garch_nll_nb(x: np.ndarray, target: float, a: float, b: float) -> float:
    omega = target * (1.0 - a - b)
    s2 = target
    total = 0.0
    for t in range(x.shape[0]):
        if not (s2 > 0.0):
            return np.inf
        r2 = x[t] * x[t]
        total += math.log(s2) + r2 / s2
        s2 = omega + a * r2 + b * s2
    return 0.5 * total


@njit(cache=True, error_model="numpy")
def _logistic_nb(u: float) -> float:
    if u >= 0.0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)
    return e / (1.0 + e)


@njit(cache=True, error_model="numpy")
def _garch_params_nb(u1: float, u2: float) -> tuple[float, float]:
    persistence = PERSISTENCE_MAX * _logistic_nb(u1)
    a = persistence * _logistic_nb(u2)
    return a, persistence - a


@njit(cache=True, error_model="numpy")
def _garch_objective_nb(x: np.ndarray, target: float, u1: float, u2: float) -> float:
    a, b = _garch_params_nb(u1, u2)
    return _garch_nll_nb(x, target, a, b)


@njit(cache=True, error_model="numpy")
def _nelder_mead_nb(x: np.ndarray, target: float, u1: float, u2: float, step: float) -> tuple[float, float, float]:
    """Minimise the GARCH objective over (u1, u2) from a start; return (u1, u2, value)."""
    simplex = np.empty((3, 2))
    values = np.empty(3)
    simplex[0, 0], simplex[0, 1] = u1, u2
    simplex[1, 0], simplex[1, 1] = u1 + step, u2
    simplex[2, 0], simplex[2, 1] = u1, u2 + step
    for i in range(3):
        values[i] = _garch_objective_nb(x, target, simplex[i, 0], simplex[i, 1])
    for _ in range(600):
        # order: best, middle, worst
        for i in range(1, 3):
            j = i
            while j > 0 and values[j] < values[j - 1]:
                values[j], values[j - 1] = values[j - 1], values[j]
                for d in range(2):
                    simplex[j, d], simplex[j - 1, d] = simplex[j - 1, d], simplex[j, d]
                j -= 1
        spread = max(abs(simplex[1, 0] - simplex[0, 0]), abs(simplex[2, 0] - simplex[0, 0]),
                     abs(simplex[1, 1] - simplex[0, 1]), abs(simplex[2, 1] - simplex[0, 1]))
        if values[2] - values[0] <= 1e-11 * (1.0 + abs(values[0])) and spread < 1e-7:
            break
        c0 = 0.5 * (simplex[0, 0] + simplex[1, 0])
        c1 = 0.5 * (simplex[0, 1] + simplex[1, 1])
        r0 = 2.0 * c0 - simplex[2, 0]
        r1 = 2.0 * c1 - simplex[2, 1]
        fr = _garch_objective_nb(x, target, r0, r1)
        if fr < values[0]:
            e0 = 3.0 * c0 - 2.0 * simplex[2, 0]
            e1 = 3.0 * c1 - 2.0 * simplex[2, 1]
            fe = _garch_objective_nb(x, target, e0, e1)
            if fe < fr:
                simplex[2, 0], simplex[2, 1], values[2] = e0, e1, fe
            else:
                simplex[2, 0], simplex[2, 1], values[2] = r0, r1, fr
        elif fr < values[1]:
            simplex[2, 0], simplex[2, 1], values[2] = r0, r1, fr
        else:
            if fr < values[2]:
                k0 = c0 + 0.5 * (r0 - c0)
                k1 = c1 + 0.5 * (r1 - c1)
            else:
                k0 = c0 + 0.5 * (simplex[2, 0] - c0)
                k1 = c1 + 0.5 * (simplex[2, 1] - c1)
            fk = _garch_objective_nb(x, target, k0, k1)
            if fk < min(fr, values[2]):
                simplex[2, 0], simplex[2, 1], values[2] = k0, k1, fk
            else:
                for i in range(1, 3):
                    simplex[i, 0] = simplex[0, 0] + 0.5 * (simplex[i, 0] - simplex[0, 0])
                    simplex[i, 1] = simplex[0, 1] + 0.5 * (simplex[i, 1] - simplex[0, 1])
                    values[i] = _garch_objective_nb(x, target, simplex[i, 0], simplex[i, 1])
    best = 0
    for i in range(1, 3):
        if values[i] < values[best]:
            best = i
    return simplex[best, 0], simplex[best, 1], values[best]


@njit(cache=True, error_model="numpy")
def garch_fit_nb(returns: np.ndarray) -> tuple[float, float, float, float, int]:
    """Return (omega, a, b, negative log-likelihood, status) of a variance-targeted GARCH(1,1) QMLE fit.

    The likelihood is 1/2 sum (log sigma2_t + r2_t / sigma2_t) without the constant n log(2 pi) / 2.
    Fewer than GARCH_MIN_OBSERVATIONS valid returns: INSUFFICIENT_DATA. All returns zero: (0, 0, 0).
    """
    x = finite_nb(returns)
    n = x.shape[0]
    if n < GARCH_MIN_OBSERVATIONS:
        return np.nan, np.nan, np.nan, np.nan, INSUFFICIENT_DATA
    target = 0.0
    for t in range(n):
        target += x[t] * x[t]
    target /= n
    if target == 0.0:
        return 0.0, 0.0, 0.0, np.nan, OK
    persistence = GARCH_START_A + GARCH_START_B
    u1 = math.log(persistence / (PERSISTENCE_MAX - persistence))
    u2 = math.log(GARCH_START_A / GARCH_START_B)
    u1, u2, value = _nelder_mead_nb(x, target, u1, u2, 0.5)
    u1, u2, value = _nelder_mead_nb(x, target, u1, u2, 0.05)
    a, b = _garch_params_nb(u1, u2)
    return target * (1.0 - a - b), a, b, value, OK


@njit(cache=True, error_model="numpy")
def fhs_from_variance_nb(x: np.ndarray, sigma2: np.ndarray, window: int, alphas: np.ndarray, var_out: np.ndarray,
                         es_out: np.ndarray) -> int:
    """Write FHS VaR and ES per level from a finite series and its variance path; return status."""
    n = x.shape[0]
    start = max(0, n - window)
    z = np.empty(n - start)
    m = 0
    for t in range(start, n):
        s2 = sigma2[t]
        if s2 > 0.0:
            z[m] = x[t] / math.sqrt(s2)
            m += 1
        elif s2 == 0.0 and x[t] == 0.0:
            z[m] = 0.0
            m += 1
    if m == 0 or not (sigma2[n] >= 0.0):
        return INSUFFICIENT_DATA
    var_z, es_z, code = historical_var_es_levels_nb(z[:m], alphas)
    if code != OK:
        return code
    sigma_next = math.sqrt(sigma2[n])
    for level in range(alphas.shape[0]):
        var_out[level] = sigma_next * var_z[level]
        es_out[level] = sigma_next * es_z[level]
    return OK


@njit(cache=True, error_model="numpy")
def fhs_var_es_nb(
    returns: np.ndarray, window: int, alpha: float, model: int, lam: float, omega: float, a: float, b: float
) -> tuple[float, float, float, int]:
    """Return (VaR, ES, sigma forecast, status) by FHS ranking the residuals of the last `window` valid returns.

    model MODEL_EWMA uses `lam`; MODEL_GARCH uses (omega, a, b) (see `garch_fit_nb`). The filter runs over
    all the valid returns given, so a longer series only warms it up.
    """
    if not (0.0 < alpha < 1.0) or window < 2:
        return np.nan, np.nan, np.nan, INVALID_ARGUMENT
    x = finite_nb(returns)
    if x.shape[0] < 2:
        return np.nan, np.nan, np.nan, INSUFFICIENT_DATA
    if model == MODEL_EWMA:
        if not (0.0 < lam < 1.0):
            return np.nan, np.nan, np.nan, INVALID_ARGUMENT
        sigma2 = ewma_variance_nb(x, lam)
    elif model == MODEL_GARCH:
        if not (omega >= 0.0 and a >= 0.0 and b >= 0.0 and a + b < 1.0):
            return np.nan, np.nan, np.nan, INVALID_ARGUMENT
        sigma2 = garch_variance_nb(x, omega, a, b)
    else:
        return np.nan, np.nan, np.nan, INVALID_ARGUMENT
    var = np.full(1, np.nan)
    es = np.full(1, np.nan)
    code = fhs_from_variance_nb(x, sigma2, window, np.array([alpha]), var, es)
    return var[0], es[0], math.sqrt(sigma2[x.shape[0]]), code
