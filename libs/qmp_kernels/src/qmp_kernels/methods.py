"""Every VaR / ES method at every level over one return series: what the risk service and `qmp risk var` run.

Input contract
- `returns`: 1-D float64, oldest first (a portfolio's revalued P&L fractions, or one symbol's returns);
  non-finite entries are dropped first.
- `window`: the methods rank or fit the last `window` valid returns; the FHS filters run over all the
  valid returns given (so a longer series warms the EWMA up) and rank the residuals of the last `window`.
- `alphas`: levels in (0, 1), all beyond `evt_threshold` (EVT fits the tail above that loss quantile).
- `garch`: (omega, a, b); a NaN omega means "fit on the series" (see `fhs.garch_fit_nb`).
- `methods`: a boolean mask over METHOD_* choosing which to compute (the others stay NaN, status OK).
Outputs: VaR and ES of shape (N_METHODS, L), one status per method, and INFO_* fitted parameters.
Formulas: `var.py` (historical, normal, Cornish-Fisher), `student_t.py` (maximum-likelihood t), `fhs.py`,
`evt.py`.
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.evt import evt_var_es_ascending_nb
from qmp_kernels.fhs import (
    ewma_variance_nb,
    fhs_from_variance_nb,
    finite_nb,
    garch_fit_nb,
    garch_variance_nb,
)
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK
from qmp_kernels.student_t import t_fit_nb, t_var_es_from_fit_nb
from qmp_kernels.var import (
    cornish_fisher_var_es_from_moments_nb,
    historical_var_es_levels_nb,
    moments_nb,
    normal_var_es_from_moments_nb,
    rolling_historical_var_es,
)

METHOD_HISTORICAL = 0
METHOD_NORMAL = 1
METHOD_STUDENT_T = 2
METHOD_CORNISH_FISHER = 3
METHOD_FHS_EWMA = 4
METHOD_FHS_GARCH = 5
METHOD_EVT = 6
N_METHODS = 7
METHOD_NAMES = ("historical", "normal", "student_t", "cornish_fisher", "fhs_ewma", "fhs_garch", "evt")

INFO_N = 0
INFO_MEAN = 1
INFO_STD = 2
INFO_SKEW = 3
INFO_KURT = 4
INFO_NU = 5
INFO_SIGMA_EWMA = 6
INFO_OMEGA = 7
INFO_A = 8
INFO_B = 9
INFO_SIGMA_GARCH = 10
INFO_XI = 11
INFO_BETA = 12
N_INFO = 13

MIN_MOMENT_OBSERVATIONS = 4


def method_index(name: str) -> int:
    """Return the METHOD_* index of a method name; ValueError naming the known ones otherwise."""
    try:
        return METHOD_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHOD_NAMES)}") from None


def level_key(alpha: float) -> str:
    """Return the snapshot key suffix of a level: 0.95 -> '95', 0.975 -> '975', 0.99 -> '99'."""
    return f"{alpha * 100:.10g}".replace(".", "")


def all_methods() -> np.ndarray:
    return np.ones(N_METHODS, dtype=np.bool_)


@njit(cache=True, error_model="numpy")
def var_es_methods_nb(
    returns: np.ndarray, window: int, alphas: np.ndarray, lam: float, evt_threshold: float, garch: np.ndarray,
    methods: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (VaR (N_METHODS, L), ES (N_METHODS, L), status (N_METHODS,), INFO_* values)."""
    n_levels = alphas.shape[0]
    var = np.full((N_METHODS, n_levels), np.nan)
    es = np.full((N_METHODS, n_levels), np.nan)
    codes = np.zeros(N_METHODS, dtype=np.int64)
    info = np.full(N_INFO, np.nan)
    ok = window >= 2 and n_levels > 0 and methods.shape[0] == N_METHODS and garch.shape[0] == 3
    for level in range(n_levels):
        ok = ok and 0.0 < alphas[level] < 1.0
    if not ok:
        codes[:] = INVALID_ARGUMENT
        return var, es, codes, info
    series = finite_nb(returns)
    x = series[max(0, series.shape[0] - window):]
    n = x.shape[0]
    info[INFO_N] = n
    if methods[METHOD_HISTORICAL]:
        v, e, code = historical_var_es_levels_nb(x, alphas)
        var[METHOD_HISTORICAL], es[METHOD_HISTORICAL], codes[METHOD_HISTORICAL] = v, e, code
    count, mean, std, skew, kurt = moments_nb(x)
    info[INFO_MEAN], info[INFO_STD], info[INFO_SKEW], info[INFO_KURT] = mean, std, skew, kurt
    t_mu, t_scale, nu, t_code = np.nan, np.nan, np.nan, OK
    if methods[METHOD_STUDENT_T] and count >= MIN_MOMENT_OBSERVATIONS:
        t_mu, t_scale, nu, t_code = t_fit_nb(x)
        info[INFO_NU] = nu
    for level in range(n_levels):
        alpha = alphas[level]
        if methods[METHOD_NORMAL]:
            if count < 2:
                codes[METHOD_NORMAL] = INSUFFICIENT_DATA
            else:
                var[METHOD_NORMAL, level], es[METHOD_NORMAL, level], code = normal_var_es_from_moments_nb(
                    mean, std, alpha)
                codes[METHOD_NORMAL] = max(codes[METHOD_NORMAL], code)
        if methods[METHOD_STUDENT_T]:
            if count < MIN_MOMENT_OBSERVATIONS:
                codes[METHOD_STUDENT_T] = INSUFFICIENT_DATA
            else:
                v, e, code = t_var_es_from_fit_nb(t_mu, t_scale, nu, alpha) if t_code == OK else (np.nan, np.nan,
                                                                                                   t_code)
                var[METHOD_STUDENT_T, level], es[METHOD_STUDENT_T, level] = v, e
                codes[METHOD_STUDENT_T] = max(codes[METHOD_STUDENT_T], code)
        if methods[METHOD_CORNISH_FISHER]:
            if count < MIN_MOMENT_OBSERVATIONS:
                codes[METHOD_CORNISH_FISHER] = INSUFFICIENT_DATA
            else:
                v, e, code = cornish_fisher_var_es_from_moments_nb(mean, std, skew, kurt, alpha)
                var[METHOD_CORNISH_FISHER, level], es[METHOD_CORNISH_FISHER, level] = v, e
                codes[METHOD_CORNISH_FISHER] = max(codes[METHOD_CORNISH_FISHER], code)
    v_out = np.full(n_levels, np.nan)
    e_out = np.full(n_levels, np.nan)
    if methods[METHOD_FHS_EWMA]:
        if not (0.0 < lam < 1.0):
            codes[METHOD_FHS_EWMA] = INVALID_ARGUMENT
        elif series.shape[0] < 2:
            codes[METHOD_FHS_EWMA] = INSUFFICIENT_DATA
        else:
            sigma2 = ewma_variance_nb(series, lam)
            codes[METHOD_FHS_EWMA] = fhs_from_variance_nb(series, sigma2, window, alphas, v_out, e_out)
            var[METHOD_FHS_EWMA], es[METHOD_FHS_EWMA] = v_out, e_out
            info[INFO_SIGMA_EWMA] = math.sqrt(sigma2[series.shape[0]])
    if methods[METHOD_FHS_GARCH]:
        omega, a, b = garch[0], garch[1], garch[2]
        code = OK
        if math.isnan(omega):
            omega, a, b, _, code = garch_fit_nb(series)
        info[INFO_OMEGA], info[INFO_A], info[INFO_B] = omega, a, b
        if code != OK:
            codes[METHOD_FHS_GARCH] = code
        elif not (omega >= 0.0 and a >= 0.0 and b >= 0.0 and a + b < 1.0):
            codes[METHOD_FHS_GARCH] = INVALID_ARGUMENT
        else:
            v_out[:] = np.nan
            e_out[:] = np.nan
            sigma2 = garch_variance_nb(series, omega, a, b)
            codes[METHOD_FHS_GARCH] = fhs_from_variance_nb(series, sigma2, window, alphas, v_out, e_out)
            var[METHOD_FHS_GARCH], es[METHOD_FHS_GARCH] = v_out, e_out
            info[INFO_SIGMA_GARCH] = math.sqrt(sigma2[series.shape[0]])
    if methods[METHOD_EVT]:
        v_out[:] = np.nan
        e_out[:] = np.nan
        xi, beta, code = evt_var_es_ascending_nb(np.sort(x), n, alphas, evt_threshold, v_out, e_out)
        var[METHOD_EVT], es[METHOD_EVT], codes[METHOD_EVT] = v_out, e_out, code
        info[INFO_XI], info[INFO_BETA] = xi, beta
    return var, es, codes, info


