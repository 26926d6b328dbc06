"""Stress kernels: path drawdowns and a seeded Monte Carlo of a GARCH-t process with jumps.

Input contract
- `returns`: 1-D float64 book returns (fractions of equity), oldest first; non-finite entries dropped.
- Monte Carlo parameters come from `calibrate_garch_t_jump_nb` or the caller; the same seed gives the
  same paths (numba's generator, seeded inside the kernel).
- Kernels return status codes and never raise.

Model (per day t of a path, equity starting at 1)
  r_t = sigma_t z_t + J_t,  z_t ~ standardized Student-t(nu) (unit variance; normal when nu = inf),
  J_t = sum of N_t ~ Poisson(lambda) jumps, each normal(mu_J, sigma_J),
  sigma2_{t+1} = omega + a r_t^2 + b sigma2_t  (jumps feed the volatility, as crashes do),
  equity_t = equity_{t-1} (1 + r_t), floored at 0 (a loss beyond the book's value ends the path).
The path's maximum drawdown is max_t (1 - equity_t / max_{s<=t} equity_s).

Calibration (`calibrate_garch_t_jump_nb`) on a historical book return series: GARCH(1,1) by
`fhs.garch_fit_nb`; standardized residuals z = r / sigma; days with |z| > JUMP_Z are the jumps
(lambda = their share of days, mu_J and sigma_J their mean and standard deviation, in return units);
nu by the method of moments (4 + 6 / excess kurtosis) on the remaining residuals; sigma2_0 is the
filtered variance forecast for the next day.
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.fhs import finite_nb, garch_fit_nb, garch_variance_nb
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK
from qmp_kernels.var import moments_nb, student_t_nu_nb

JUMP_Z = 4.0
MC_OMEGA = 0
MC_A = 1
MC_B = 2
MC_NU = 3
MC_SIGMA2_0 = 4
MC_JUMP_INTENSITY = 5
MC_JUMP_MEAN = 6
MC_JUMP_STD = 7
MC_FIELDS = 8


@njit(cache=True, error_model="numpy")
def path_max_drawdown_nb(returns: np.ndarray) -> tuple[float, float]:
    """Return (maximum drawdown, total return) of compounding the finite returns from equity 1."""
    equity = 1.0
    peak = 1.0
    worst = 0.0
    for t in range(returns.shape[0]):
        r = returns[t]
        if not math.isfinite(r):
            continue
        equity = max(equity * (1.0 + r), 0.0)
        if equity > peak:
            peak = equity
        drawdown = 1.0 - equity / peak
        if drawdown > worst:
            worst = drawdown
    return worst, equity - 1.0


@njit(cache=True, error_model="numpy")
def worst_window_loss_nb(returns: np.ndarray, days: int) -> float:
    """Return the largest loss of equity over any `days` consecutive finite returns (0 if never a loss)."""
    x = finite_nb(returns)
    worst = 0.0
    for start in range(x.shape[0]):
        equity = 1.0
        for t in range(start, min(x.shape[0], start + days)):
            equity *= 1.0 + x[t]
            if 1.0 - equity > worst:
                worst = 1.0 - equity
    return worst


@njit(cache=True, error_model="numpy")
def calibrate_garch_t_jump_nb(returns: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (MC_* parameters, status) fitted to a historical return series (see module docstring)."""
    params = np.full(MC_FIELDS, np.nan)
    x = finite_nb(returns)
    omega, a, b, _, code = garch_fit_nb(x)
    if code != OK:
        return params, code
    sigma2 = garch_variance_nb(x, omega, a, b)
    n = x.shape[0]
    z = np.empty(n)
    kept = 0
    jumps = 0
    jump_sum = 0.0
    jump_squares = 0.0
    for t in range(n):
        if not (sigma2[t] > 0.0):
            continue
        zt = x[t] / math.sqrt(sigma2[t])
        if abs(zt) > JUMP_Z:
            jumps += 1
            jump_sum += x[t]
            jump_squares += x[t] * x[t]
        else:
            z[kept] = zt
            kept += 1
    if kept < 4:
        return params, INSUFFICIENT_DATA
    _, _, _, _, kurt = moments_nb(z[:kept])
    params[MC_OMEGA], params[MC_A], params[MC_B] = omega, a, b
    params[MC_NU] = max(student_t_nu_nb(kurt), 4.0 + 1e-6)
    params[MC_SIGMA2_0] = sigma2[n]
    params[MC_JUMP_INTENSITY] = jumps / n
    if jumps > 0:
        mean = jump_sum / jumps
        params[MC_JUMP_MEAN] = mean
        params[MC_JUMP_STD] = math.sqrt(max(jump_squares / jumps - mean * mean, 0.0))
    else:
        params[MC_JUMP_MEAN] = 0.0
        params[MC_JUMP_STD] = 0.0
    return params, OK


@njit(cache=True, error_model="numpy")
def garch_t_jump_max_drawdown_nb(params: np.ndarray, horizon: int, paths: int, seed: int) -> tuple[
    np.ndarray, np.ndarray, int
]:
    """Return (max drawdown per path, total return per path, status) of `paths` simulated `horizon`-day paths."""
    drawdowns = np.full(max(paths, 0), np.nan)
    totals = np.full(max(paths, 0), np.nan)
    if horizon < 1 or paths < 1 or params.shape[0] != MC_FIELDS:
        return drawdowns, totals, INVALID_ARGUMENT
    omega, a, b, nu = params[MC_OMEGA], params[MC_A], params[MC_B], params[MC_NU]
    intensity, jump_mean, jump_std = params[MC_JUMP_INTENSITY], params[MC_JUMP_MEAN], params[MC_JUMP_STD]
    if not (omega >= 0.0 and a >= 0.0 and b >= 0.0 and a + b < 1.0 and nu > 2.0 and params[MC_SIGMA2_0] >= 0.0
            and intensity >= 0.0 and jump_std >= 0.0 and math.isfinite(jump_mean)):
        return drawdowns, totals, INVALID_ARGUMENT
    np.random.seed(seed)
    t_scale = math.sqrt((nu - 2.0) / nu) if math.isfinite(nu) else 1.0
    for p in range(paths):
        s2 = params[MC_SIGMA2_0]
        equity = 1.0
        peak = 1.0
        worst = 0.0
        for _ in range(horizon):
            z = np.random.standard_t(nu) * t_scale if math.isfinite(nu) else np.random.standard_normal()
            r = math.sqrt(s2) * z
            if intensity > 0.0:
                for _ in range(np.random.poisson(intensity)):
                    r += jump_mean + jump_std * np.random.standard_normal()
            equity = max(equity * (1.0 + r), 0.0)
            if equity > peak:
                peak = equity
            drawdown = 1.0 - equity / peak
            if drawdown > worst:
                worst = drawdown
            if equity == 0.0:
                break
            s2 = omega + a * r * r + b * s2
        drawdowns[p] = worst
        totals[p] = equity - 1.0
    return drawdowns, totals, OK
