"""Market-impact (slippage) kernels: the cost of an order as a fraction of its arrival price, and its fit.

Model (Almgren, Thum, Hauptmann & Li 2005, "Direct estimation of equity market impact", Risk 18(7)):

    cost = half_spread
         + eta * sigma * participation ** beta                                  (temporary impact)
         + 0.5 * gamma * sigma * (X / V) ** alpha * (Theta / V) ** delta        (half the permanent impact)
    participation = X / (V * T)

with X the order size in shares (its sign is ignored: a buy and a sell of the same size cost the same),
V the average daily volume in shares, T the execution time in days, sigma the daily volatility of the
symbol's returns and Theta / V the inverse of the daily turnover (shares outstanding over daily volume).
The paper's estimates are ETA = 0.142, BETA = 0.600, GAMMA = 0.314, ALPHA = 0.891, DELTA = 0.267. The
square-root law is the special case eta = Y (about 1), beta = 0.5, gamma = 0.

Input contract
- `quantity`, `sigma`, `adv`, `exec_days`: float64 1-D arrays of one length N. `sigma` >= 0 (a non-finite
  sigma costs only the half-spread); `adv` and `exec_days` > 0 where volume is known; where they are not
  (non-positive or non-finite), `unknown_participation` stands in for X / (V T) and for X / V.
- `noise`: float64 (N,) standard normal draws (the caller seeds them), or an empty array for none: the
  impact part is multiplied by exp(noise_scale * z - noise_scale**2 / 2), which keeps its mean.
- Costs are clipped to `max_cost`. Every kernel returns a status code (`qmp_kernels.status`) and
  never raises; on INVALID_ARGUMENT the outputs are NaN.

Fit: `fit_impact_nb` recovers (half_spread, eta, beta) from realized costs by least squares: for a given
beta the model is linear in (half_spread, eta), solved in closed form; beta minimises the residual sum of
squares over [beta_lo, beta_hi] (coarse grid, then golden-section search in the best bracket).
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK

# Almgren, Thum, Hauptmann & Li (2005), table 3.
ETA = 0.142
BETA = 0.600
GAMMA = 0.314
ALPHA = 0.891
DELTA = 0.267
SQRT_LAW_Y = 1.0

MIN_FIT_RECORDS = 3
_GRID = 41
_GOLDEN = 0.6180339887498949


@njit(cache=True)
def participation_nb(quantity: np.ndarray, adv: np.ndarray, exec_days: np.ndarray,
                     unknown_participation: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (X / (V T), X / V) per order; `unknown_participation` where volume or time is unknown."""
    n = quantity.shape[0]
    rate = np.empty(n)
    share = np.empty(n)
    for i in range(n):
        q = abs(quantity[i])
        v = adv[i]
        t = exec_days[i]
        if np.isfinite(v) and v > 0.0 and np.isfinite(t) and t > 0.0:
            share[i] = q / v
            rate[i] = q / (v * t)
        else:
            share[i] = unknown_participation if q > 0.0 else 0.0
            rate[i] = share[i]
    return rate, share


