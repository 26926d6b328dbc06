"""Realized volatility kernels: rolling standard deviation of returns and its ratio to its own average.

Input contract
- `returns` (or `x`): float64, 1-D (T,) or 2-D (T, N) with rows as time, oldest first. Non-finite entries
  are missing observations: skipped, and they do not count towards `min_periods`.
- `window` >= 1 rows, 1 <= `min_periods` <= `window`, 0 <= `ddof` < `min_periods`; a row is NaN until
  its window holds `min_periods` finite observations (pandas' `rolling(window, min_periods).std(ddof)`).
- Volatility is per observation period (not annualised): the ratio is what the breakers use.
- Kernels return (array, status) with a code from `qmp_kernels.status` and never raise.

Running sums are shifted by an anchor near the data and recomputed from the window every `window`
steps, so rounding does not accumulate over long series; a window whose finite values are all equal has
a standard deviation of exactly 0, not a rounding residue that would make a ratio explode.
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.status import INVALID_ARGUMENT, OK


@njit(cache=True)
def _args_ok_nb(window: int, min_periods: int) -> bool:
    return window >= 1 and 1 <= min_periods <= window


@njit(cache=True)
def rolling_mean_1d_nb(x: np.ndarray, window: int, min_periods: int) -> tuple[np.ndarray, int]:
    """Return (rolling mean of the finite values in the last `window` rows, status)."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if not _args_ok_nb(window, min_periods):
        return out, INVALID_ARGUMENT
    total = 0.0
    count = 0
    for t in range(n):
        if t >= window and np.isfinite(x[t - window]):
            total -= x[t - window]
            count -= 1
        if np.isfinite(x[t]):
            total += x[t]
            count += 1
        if (t + 1) % window == 0:
            total = 0.0
            for s in range(t + 1 - window, t + 1):
                if np.isfinite(x[s]):
                    total += x[s]
        if count >= min_periods:
            out[t] = total / count
    return out, OK


@njit(cache=True)
def rolling_std_1d_nb(x: np.ndarray, window: int, ddof: int, min_periods: int) -> tuple[np.ndarray, int]:
    """Return (rolling standard deviation of the finite values in the last `window` rows, status)."""
    n = x.shape[0]
    out = np.full(n, np.nan)
    if not _args_ok_nb(window, min_periods) or not (0 <= ddof < min_periods):
        return out, INVALID_ARGUMENT
    anchor = np.nan
    s1 = 0.0
    s2 = 0.0
    count = 0
    equal_run = 0  # how many of the latest finite values are equal to the latest one
    last = np.nan
    for t in range(n):
        if t >= window and np.isfinite(x[t - window]):
            d = x[t - window] - anchor
            s1 -= d
            s2 -= d * d
            count -= 1
        value = x[t]
        if np.isfinite(value):
            if not np.isfinite(anchor):
                anchor = value
            d = value - anchor
            s1 += d
            s2 += d * d
            count += 1
            equal_run = equal_run + 1 if value == last else 1
            last = value
        if (t + 1) % window == 0 and count > 0:
            # Re-anchor on the window mean and recompute: bounds drift and keeps the sums well conditioned.
            mean = 0.0
            for s in range(t + 1 - window, t + 1):
                if np.isfinite(x[s]):
                    mean += x[s]
            anchor = mean / count
            s1 = 0.0
            s2 = 0.0
            for s in range(t + 1 - window, t + 1):
                if np.isfinite(x[s]):
                    d = x[s] - anchor
                    s1 += d
                    s2 += d * d
        if count >= min_periods and count > ddof:
            if equal_run >= count:
                out[t] = 0.0
            else:
                variance = (s2 - s1 * s1 / count) / (count - ddof)
                out[t] = math.sqrt(variance) if variance > 0.0 else 0.0
    return out, OK


@njit(cache=True)
def rolling_std_nb(x: np.ndarray, window: int, ddof: int, min_periods: int) -> tuple[np.ndarray, int]:
    """Return (rolling standard deviation of each column of a (T, N) array, status)."""
    out = np.full(x.shape, np.nan)
    status = OK
    for col in range(x.shape[1]):
        column, status = rolling_std_1d_nb(x[:, col].copy(), window, ddof, min_periods)
        if status != OK:
            return out, status
        out[:, col] = column
    return out, status


@njit(cache=True)
def vol_ratio_1d_nb(returns: np.ndarray, vol_window: int, average_window: int) -> tuple[np.ndarray, int]:
    """Return (realized vol / its own trailing average, status) per row.

    vol(t) is the std (ddof=1) of the last `vol_window` returns, all of them finite; the average is the
    mean of vol over the last `average_window` rows including t, all of them defined and positive. A vol
    of 0 is a flat book (no position, nothing moved), not a calm market: an average over it has no
    baseline to compare with (a book trading again after `average_window` flat rows would read exactly
    `average_window` times its own vol), so the ratio is NaN until the average holds no flat row.
    """
    n = returns.shape[0]
    ratio = np.full(n, np.nan)
    if vol_window < 2 or average_window < 1:
        return ratio, INVALID_ARGUMENT
    vol, _ = rolling_std_1d_nb(returns, vol_window, 1, vol_window)
    average, _ = rolling_mean_1d_nb(vol, average_window, average_window)
    flat = 0  # flat vols (== 0) among the last `average_window` rows
    for t in range(n):
        if vol[t] == 0.0:
            flat += 1
        if t >= average_window and vol[t - average_window] == 0.0:
            flat -= 1
        if flat == 0 and np.isfinite(average[t]) and average[t] > 0.0 and np.isfinite(vol[t]):
            ratio[t] = vol[t] / average[t]
    return ratio, OK
