"""Value at Risk and Expected Shortfall: historical simulation (point and rolling), parametric normal,
Student-t (`student_t.py`) and Cornish-Fisher. Filtered historical simulation is in `fhs.py`, EVT in `evt.py`.

Input contract
- `returns`: float64 P&L or return observations as fractions of value (a gain is positive, a loss
  negative): 1-D for point estimates, 2-D (T, N) for rolling ones (rows are time, columns are series).
  Non-finite entries (NaN, ±inf) are missing observations and are skipped.
- `alpha`: confidence level strictly inside (0, 1), e.g. 0.95, 0.975 or 0.99.
- VaR and ES come out as positive loss fractions (0.02 is a 2% loss); they are negative when even the
  tail is a gain. Every kernel also returns a code from `qmp_kernels.status`; where it cannot
  produce a number it returns NaN in its place, never raises.

Historical simulation
Sort the n valid observations ascending, x(0) <= ... <= x(n-1). With q = 1 - alpha the VaR observation
is x(k), k = floor((n - 1) * q): numpy's `np.quantile(x, q, method="lower")` and pandas'
`rolling(W).quantile(q, interpolation="lower")`. VaR = -x(k): never interpolated, so it is a loss that
happened, and the larger of the two neighbouring candidates. ES = -mean(x(0), ..., x(k)), the mean of the
k + 1 worst observations, i.e. of the losses at or beyond the VaR by rank (with ties at the VaR exactly
k + 1 observations are averaged).

Moments (shared by the parametric methods)
m = mean, s = standard deviation with ddof = 1, S = m3 / m2^1.5 (skewness) and K = m4 / m2^2 - 3 (excess
kurtosis) with the biased central moments m_r = sum (x - m)^r / n (scipy.stats.skew / kurtosis defaults).
A window whose values are all equal has s = S = K = 0 (a point mass: every method gives VaR = ES = -m).

Parametric normal
z = Phi^-1(alpha): VaR = s z - m and ES = s phi(z) / (1 - alpha) - m.

Student-t
Location, scale and degrees of freedom fitted by maximum likelihood: see `student_t.py`.
`student_t_nu_nb` keeps the method-of-moments nu = 4 + 6 / K (the excess kurtosis of a t with nu > 4 is
6 / (nu - 4)) for the Monte Carlo calibration in `stress.py`, which needs a finite fourth moment.

Cornish-Fisher (modified VaR, Zangari 1996; Favre-Galeano 2002)
With z = Phi^-1(1 - alpha) (negative):
z_cf = z + (z^2 - 1) S / 6 + (z^3 - 3z) K / 24 - (2 z^3 - 5z) S^2 / 36, VaR = -(m + s z_cf).
ES is the mean of the Cornish-Fisher VaR over the levels beyond alpha (the integral of the expanded
quantile function), which has the closed form
ES = -m + s phi(z) / (1 - alpha) [1 + z S / 6 + (z^2 - 1) K / 24 - (2 z^2 - 1) S^2 / 36].
The expansion is only monotone for moderate S and K; outside that region the numbers are what the
formula gives, not a distribution's.

Horizons
An h-day figure is sqrt(h) times the 1-day one (square-root-of-time rule; `scale_horizon_nb`).

Rolling historical kernel
Only the k + 1 smallest values of a window matter. Each column keeps a sorted "tail buffer" of at most M
(about 2(k + 1) + 8) of the window's smallest values: a new value enters only if it is below the buffer's
largest, a value leaving the window is removed only if it is in the buffer; when the buffer falls below
k + 1 values it is rebuilt from the window (O(W)), which happens rarely (about once per few hundred rows
on market returns). That is O(M) per cell instead of a sort or an O(W) shift. Rows are the outer loop
so that every read and write is contiguous; blocks of columns run on threads (`threads.py`).
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.special import norm_pdf_nb, norm_ppf_nb
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK
from qmp_kernels.student_t import student_t_mle_var_es_nb
from qmp_kernels.threads import blocks, run_blocks

__all__ = [
    "INTERPOLATION_HIGHER",
    "INTERPOLATION_LINEAR",
    "INTERPOLATION_LOWER",
    "cornish_fisher_var_es_from_moments_nb",
    "cornish_fisher_var_es_nb",
    "historical_var_es_levels_nb",
    "historical_var_es_nb",
    "mean_std_nb",
    "moments_nb",
    "norm_pdf_nb",
    "norm_ppf_nb",
    "normal_var_es_from_moments_nb",
    "normal_var_es_nb",
    "rolling_historical_var_es",
    "rolling_historical_var_es_into_nb",
    "rolling_historical_var_es_nb",
    "rolling_quantile_nb",
    "scale_horizon_nb",
    "student_t_nu_nb",
    "student_t_var_es_nb",
    "tail_buffer_size_nb",
    "tail_index_nb",
]

INTERPOLATION_LINEAR = 0
INTERPOLATION_LOWER = 1
INTERPOLATION_HIGHER = 2
TAIL_MARGIN = 8


@njit("int64(int64, float64)", cache=True, error_model="numpy")
def tail_index_nb(n: int, q: float) -> int:
    """Return k = floor((n - 1) * q), the rank of the q-quantile under the 'lower' convention."""
    return math.floor((n - 1) * q)


@njit(cache=True, error_model="numpy")
def _finite_sorted_nb(x: np.ndarray) -> np.ndarray:
    """Return the finite entries of a 1-D array, sorted ascending."""
    out = np.empty(x.shape[0], dtype=np.float64)
    n = 0
    for i in range(x.shape[0]):
        if np.isfinite(x[i]):
            out[n] = x[i]
            n += 1
    return np.sort(out[:n])


@njit(cache=True, error_model="numpy")
def _var_es_sorted_nb(ordered: np.ndarray, n: int, alpha: float) -> tuple[float, float]:
    """Return (VaR, ES) from the first n entries of an ascending array (n >= 1)."""
    k = tail_index_nb(n, 1.0 - alpha)
    total = 0.0
    for i in range(k + 1):
        total += ordered[i]
    return -ordered[k], -total / (k + 1)


@njit(cache=True, error_model="numpy")
def historical_var_es_nb(returns: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) of a 1-D return vector by historical simulation at level alpha."""
    if not (0.0 < alpha < 1.0):
        return np.nan, np.nan, INVALID_ARGUMENT
    ordered = _finite_sorted_nb(returns)
    if ordered.shape[0] == 0:
        return np.nan, np.nan, INSUFFICIENT_DATA
    var, es = _var_es_sorted_nb(ordered, ordered.shape[0], alpha)
    return var, es, OK