@njit(cache=True)
def impact_cost_nb(quantity: np.ndarray, sigma: np.ndarray, adv: np.ndarray, exec_days: np.ndarray,
                   half_spread: float, eta: float, beta: float, gamma: float, alpha: float, delta: float,
                   turnover_inverse: float, unknown_participation: float, max_cost: float,
                   noise: np.ndarray, noise_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (cost fraction, participation X / (V T), status) per order."""
    n = quantity.shape[0]
    cost = np.full(n, np.nan)
    if (half_spread < 0.0 or eta < 0.0 or beta <= 0.0 or gamma < 0.0 or alpha <= 0.0 or delta < 0.0
            or turnover_inverse <= 0.0 or unknown_participation < 0.0 or max_cost <= 0.0 or noise_scale < 0.0
            or sigma.shape[0] != n or adv.shape[0] != n or exec_days.shape[0] != n
            or (noise.shape[0] != 0 and noise.shape[0] != n)):
        return cost, np.full(n, np.nan), INVALID_ARGUMENT
    rate, share = participation_nb(quantity, adv, exec_days, unknown_participation)
    permanent_scale = 0.5 * gamma * turnover_inverse ** delta
    for i in range(n):
        s = sigma[i]
        impact = 0.0
        if np.isfinite(s) and s > 0.0 and rate[i] > 0.0:
            impact = eta * s * rate[i] ** beta + permanent_scale * s * share[i] ** alpha
            if noise.shape[0] == n and noise_scale > 0.0 and np.isfinite(noise[i]):
                impact *= math.exp(noise_scale * noise[i] - 0.5 * noise_scale * noise_scale)
        cost[i] = min(half_spread + impact, max_cost)
    return cost, rate, OK


@njit(cache=True)
def _sse_nb(y: np.ndarray, sigma: np.ndarray, rate: np.ndarray, beta: float, fit_spread: bool,
            half_spread: float) -> tuple[float, float, float]:
    """Return (SSE, half_spread, eta) of the least-squares fit of y = s + eta * sigma * rate**beta."""
    n = y.shape[0]
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    sxy = 0.0
    for i in range(n):
        x = sigma[i] * rate[i] ** beta
        sx += x
        sy += y[i]
        sxx += x * x
        sxy += x * y[i]
    s = half_spread
    eta = 0.0
    if fit_spread:
        det = n * sxx - sx * sx
        if det > 0.0:
            eta = (n * sxy - sx * sy) / det
            s = (sy - eta * sx) / n
        if s < 0.0 or det <= 0.0:  # a negative spread is not a spread: refit through the origin
            s = 0.0
            eta = sxy / sxx if sxx > 0.0 else 0.0
    else:
        eta = (sxy - s * sx) / sxx if sxx > 0.0 else 0.0
    if eta < 0.0:
        eta = 0.0
        s = sy / n if fit_spread else half_spread
    sse = 0.0
    for i in range(n):
        r = y[i] - s - eta * sigma[i] * rate[i] ** beta
        sse += r * r
    return sse, s, eta


@njit(cache=True)
def fit_impact_nb(cost: np.ndarray, sigma: np.ndarray, rate: np.ndarray, fixed: np.ndarray,
                  beta_lo: float, beta_hi: float, fit_spread: bool,
                  half_spread: float) -> tuple[float, float, float, float, int, int]:
    """Fit cost - fixed = half_spread + eta * sigma * rate**beta; return (half_spread, eta, beta, r2, n, status).

    `fixed` is the part of each cost the fit must not explain (e.g. half the permanent impact at known
    coefficients; zeros for none). Records with a non-finite value, sigma <= 0 or rate <= 0 are skipped.
    With `fit_spread` False the half-spread is held at `half_spread`.
    """
    m = cost.shape[0]
    if (not (0.0 < beta_lo < beta_hi) or sigma.shape[0] != m or rate.shape[0] != m or fixed.shape[0] != m
            or half_spread < 0.0):
        return np.nan, np.nan, np.nan, np.nan, 0, INVALID_ARGUMENT
    keep = np.zeros(m, dtype=np.bool_)
    for i in range(m):
        keep[i] = (np.isfinite(cost[i]) and np.isfinite(sigma[i]) and np.isfinite(rate[i])
                   and np.isfinite(fixed[i]) and sigma[i] > 0.0 and rate[i] > 0.0)
    y = (cost - fixed)[keep]
    s_arr = sigma[keep]
    r_arr = rate[keep]
    n = y.shape[0]
    if n < MIN_FIT_RECORDS:
        return np.nan, np.nan, np.nan, np.nan, n, INSUFFICIENT_DATA
    step = (beta_hi - beta_lo) / (_GRID - 1)
    best_k = 0
    best = np.inf
    for k in range(_GRID):
        sse, _, _ = _sse_nb(y, s_arr, r_arr, beta_lo + k * step, fit_spread, half_spread)
        if sse < best:
            best = sse
            best_k = k
    lo = beta_lo + max(best_k - 1, 0) * step
    hi = beta_lo + min(best_k + 1, _GRID - 1) * step
    a = hi - _GOLDEN * (hi - lo)
    b = lo + _GOLDEN * (hi - lo)
    fa, _, _ = _sse_nb(y, s_arr, r_arr, a, fit_spread, half_spread)
    fb, _, _ = _sse_nb(y, s_arr, r_arr, b, fit_spread, half_spread)
    for _ in range(60):
        if fa < fb:
            hi = b
            b = a
            fb = fa
            a = hi - _GOLDEN * (hi - lo)
            fa, _, _ = _sse_nb(y, s_arr, r_arr, a, fit_spread, half_spread)
        else:
            lo = a
            a = b
            fa = fb
            b = lo + _GOLDEN * (hi - lo)
            fb, _, _ = _sse_nb(y, s_arr, r_arr, b, fit_spread, half_spread)
    beta = 0.5 * (lo + hi)
    sse, s, eta = _sse_nb(y, s_arr, r_arr, beta, fit_spread, half_spread)
    mean = y.mean()
    total = 0.0
    for i in range(n):
        total += (y[i] - mean) ** 2
    r2 = 1.0 - sse / total if total > 0.0 else np.nan
    return s, eta, beta, r2, n, OK