@njit(cache=True, error_model="numpy")
def rolling_var_es_method_nb(
    returns: np.ndarray, window: int, alpha: float, method: int, lam: float, evt_threshold: float,
    garch_refit_every: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (VaR[t], ES[t], status[t]) of one method from the valid returns up to and including row t.

    Row t is the forecast for row t + 1 (a backtest pairs VaR[t] with returns[t + 1]). NaN (and
    INSUFFICIENT_DATA) until `window` valid returns are in. FHS rows filter over all returns so far;
    GARCH is refitted every `garch_refit_every` rows and its parameters reused in between.
    """
    n_rows = returns.shape[0]
    var = np.full(n_rows, np.nan)
    es = np.full(n_rows, np.nan)
    codes = np.full(n_rows, INSUFFICIENT_DATA, dtype=np.int64)
    if not (0 <= method < N_METHODS) or window < 2 or garch_refit_every < 1:
        codes[:] = INVALID_ARGUMENT
        return var, es, codes
    mask = np.zeros(N_METHODS, dtype=np.bool_)
    mask[method] = True
    alphas = np.array([alpha])
    garch = np.full(3, np.nan)
    valid_rows = np.empty(n_rows, dtype=np.int64)
    valid = 0
    since_fit = garch_refit_every
    filtered = method == METHOD_FHS_EWMA or method == METHOD_FHS_GARCH
    for t in range(n_rows):
        if math.isfinite(returns[t]):
            valid_rows[valid] = t
            valid += 1
        if valid < window:
            continue
        start = 0 if filtered else valid_rows[valid - window]
        if method == METHOD_FHS_GARCH:
            if since_fit >= garch_refit_every:
                garch[:] = np.nan
            else:
                since_fit += 1
        v, e, c, info = var_es_methods_nb(returns[start:t + 1], window, alphas, lam, evt_threshold, garch, mask)
        if method == METHOD_FHS_GARCH and math.isnan(garch[0]):
            garch[0], garch[1], garch[2] = info[INFO_OMEGA], info[INFO_A], info[INFO_B]
            since_fit = 1
        var[t], es[t], codes[t] = v[method, 0], e[method, 0], c[method]
    return var, es, codes


def rolling_var_es(returns: np.ndarray, window: int, alpha: float, method: str, lam: float, evt_threshold: float,
                   garch_refit_every: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return rolling (VaR, ES, status) of one named method on a 1-D series (historical uses the fast kernel)."""
    index = method_index(method)
    series = np.ascontiguousarray(returns, dtype=np.float64)
    if index == METHOD_HISTORICAL and np.isfinite(series).all():
        var, es, code = rolling_historical_var_es(series.reshape(-1, 1), window, alpha)
        codes = np.where(np.isfinite(var[:, 0]), OK, INSUFFICIENT_DATA if code == OK else code)
        return var[:, 0], es[:, 0], codes.astype(np.int64)
    return rolling_var_es_method_nb(series, window, alpha, index, lam, evt_threshold, garch_refit_every)