@njit(cache=True, error_model="numpy")
def historical_var_es_levels_nb(returns: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Return (VaR per level, ES per level, status) sorting the vector once for every level."""
    var = np.full(alphas.shape[0], np.nan)
    es = np.full(alphas.shape[0], np.nan)
    for j in range(alphas.shape[0]):
        if not (0.0 < alphas[j] < 1.0):
            return var, es, INVALID_ARGUMENT
    ordered = _finite_sorted_nb(returns)
    if ordered.shape[0] == 0:
        return var, es, INSUFFICIENT_DATA
    for j in range(alphas.shape[0]):
        var[j], es[j] = _var_es_sorted_nb(ordered, ordered.shape[0], alphas[j])
    return var, es, OK


@njit(cache=True, error_model="numpy")
def historical_var_es_columns_nb(scenarios: np.ndarray, weights: np.ndarray, alphas: np.ndarray,
                                 min_count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (VaR, ES) per column and level, and a status per column, of `scenarios[:, c] * weights[c]`.

    Each column stands alone: its non-finite rows are dropped, and a column with fewer than `min_count`
    finite rows is INSUFFICIENT_DATA (NaN figures). Column c gives what `historical_var_es_levels_nb` gives
    for that column's finite values times its weight: every position of a book in one call.
    """
    rows, columns = scenarios.shape
    var = np.full((columns, alphas.shape[0]), np.nan)
    es = np.full((columns, alphas.shape[0]), np.nan)
    status = np.full(columns, INSUFFICIENT_DATA, dtype=np.int64)
    pnl = np.empty(rows)
    for c in range(columns):
        m = 0
        for r in range(rows):
            x = scenarios[r, c]
            if np.isfinite(x):
                pnl[m] = x * weights[c]
                m += 1
        if m == 0 or m < min_count:
            continue
        v, e, code = historical_var_es_levels_nb(pnl[:m], alphas)
        status[c] = code
        var[c, :] = v
        es[c, :] = e
    return var, es, status


# ---------------------------------------------------------------- rolling: sorted window (any quantile)
@njit(cache=True, error_model="numpy")
def _insert_sorted_nb(window: np.ndarray, count: int, value: float) -> int:
    """Insert value into the ascending window[:count]; return the new count."""
    i = np.searchsorted(window[:count], value)
    for j in range(count, i, -1):
        window[j] = window[j - 1]
    window[i] = value
    return count + 1


@njit(cache=True, error_model="numpy")
def _remove_sorted_nb(window: np.ndarray, count: int, value: float) -> int:
    """Remove one occurrence of value (known to be present) from window[:count]; return the new count."""
    i = np.searchsorted(window[:count], value)
    for j in range(i, count - 1):
        window[j] = window[j + 1]
    return count - 1


@njit(cache=True, error_model="numpy")
def _quantile_sorted_nb(ordered: np.ndarray, n: int, q: float, interpolation: int) -> float:
    """Return the q-quantile of ordered[:n] with numpy's linear, lower or higher method."""
    virtual = (n - 1) * q
    lo = math.floor(virtual)
    if interpolation == INTERPOLATION_LOWER:
        return ordered[lo]
    hi = min(lo + 1, n - 1) if virtual > lo else lo
    if interpolation == INTERPOLATION_HIGHER:
        return ordered[hi]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (virtual - lo)


@njit(cache=True, error_model="numpy")
def _rolling_args_ok_nb(window: int, min_periods: int) -> bool:
    return window >= 1 and 1 <= min_periods <= window


@njit(cache=True, error_model="numpy")
def rolling_quantile_nb(
    x: np.ndarray, window: int, q: float, min_periods: int, interpolation: int
) -> tuple[np.ndarray, int]:
    """Return the rolling q-quantile of each column of a (T, N) array over the last `window` rows.

    A row's value is NaN until its window holds at least `min_periods` finite observations, as in
    pandas' `rolling(window, min_periods).quantile(q, interpolation)`.
    """
    n_rows, n_cols = x.shape
    out = np.full((n_rows, n_cols), np.nan)
    if not _rolling_args_ok_nb(window, min_periods) or not (0.0 <= q <= 1.0) or not (0 <= interpolation <= 2):
        return out, INVALID_ARGUMENT
    buffer = np.empty(window, dtype=np.float64)
    for col in range(n_cols):
        column = x[:, col].copy()
        count = 0
        for t in range(n_rows):
            if t >= window and np.isfinite(column[t - window]):
                count = _remove_sorted_nb(buffer, count, column[t - window])
            if np.isfinite(column[t]):
                count = _insert_sorted_nb(buffer, count, column[t])
            if count >= min_periods:
                out[t, col] = _quantile_sorted_nb(buffer, count, q, interpolation)
    return out, OK


# ---------------------------------------------------------------- rolling: tail buffer (VaR / ES)
@njit(cache=True, error_model="numpy")
def tail_buffer_size_nb(window: int, min_alpha: float) -> int:
    """Return the tail-buffer capacity for a window and the lowest level it must serve."""
    k = tail_index_nb(window, 1.0 - min_alpha)
    return min(window, 2 * (k + 1) + TAIL_MARGIN)


@njit(cache=True, inline="always", error_model="numpy")
def tail_insert_nb(buffers: np.ndarray, which: int, row: int, m: int, value: float) -> int:
    """Insert value into the ascending buffers[which, row, :m], dropping the largest past capacity; return m.

    Buffers are addressed by index, not passed as row views: a view per call costs two atomic reference
    count updates, which threads sharing the parent array fight over.
    """
    capacity = buffers.shape[2]
    if m == capacity:
        if not (value < buffers[which, row, capacity - 1]):
            return m
        i = capacity - 1
    else:
        i = m
    while i > 0 and buffers[which, row, i - 1] > value:
        buffers[which, row, i] = buffers[which, row, i - 1]
        i -= 1
    buffers[which, row, i] = value
    return m + 1 if m < capacity else m


@njit(cache=True, inline="always", error_model="numpy")
def tail_remove_nb(buffers: np.ndarray, which: int, row: int, m: int, value: float) -> int:
    """Remove one copy of value from the ascending buffers[which, row, :m] if it can be there; return m."""
    if m == 0 or value > buffers[which, row, m - 1]:
        return m
    i = m - 1
    while i > 0 and buffers[which, row, i] != value:
        i -= 1
    for s in range(i, m - 1):
        buffers[which, row, s] = buffers[which, row, s + 1]
    return m - 1


@njit(cache=True, error_model="numpy")
def _tail_rebuild_nb(x: np.ndarray, column: int, lo: int, hi: int, buffers: np.ndarray, row: int) -> int:
    """Refill buffers[0, row] with the smallest finite x[lo:hi, column]; return how many it holds."""
    capacity = buffers.shape[2]
    m = 0
    for s in range(lo, hi):
        value = x[s, column]
        if math.isfinite(value) and (m < capacity or value < buffers[0, row, capacity - 1]):
            m = tail_insert_nb(buffers, 0, row, m, value)
    return m


@njit(cache=True, error_model="numpy")
def _rolling_tail_block_nb(
    x: np.ndarray, window: int, ks: np.ndarray, min_periods: int, capacity: int,
    var_out: np.ndarray, es_out: np.ndarray, first: int, last: int,
) -> None:
    """Run the tail-buffer recursion over columns [first, last) of x, every row, every level.

    Per column the buffer's largest value (`top`) and the last VaR / ES are kept in small contiguous
    arrays: most rows neither enter nor leave the tail, so they touch neither the buffer nor the sums.
    """
    n_rows = x.shape[0]
    n_levels = ks.shape[0]
    width = last - first
    buffers = np.empty((1, width, capacity))
    held = np.zeros(width, dtype=np.int64)  # values in each buffer
    counts = np.zeros(width, dtype=np.int64)  # finite values in each window
    top = np.full(width, -np.inf)  # buffers[0, c, held - 1]; -inf while empty, so nothing enters by it
    cached_var = np.full((n_levels, width), np.nan)
    cached_es = np.full((n_levels, width), np.nan)
    stale = np.ones(width, dtype=np.bool_)  # the buffer changed since the cached values (or a count did)
    k_max = np.empty(window + 1, dtype=np.int64)
    for n in range(window + 1):
        k_max[n] = 0
        for level in range(n_levels):
            k_max[n] = max(k_max[n], ks[level, n])
    for t in range(n_rows):
        for c in range(width):
            column = first + c
            m = held[c]
            n = counts[c]
            if t >= window:
                old = x[t - window, column]
                if math.isfinite(old):
                    n -= 1
                    if old <= top[c]:
                        m = tail_remove_nb(buffers, 0, c, m, old)
                        top[c] = buffers[0, c, m - 1] if m > 0 else -np.inf
                        stale[c] = True
            value = x[t, column]
            if math.isfinite(value):
                # Before this value the buffer is complete iff it holds the whole window.
                if n == m or value < top[c]:
                    m = tail_insert_nb(buffers, 0, c, m, value)
                    top[c] = buffers[0, c, m - 1]
                    stale[c] = True
                n += 1
            if n >= min_periods:
                if m <= k_max[n]:
                    m = _tail_rebuild_nb(x, column, max(0, t - window + 1), t + 1, buffers, c)
                    top[c] = buffers[0, c, m - 1]
                    stale[c] = True
                if stale[c] or n != counts[c]:
                    for level in range(n_levels):
                        k = ks[level, n]
                        total = 0.0
                        for i in range(k + 1):
                            total += buffers[0, c, i]
                        cached_var[level, c] = -buffers[0, c, k]
                        cached_es[level, c] = -total / (k + 1)
                    stale[c] = False
                for level in range(n_levels):
                    var_out[level, t, column] = cached_var[level, c]
                    es_out[level, t, column] = cached_es[level, c]
            else:
                for level in range(n_levels):
                    var_out[level, t, column] = np.nan
                    es_out[level, t, column] = np.nan
            held[c] = m
            counts[c] = n


@njit(cache=True, error_model="numpy")
def _rolling_tail_one_level_nb(
    x: np.ndarray, window: int, ks: np.ndarray, min_periods: int, capacity: int,
    var_out: np.ndarray, es_out: np.ndarray, first: int, last: int,
) -> None:
    """`_rolling_tail_block_nb` for a single level: the same recursion without the level loops (2x faster).

    Most cells (about 9 in 10 at 99% over 250 days) change nothing: the leaving return is above the buffer's
    largest value, so it is not in the buffer, and the arriving one is not below it, so it does not enter.
    Those cells only copy the cached VaR and ES; the test costs two comparisons and no state write.
    """
    n_rows = x.shape[0]
    width = last - first
    buffers = np.empty((1, width, capacity))
    held = np.zeros(width, dtype=np.int64)
    counts = np.zeros(width, dtype=np.int64)
    top = np.full(width, -np.inf)
    cached_var = np.full(width, np.nan)
    cached_es = np.full(width, np.nan)
    stale = np.ones(width, dtype=np.bool_)
    for t in range(n_rows):
        steady = t >= window
        for c in range(width):
            column = first + c
            if steady:
                old = x[t - window, column]
                value = x[t, column]
                tp = top[c]
                # Both finite (inf fails `< inf`, NaN fails every comparison) and the cached figures current.
                # A buffer holding the whole window never gets here: its largest value is >= old.
                if (old > tp and value >= tp and old < np.inf and value < np.inf and not stale[c]
                        and counts[c] >= min_periods):
                    var_out[0, t, column] = cached_var[c]
                    es_out[0, t, column] = cached_es[c]
                    continue
            m = held[c]
            n = counts[c]
            if t >= window:
                old = x[t - window, column]
                if math.isfinite(old):
                    n -= 1
                    if old <= top[c]:
                        m = tail_remove_nb(buffers, 0, c, m, old)
                        top[c] = buffers[0, c, m - 1] if m > 0 else -np.inf
                        stale[c] = True
            value = x[t, column]
            if math.isfinite(value):
                if n == m or value < top[c]:
                    m = tail_insert_nb(buffers, 0, c, m, value)
                    top[c] = buffers[0, c, m - 1]
                    stale[c] = True
                n += 1
            if n >= min_periods:
                k = ks[0, n]
                if m <= k:
                    m = _tail_rebuild_nb(x, column, max(0, t - window + 1), t + 1, buffers, c)
                    top[c] = buffers[0, c, m - 1]
                    stale[c] = True
                if stale[c] or n != counts[c]:
                    total = 0.0
                    for i in range(k + 1):
                        total += buffers[0, c, i]
                    cached_var[c] = -buffers[0, c, k]
                    cached_es[c] = -total / (k + 1)
                    stale[c] = False
                var_out[0, t, column] = cached_var[c]
                es_out[0, t, column] = cached_es[c]
            else:
                var_out[0, t, column] = np.nan
                es_out[0, t, column] = np.nan
            held[c] = m
            counts[c] = n


@njit(cache=True, nogil=True, error_model="numpy")
def rolling_historical_var_es_into_nb(
    returns: np.ndarray, window: int, alphas: np.ndarray, min_periods: int, var_out: np.ndarray,
    es_out: np.ndarray, first: int, last: int,
) -> int:
    """Write rolling historical VaR and ES of columns [first, last) into var_out / es_out (L, T, N); return status.

    Level l of row t uses the finite returns among rows t - window + 1 .. t; a row is NaN while they are
    fewer than `min_periods`. The outputs are the caller's, so that they can be allocated by numpy (a
    fresh multi-megabyte array from inside a kernel costs a page fault per 4 KiB on first touch). The GIL is
    released: `rolling_historical_var_es` runs column blocks on threads.
    """
    n_rows, n_cols = returns.shape
    n_levels = alphas.shape[0]
    if (var_out.shape != (n_levels, n_rows, n_cols) or es_out.shape != (n_levels, n_rows, n_cols)
            or not _rolling_args_ok_nb(window, min_periods) or n_levels == 0 or not 0 <= first <= last <= n_cols):
        return INVALID_ARGUMENT
    min_alpha = 1.0
    for level in range(n_levels):
        if not (0.0 < alphas[level] < 1.0):
            return INVALID_ARGUMENT
        min_alpha = min(min_alpha, alphas[level])
    ks = np.zeros((n_levels, window + 1), dtype=np.int64)
    for level in range(n_levels):
        for n in range(1, window + 1):
            ks[level, n] = tail_index_nb(n, 1.0 - alphas[level])
    capacity = tail_buffer_size_nb(window, min_alpha)
    if first < last and n_levels == 1:
        _rolling_tail_one_level_nb(returns, window, ks, min_periods, capacity, var_out, es_out, first, last)
    elif first < last:
        _rolling_tail_block_nb(returns, window, ks, min_periods, capacity, var_out, es_out, first, last)
    return OK


def rolling_historical_var_es(
    returns: np.ndarray, window: int, alpha: float, min_periods: int | None = None, threads: int | None = None,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return rolling (VaR, ES, status) of a (T, N) matrix: column blocks on threads.

    The outputs are allocated by numpy, or are `out` (two C-contiguous float64 arrays of the input's shape,
    written in place and returned): a caller recomputing every batch reuses them instead of mapping fresh
    pages, which for 1,000 × 2,520 costs about as much as a fifth of the computation.
    """
    matrix = np.ascontiguousarray(returns, dtype=np.float64)
    if out is None:
        var = np.empty((1, *matrix.shape))
        es = np.empty((1, *matrix.shape))
    else:
        for target in out:
            if target.shape != matrix.shape or target.dtype != np.float64 or not target.flags.c_contiguous:
                raise ValueError(f"out arrays must be C-contiguous float64 of shape {matrix.shape}, got "
                                 f"{target.dtype} {target.shape}")
        var, es = out[0].reshape(1, *matrix.shape), out[1].reshape(1, *matrix.shape)  # views, not copies
    alphas = np.array([alpha], dtype=np.float64)
    periods = window if min_periods is None else min_periods
    codes = run_blocks(
        lambda first, last: rolling_historical_var_es_into_nb(matrix, window, alphas, periods, var, es, first, last),
        blocks(matrix.shape[1], 1, threads))
    code = max(codes)
    if code != OK:
        var.fill(np.nan)
        es.fill(np.nan)
    return var[0], es[0], code


@njit(cache=True, error_model="numpy")
def rolling_historical_var_es_nb(
    returns: np.ndarray, window: int, alpha: float, min_periods: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return rolling (VaR, ES, status) of each column of a (T, N) return matrix over `window` rows.

    A row is NaN while its window holds fewer than `min_periods` finite returns; pass
    min_periods=window for "NaN where fewer than W observations".
    """
    n_rows, n_cols = returns.shape
    var = np.full((1, n_rows, n_cols), np.nan)
    es = np.full((1, n_rows, n_cols), np.nan)
    if not _rolling_args_ok_nb(window, min_periods) or not (0.0 < alpha < 1.0):
        return var[0], es[0], INVALID_ARGUMENT
    ks = np.zeros((1, window + 1), dtype=np.int64)
    for n in range(1, window + 1):
        ks[0, n] = tail_index_nb(n, 1.0 - alpha)
    contiguous = np.ascontiguousarray(returns)
    _rolling_tail_block_nb(contiguous, window, ks, min_periods, tail_buffer_size_nb(window, alpha), var, es, 0,
                           n_cols)
    return var[0], es[0], OK


# ---------------------------------------------------------------- moments and parametric methods
@njit(cache=True, error_model="numpy")
def mean_std_nb(x: np.ndarray, ddof: int) -> tuple[float, float, int]:
    """Return (mean, std, count) of the finite entries (two passes, for accuracy); NaN where undefined."""
    n = 0
    total = 0.0
    for i in range(x.shape[0]):
        if np.isfinite(x[i]):
            total += x[i]
            n += 1
    if n == 0:
        return np.nan, np.nan, 0
    mean = total / n
    if n - ddof <= 0:
        return mean, np.nan, n
    squares = 0.0
    for i in range(x.shape[0]):
        if np.isfinite(x[i]):
            squares += (x[i] - mean) ** 2
    return mean, math.sqrt(squares / (n - ddof)), n


@njit("UniTuple(float64, 4)(int64, float64, float64, float64, float64)", cache=True, error_model="numpy")
def moments_from_central_nb(n: int, mean: float, m2: float, m3: float, m4: float) -> tuple[
    float, float, float, float
]:
    """Return (mean, std ddof=1, skewness, excess kurtosis) from n and central sums sum (x - mean)^r."""
    if n < 2:
        return mean, np.nan, np.nan, np.nan
    # A relative spread below ~1e-14 is rounding of a constant window, not variance.
    if m2 <= 0.0 or m2 / n <= (4e-16 * abs(mean)) ** 2:
        return mean, 0.0, 0.0, 0.0
    std = math.sqrt(m2 / (n - 1))
    b2 = m2 / n
    return mean, std, (m3 / n) / b2**1.5, (m4 / n) / (b2 * b2) - 3.0


@njit(cache=True, error_model="numpy")
def moments_nb(x: np.ndarray) -> tuple[int, float, float, float, float]:
    """Return (count, mean, std ddof=1, skewness, excess kurtosis) of the finite entries (two passes)."""
    n = 0
    total = 0.0
    for i in range(x.shape[0]):
        if math.isfinite(x[i]):
            total += x[i]
            n += 1
    if n == 0:
        return 0, np.nan, np.nan, np.nan, np.nan
    mean = total / n
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    for i in range(x.shape[0]):
        if math.isfinite(x[i]):
            d = x[i] - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
    mean, std, skew, kurt = moments_from_central_nb(n, mean, m2, m3, m4)
    return n, mean, std, skew, kurt


@njit(cache=True, error_model="numpy")
def normal_var_es_from_moments_nb(mean: float, std: float, alpha: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) of a normal P&L with the given mean and standard deviation."""
    if not (0.0 < alpha < 1.0) or not (std >= 0.0) or not np.isfinite(mean) or not np.isfinite(std):
        return np.nan, np.nan, INVALID_ARGUMENT
    z = norm_ppf_nb(alpha)
    return std * z - mean, std * norm_pdf_nb(z) / (1.0 - alpha) - mean, OK


@njit(cache=True, error_model="numpy")
def normal_var_es_nb(returns: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) of a 1-D return vector under a normal fit (sample mean, std ddof=1)."""
    if not (0.0 < alpha < 1.0):
        return np.nan, np.nan, INVALID_ARGUMENT
    mean, std, n = mean_std_nb(returns, 1)
    if n < 2:
        return np.nan, np.nan, INSUFFICIENT_DATA
    return normal_var_es_from_moments_nb(mean, std, alpha)


@njit(cache=True, error_model="numpy")
def student_t_nu_nb(excess_kurtosis: float) -> float:
    """Return the method-of-moments degrees of freedom 4 + 6 / K (inf when K <= 0: no t fit)."""
    if not (excess_kurtosis > 0.0):
        return np.inf
    return 4.0 + 6.0 / excess_kurtosis


@njit(cache=True, error_model="numpy")
def student_t_var_es_nb(returns: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) of a 1-D return vector under the maximum-likelihood Student-t fit."""
    var, es, _, code = student_t_mle_var_es_nb(returns, alpha)
    return var, es, code


@njit(cache=True, error_model="numpy")
def cornish_fisher_var_es_from_moments_nb(
    mean: float, std: float, skew: float, excess_kurtosis: float, alpha: float
) -> tuple[float, float, int]:
    """Return (VaR, ES, status) by the Cornish-Fisher expansion around the normal (see module docstring)."""
    if (not (0.0 < alpha < 1.0) or not (std >= 0.0) or not math.isfinite(mean) or not math.isfinite(std)
            or not math.isfinite(skew) or not math.isfinite(excess_kurtosis)):
        return np.nan, np.nan, INVALID_ARGUMENT
    z = norm_ppf_nb(1.0 - alpha)
    s = skew
    k = excess_kurtosis
    z2 = z * z
    z_cf = z + (z2 - 1.0) * s / 6.0 + (z2 - 3.0) * z * k / 24.0 - (2.0 * z2 - 5.0) * z * s * s / 36.0
    bracket = 1.0 + z * s / 6.0 + (z2 - 1.0) * k / 24.0 - (2.0 * z2 - 1.0) * s * s / 36.0
    return -(mean + std * z_cf), std * norm_pdf_nb(z) / (1.0 - alpha) * bracket - mean, OK


@njit(cache=True, error_model="numpy")
def cornish_fisher_var_es_nb(returns: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """Return (VaR, ES, status) of a 1-D return vector by the Cornish-Fisher modified VaR."""
    if not (0.0 < alpha < 1.0):
        return np.nan, np.nan, INVALID_ARGUMENT
    n, mean, std, skew, kurt = moments_nb(returns)
    if n < 4:
        return np.nan, np.nan, INSUFFICIENT_DATA
    return cornish_fisher_var_es_from_moments_nb(mean, std, skew, kurt, alpha)


@njit(cache=True, error_model="numpy")
def scale_horizon_nb(value: float, days: float) -> float:
    """Return a 1-day VaR or ES scaled to `days` by the square-root-of-time rule."""
    return value * math.sqrt(days)
