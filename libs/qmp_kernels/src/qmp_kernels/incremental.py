"""Per-symbol risk, updated in place on every batch: all seven VaR / ES methods, realized volatility.

Each symbol keeps its last W valid returns and enough running state that one new return costs O(W)
at worst and O(1) + O(tail) typically, so a 1,000-symbol batch updates in well under a millisecond:
- a ring of the last W returns and, aligned with it, their EWMA and GARCH standardized residuals;
- three sorted tail buffers (returns, EWMA residuals, GARCH residuals) holding each window's smallest
  values, as in `var.py`'s rolling kernel: historical VaR / ES, the EVT peaks and the FHS quantiles come
  from them without sorting;
- shifted power sums of the returns (anchor, s1..s4) for the mean, variance, skewness and kurtosis of the
  normal, Student-t and Cornish-Fisher methods, recomputed from the ring every W updates so that
  rounding cannot build up;
- the EWMA and GARCH variance forecasts; the ring of the last realized-vol estimates.
The definitions are exactly those of the point kernels (`methods.var_es_methods_nb`): after a symbol's
stream of returns, its outputs equal the point kernels on that stream, with two documented exceptions:
the fitted parameters of GARCH and of the Student-t are those of the symbol's last refit (`symbol_refit_nb`,
fitted on its window and scheduled by the caller, because a maximum-likelihood fit costs ~0.2 ms), not
refitted every batch. Between refits the t keeps its fitted shape (nu, the gap between its location and the
sample mean, the ratio of its standard deviation to the sample's) and moves with the live mean and standard
deviation; at a refit it equals the point kernel. Until a symbol's first fit its t takes nu = 4 + 6 / K from
the sample's excess kurtosis K (method of moments) and the sample's mean and standard deviation. Its
unit-variance multipliers come from a table in 1/nu interpolated to ~1e-7 (an exact t quantile per symbol
per level would cost a microsecond each).

Input contract
- State arrays are created by the caller with the shapes below and zero / NaN filled (see
  `qmp_risk.engine.symbols.SymbolRisk`); `cols` index rows of every state array, `values` are the new returns.
  A non-finite return is no observation: the symbol's state is left as it was.
- Outputs: var_out / es_out (N, N_METHODS, L), status_out (N, N_METHODS), vol_out (N, 2) = realized vol
  and its ratio to its own average (NaN until defined).
"""

import math

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.evt import evt_log_ratio_nb, evt_peaks_nb, evt_tail_into_nb
from qmp_kernels.fhs import EWMA_WARMUP, garch_fit_nb
from qmp_kernels.methods import (
    METHOD_CORNISH_FISHER,
    METHOD_EVT,
    METHOD_FHS_EWMA,
    METHOD_FHS_GARCH,
    METHOD_HISTORICAL,
    METHOD_NORMAL,
    METHOD_STUDENT_T,
    MIN_MOMENT_OBSERVATIONS,
    N_METHODS,
)
from qmp_kernels.special import t_standardized_var_es_nb
from qmp_kernels.status import INSUFFICIENT_DATA, INVALID_ARGUMENT, OK
from qmp_kernels.student_t import NU_MIN, t_fit_nb, t_standard_deviation_nb
from qmp_kernels.var import (
    moments_from_central_nb,
    moments_nb,
    student_t_nu_nb,
    tail_index_nb,
    tail_insert_nb,
    tail_remove_nb,
)

# ints (N, I_FIELDS)
I_POS = 0  # next ring slot
I_FILLED = 1  # returns in the window (<= W)
I_SEEN = 2  # returns ever seen (EWMA warm-up)
I_HELD_RAW = 3  # values in each tail buffer
I_HELD_EWMA = 4
I_HELD_GARCH = 5
I_N_EWMA = 6  # residuals defined in the window
I_N_GARCH = 7
I_SINCE_REFRESH = 8
I_VOL_POS = 9
I_VOL_FILLED = 10
I_GARCH_FITTED = 11
I_T_FITTED = 12
I_FIELDS = 13

# floats (N, F_FIELDS)
F_ANCHOR = 0
F_S1 = 1
F_S2 = 2
F_S3 = 3
F_S4 = 4
F_EWMA_VAR = 5  # variance forecast for the next return
F_EWMA_SQUARES = 6  # sum of squares during the warm-up
F_GARCH_VAR = 7
F_OMEGA = 8
F_A = 9
F_B = 10
F_VOL_SUM = 11
F_T_NU = 12  # the Student-t fitted at the last refit (inf: normal)
F_T_SHIFT = 13  # its location minus the sample mean, at the fit
F_T_RATIO = 14  # its standard deviation over the sample's, at the fit
F_FIELDS = 15

RING_RAW = 0
RING_EWMA = 1
RING_GARCH = 2

# params (P_FIELDS,)
P_LAMBDA = 0
P_EVT_THRESHOLD = 1
P_VOL_WINDOW = 2
P_VOL_AVERAGE = 3
P_FIELDS = 4

T_TABLE_NODES = 512
PARALLEL_MIN_SYMBOLS = 128  # below this per thread a second thread costs more than it saves
T_TABLE_U_MAX = 1.0 / NU_MIN  # the heaviest t the maximum-likelihood fit returns


@njit(cache=True, error_model="numpy")
def t_table_nb(alphas: np.ndarray, nodes: int) -> np.ndarray:
    """Return (L, 2, nodes + 1): unit-variance t VaR and ES multipliers on a grid of u = 1/nu in [0, 1/2.1]."""
    table = np.empty((alphas.shape[0], 2, nodes + 1))
    for level in range(alphas.shape[0]):
        for i in range(nodes + 1):
            u = T_TABLE_U_MAX * i / nodes
            nu = np.inf if i == 0 else 1.0 / u
            table[level, 0, i], table[level, 1, i] = t_standardized_var_es_nb(alphas[level], nu)
    return table


@njit(cache=True, error_model="numpy")
def evt_log_table_nb(window: int, alphas: np.ndarray, threshold: float) -> np.ndarray:
    """Return (window + 1, L): log((n / m)(1 - alpha)) for n returns and their m EVT peaks (NaN if m = 0)."""
    out = np.full((window + 1, alphas.shape[0]), np.nan)
    for n in range(1, window + 1):
        m = evt_peaks_nb(n, threshold)
        if m >= 1:
            for level in range(alphas.shape[0]):
                out[n, level] = evt_log_ratio_nb(n, m, alphas[level])
    return out


@njit("float64(float64[:, :, ::1], int64, int64, float64)", cache=True, error_model="numpy")
def t_table_lookup_nb(table: np.ndarray, level: int, which: int, u: float) -> float:
    """Return the multiplier at u = 1/nu by 4-point Lagrange interpolation (error O(h^4))."""
    nodes = table.shape[2] - 1
    h = T_TABLE_U_MAX / nodes
    position = u / h
    i = int(position) - 1
    if i < 0:
        i = 0
    if i > nodes - 3:
        i = nodes - 3
    s = position - i  # in [0, 3]: nodes i .. i + 3 at s = 0 .. 3
    y0 = table[level, which, i]
    y1 = table[level, which, i + 1]
    y2 = table[level, which, i + 2]
    y3 = table[level, which, i + 3]
    return (-y0 * (s - 1.0) * (s - 2.0) * (s - 3.0) / 6.0 + y1 * s * (s - 2.0) * (s - 3.0) / 2.0
            - y2 * s * (s - 1.0) * (s - 3.0) / 2.0 + y3 * s * (s - 1.0) * (s - 2.0) / 6.0)


@njit("int64(int64[:, ::1], int64, int64, int64)", cache=True, error_model="numpy")
def _ring_index(ints: np.ndarray, j: int, window: int, i: int) -> int:
    """Return the ring slot of the i-th oldest value of symbol j's window."""
    start = ints[j, I_POS] - ints[j, I_FILLED]
    if start < 0:
        start += window
    slot = start + i
    return slot - window if slot >= window else slot


@njit("int64(float64[:, :, ::1], int64, int64[:, ::1], int64, float64[:, :, ::1])", cache=True, error_model="numpy")
def _rebuild_tail_nb(rings: np.ndarray, which: int, ints: np.ndarray, j: int, tails: np.ndarray) -> int:
    """Refill tails[which, j] from the finite values of its ring; return how many it holds."""
    window = rings.shape[2]
    capacity = tails.shape[2]
    m = 0
    for i in range(ints[j, I_FILLED]):
        value = rings[which, j, _ring_index(ints, j, window, i)]
        if math.isfinite(value) and (m < capacity or value < tails[which, j, capacity - 1]):
            m = tail_insert_nb(tails, which, j, m, value)
    return m


@njit(cache=True, error_model="numpy")
def _refresh_sums_nb(rings: np.ndarray, ints: np.ndarray, floats: np.ndarray, j: int) -> None:
    """Recompute the power sums from the ring around its mean (bounds rounding drift)."""
    window = rings.shape[2]
    n = ints[j, I_FILLED]
    total = 0.0
    for i in range(n):
        total += rings[RING_RAW, j, _ring_index(ints, j, window, i)]
    anchor = total / n if n > 0 else 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    for i in range(n):
        d = rings[RING_RAW, j, _ring_index(ints, j, window, i)] - anchor
        d2 = d * d
        s1 += d
        s2 += d2
        s3 += d2 * d
        s4 += d2 * d2
    floats[j, F_ANCHOR], floats[j, F_S1], floats[j, F_S2], floats[j, F_S3], floats[j, F_S4] = (
        anchor, s1, s2, s3, s4)
    ints[j, I_SINCE_REFRESH] = 0


@njit("float64(float64, float64)", cache=True, error_model="numpy")
def _standardize(r: float, variance: float) -> float:
    if variance > 0.0:
        return r / math.sqrt(variance)
    if variance == 0.0 and r == 0.0:
        return 0.0
    return np.nan


@njit("int64(float64[:, :, ::1], int64, int64, int64, int64, float64[::1], float64, float64[:, :, ::1], "
      "float64[:, :, ::1], int64)", cache=True, error_model="numpy")
def _tail_var_es_nb(tails: np.ndarray, which: int, j: int, held: int, n: int, alphas: np.ndarray, scale: float,
                    var_out: np.ndarray, es_out: np.ndarray, method: int) -> int:
    """Write -scale * (quantile, tail mean) of symbol j's tail buffer per level; return status."""
    if n == 0:
        return INSUFFICIENT_DATA
    for level in range(alphas.shape[0]):
        k = tail_index_nb(n, 1.0 - alphas[level])
        if k >= held:
            return INVALID_ARGUMENT  # cannot happen once the caller rebuilt the buffer
        total = 0.0
        for i in range(k + 1):
            total += tails[which, j, i]
        var_out[j, method, level] = -scale * tails[which, j, k]
        es_out[j, method, level] = -scale * total / (k + 1)
    return OK


@njit("int64(float64[:, :, ::1], float64[:, :, ::1], int64, int64, int64[:, ::1], int64, int64)",
      cache=True, error_model="numpy")
def _ensure_tail_nb(rings: np.ndarray, tails: np.ndarray, which: int, held_field: int, ints: np.ndarray, j: int,
                    needed: int) -> int:
    held = ints[j, held_field]
    if held < needed:
        held = _rebuild_tail_nb(rings, which, ints, j, tails)
        ints[j, held_field] = held
    return held


@njit(cache=True, error_model="numpy")
def symbol_outputs_nb(
    j: int, ints: np.ndarray, floats: np.ndarray, rings: np.ndarray, tails: np.ndarray, alphas: np.ndarray,
    table: np.ndarray, evt_log: np.ndarray, params: np.ndarray, var_out: np.ndarray, es_out: np.ndarray,
    status_out: np.ndarray,
) -> None:
    """Recompute symbol j's VaR / ES by every method at every level from its state."""
    n_levels = alphas.shape[0]
    n = ints[j, I_FILLED]
    for method in range(N_METHODS):
        status_out[j, method] = INSUFFICIENT_DATA
        for level in range(n_levels):
            var_out[j, method, level] = np.nan
            es_out[j, method, level] = np.nan
    if n == 0:
        return
    lowest = alphas[0]
    for level in range(n_levels):
        lowest = min(lowest, alphas[level])
    k_needed = tail_index_nb(n, 1.0 - lowest) + 1
    peaks = evt_peaks_nb(n, params[P_EVT_THRESHOLD])
    # historical and EVT share the raw tail buffer
    held = _ensure_tail_nb(rings, tails, RING_RAW, I_HELD_RAW, ints, j, max(k_needed, peaks + 1))
    status_out[j, METHOD_HISTORICAL] = _tail_var_es_nb(tails, RING_RAW, j, held, n, alphas, 1.0, var_out, es_out,
                                                       METHOD_HISTORICAL)
    _, _, status_out[j, METHOD_EVT] = evt_tail_into_nb(tails, RING_RAW, j, held, n, alphas, evt_log, n,
                                                       params[P_EVT_THRESHOLD], var_out, es_out, j, METHOD_EVT)
    # moments from the shifted power sums
    s1, s2, s3, s4 = floats[j, F_S1], floats[j, F_S2], floats[j, F_S3], floats[j, F_S4]
    d = s1 / n
    m2 = s2 - s1 * d
    m3 = s3 - 3.0 * s2 * d + 2.0 * s1 * d * d
    m4 = s4 - 4.0 * s3 * d + 6.0 * s2 * d * d - 3.0 * s1 * d * d * d
    mean, std, skew, kurt = moments_from_central_nb(n, floats[j, F_ANCHOR] + d, max(m2, 0.0), m3, max(m4, 0.0))
    if n >= 2:
        status_out[j, METHOD_NORMAL] = OK
    if n >= MIN_MOMENT_OBSERVATIONS:
        status_out[j, METHOD_STUDENT_T] = OK
        status_out[j, METHOD_CORNISH_FISHER] = OK
    if ints[j, I_T_FITTED] == 1:
        nu, t_std, t_mean = floats[j, F_T_NU], std * floats[j, F_T_RATIO], mean + floats[j, F_T_SHIFT]
    else:  # until the symbol's first scheduled fit: nu by the method of moments, scaled to the sample
        nu, t_std, t_mean = student_t_nu_nb(kurt) if std > 0.0 else np.inf, std, mean
    u = 0.0 if math.isinf(nu) else 1.0 / nu
    for level in range(n_levels):
        z = table[level, 0, 0]  # Phi^-1(alpha)
        if n >= 2:
            var_out[j, METHOD_NORMAL, level] = std * z - mean
            es_out[j, METHOD_NORMAL, level] = std * table[level, 1, 0] - mean
        if n >= MIN_MOMENT_OBSERVATIONS:
            var_out[j, METHOD_STUDENT_T, level] = t_std * t_table_lookup_nb(table, level, 0, u) - t_mean
            es_out[j, METHOD_STUDENT_T, level] = t_std * t_table_lookup_nb(table, level, 1, u) - t_mean
            zl = -z  # Phi^-1(1 - alpha)
            z2 = zl * zl
            z_cf = (zl + (z2 - 1.0) * skew / 6.0 + (z2 - 3.0) * zl * kurt / 24.0
                    - (2.0 * z2 - 5.0) * zl * skew * skew / 36.0)
            bracket = (1.0 + zl * skew / 6.0 + (z2 - 1.0) * kurt / 24.0 - (2.0 * z2 - 1.0) * skew * skew / 36.0)
            var_out[j, METHOD_CORNISH_FISHER, level] = -(mean + std * z_cf)
            # phi(z) / (1 - alpha) is the normal ES multiplier, table[level, 1, 0]
            es_out[j, METHOD_CORNISH_FISHER, level] = std * table[level, 1, 0] * bracket - mean
    # filtered historical simulation
    for method, which, held_field, n_field, variance_field in (
        (METHOD_FHS_EWMA, RING_EWMA, I_HELD_EWMA, I_N_EWMA, F_EWMA_VAR),
        (METHOD_FHS_GARCH, RING_GARCH, I_HELD_GARCH, I_N_GARCH, F_GARCH_VAR),
    ):
        count = ints[j, n_field]
        variance = floats[j, variance_field]
        if count == 0 or not (variance >= 0.0):
            continue
        needed = tail_index_nb(count, 1.0 - lowest) + 1
        held_z = _ensure_tail_nb(rings, tails, which, held_field, ints, j, needed)
        status_out[j, method] = _tail_var_es_nb(tails, which, j, held_z, count, alphas, math.sqrt(variance), var_out,
                                                es_out, method)


@njit(cache=True, error_model="numpy")
def _push_nb(j: int, r: float, ints: np.ndarray, floats: np.ndarray, rings: np.ndarray, tails: np.ndarray,
             vol_ring: np.ndarray, params: np.ndarray, vol_out: np.ndarray) -> None:
    """Add return r to symbol j's state (window, tails, sums, filters, realized vol)."""
    window = rings.shape[2]
    pos = ints[j, I_POS]
    full = ints[j, I_FILLED] == window
    if full:
        old = rings[RING_RAW, j, pos]
        d = old - floats[j, F_ANCHOR]
        d2 = d * d
        floats[j, F_S1] -= d
        floats[j, F_S2] -= d2
        floats[j, F_S3] -= d2 * d
        floats[j, F_S4] -= d2 * d2
        ints[j, I_HELD_RAW] = tail_remove_nb(tails, RING_RAW, j, ints[j, I_HELD_RAW], old)
        for which, held_field, n_field in ((RING_EWMA, I_HELD_EWMA, I_N_EWMA), (RING_GARCH, I_HELD_GARCH, I_N_GARCH)):
            z_old = rings[which, j, pos]
            if math.isfinite(z_old):
                ints[j, n_field] -= 1
                ints[j, held_field] = tail_remove_nb(tails, which, j, ints[j, held_field], z_old)
        ints[j, I_FILLED] -= 1
    # residuals against the forecasts made before r
    z_ewma = _standardize(r, floats[j, F_EWMA_VAR]) if ints[j, I_SEEN] > 0 else np.nan
    z_garch = _standardize(r, floats[j, F_GARCH_VAR]) if ints[j, I_GARCH_FITTED] else np.nan
    seen = ints[j, I_SEEN] + 1
    ints[j, I_SEEN] = seen
    r2 = r * r
    if seen <= EWMA_WARMUP:
        floats[j, F_EWMA_SQUARES] += r2
        floats[j, F_EWMA_VAR] = floats[j, F_EWMA_SQUARES] / seen
    else:
        lam = params[P_LAMBDA]
        floats[j, F_EWMA_VAR] = lam * floats[j, F_EWMA_VAR] + (1.0 - lam) * r2
    if ints[j, I_GARCH_FITTED]:
        floats[j, F_GARCH_VAR] = floats[j, F_OMEGA] + floats[j, F_A] * r2 + floats[j, F_B] * floats[j, F_GARCH_VAR]
    # window and tails; a buffer that holds its whole window takes every value
    n = ints[j, I_FILLED]
    rings[RING_RAW, j, pos] = r
    held = ints[j, I_HELD_RAW]
    if n == held or (held > 0 and r < tails[RING_RAW, j, held - 1]):
        ints[j, I_HELD_RAW] = tail_insert_nb(tails, RING_RAW, j, held, r)
    for which, held_field, n_field, z in ((RING_EWMA, I_HELD_EWMA, I_N_EWMA, z_ewma),
                                          (RING_GARCH, I_HELD_GARCH, I_N_GARCH, z_garch)):
        rings[which, j, pos] = z
        if math.isfinite(z):
            held = ints[j, held_field]
            if ints[j, n_field] == held or (held > 0 and z < tails[which, j, held - 1]):
                ints[j, held_field] = tail_insert_nb(tails, which, j, held, z)
            ints[j, n_field] += 1
    ints[j, I_POS] = pos + 1 if pos + 1 < window else 0
    ints[j, I_FILLED] = n + 1
    if n == 0:
        floats[j, F_ANCHOR] = r
    d = r - floats[j, F_ANCHOR]
    d2 = d * d
    floats[j, F_S1] += d
    floats[j, F_S2] += d2
    floats[j, F_S3] += d2 * d
    floats[j, F_S4] += d2 * d2
    ints[j, I_SINCE_REFRESH] += 1
    if ints[j, I_SINCE_REFRESH] >= window:
        _refresh_sums_nb(rings, ints, floats, j)
    # realized volatility over the last vol_window returns and its average over the last estimates
    vol_window = int(params[P_VOL_WINDOW])
    average = vol_ring.shape[1]
    vol_out[j, 0] = np.nan
    vol_out[j, 1] = np.nan
    if n + 1 >= vol_window:
        filled = n + 1
        total = 0.0
        for i in range(filled - vol_window, filled):
            total += rings[RING_RAW, j, _ring_index(ints, j, window, i)]
        mean = total / vol_window
        squares = 0.0
        for i in range(filled - vol_window, filled):
            e = rings[RING_RAW, j, _ring_index(ints, j, window, i)] - mean
            squares += e * e
        # a spread below rounding of the mean is a constant window: exactly 0, so no ratio explodes on it
        vol = 0.0 if squares <= vol_window * (4e-16 * mean) ** 2 else math.sqrt(squares / (vol_window - 1))
        vol_pos = ints[j, I_VOL_POS]
        if ints[j, I_VOL_FILLED] == average:
            floats[j, F_VOL_SUM] -= vol_ring[j, vol_pos]
        else:
            ints[j, I_VOL_FILLED] += 1
        vol_ring[j, vol_pos] = vol
        floats[j, F_VOL_SUM] += vol
        ints[j, I_VOL_POS] = vol_pos + 1 if vol_pos + 1 < average else 0
        if ints[j, I_VOL_POS] == 0:
            # once per lap: the exact sum, so that subtracting old estimates cannot drift
            total = 0.0
            for i in range(average):
                total += vol_ring[j, i]
            floats[j, F_VOL_SUM] = total
        vol_out[j, 0] = vol
        if ints[j, I_VOL_FILLED] == average:
            mean_vol = floats[j, F_VOL_SUM] / average
            if mean_vol > 0.0:
                vol_out[j, 1] = vol / mean_vol


@njit(cache=True, nogil=True, error_model="numpy")
def symbol_update_nb(
    cols: np.ndarray, values: np.ndarray, first: int, last: int, ints: np.ndarray, floats: np.ndarray,
    rings: np.ndarray, tails: np.ndarray, vol_ring: np.ndarray, alphas: np.ndarray, table: np.ndarray,
    evt_log: np.ndarray, params: np.ndarray, var_out: np.ndarray, es_out: np.ndarray, status_out: np.ndarray,
    vol_out: np.ndarray,
) -> int:
    """Add one return per listed symbol in cols[first:last] and recompute its measures; status.

    The GIL is released, so blocks of one batch can run on threads; `cols` must then not repeat a symbol.
    """
    n_symbols = ints.shape[0]
    if (cols.shape[0] != values.shape[0] or vol_ring.shape[1] < 1 or params[P_VOL_WINDOW] < 2
            or params[P_VOL_WINDOW] > rings.shape[2] or not 0 <= first <= last <= cols.shape[0]):
        return INVALID_ARGUMENT
    for i in range(first, last):
        j = cols[i]
        if j < 0 or j >= n_symbols:
            return INVALID_ARGUMENT
    for i in range(first, last):
        r = values[i]
        if math.isfinite(r):
            j = cols[i]
            _push_nb(j, r, ints, floats, rings, tails, vol_ring, params, vol_out)
            symbol_outputs_nb(j, ints, floats, rings, tails, alphas, table, evt_log, params, var_out, es_out,
                              status_out)
    return OK


@njit(cache=True, error_model="numpy")
def symbol_refit_many_nb(
    js: np.ndarray, ints: np.ndarray, floats: np.ndarray, rings: np.ndarray, tails: np.ndarray, alphas: np.ndarray,
    table: np.ndarray, evt_log: np.ndarray, params: np.ndarray, var_out: np.ndarray, es_out: np.ndarray,
    status_out: np.ndarray, codes: np.ndarray,
) -> None:
    """Refit the GARCH and Student-t of every listed symbol; codes[i] is row js[i]'s status."""
    for i in range(js.shape[0]):
        codes[i] = symbol_refit_nb(js[i], ints, floats, rings, tails, alphas, table, evt_log, params, var_out,
                                         es_out, status_out)


@njit(cache=True, error_model="numpy")
def symbol_refit_nb(
    j: int, ints: np.ndarray, floats: np.ndarray, rings: np.ndarray, tails: np.ndarray, alphas: np.ndarray,
    table: np.ndarray, evt_log: np.ndarray, params: np.ndarray, var_out: np.ndarray, es_out: np.ndarray,
    status_out: np.ndarray,
) -> int:
    """Fit symbol j's Student-t and GARCH(1,1) on its window, re-filter the residuals, recompute its measures."""
    window = rings.shape[2]
    n = ints[j, I_FILLED]
    series = np.empty(n)
    for i in range(n):
        series[i] = rings[RING_RAW, j, _ring_index(ints, j, window, i)]
    t_mu, t_scale, nu, t_code = t_fit_nb(series)
    if t_code == OK:
        _, mean, std, _, _ = moments_nb(series)
        floats[j, F_T_NU], floats[j, F_T_SHIFT] = nu, t_mu - mean
        floats[j, F_T_RATIO] = t_standard_deviation_nb(t_scale, nu) / std if std > 0.0 else 1.0
        ints[j, I_T_FITTED] = 1
    omega, a, b, _, code = garch_fit_nb(series)
    if code != OK:
        symbol_outputs_nb(j, ints, floats, rings, tails, alphas, table, evt_log, params, var_out, es_out,
                          status_out)
        return code if t_code == OK else t_code
    floats[j, F_OMEGA], floats[j, F_A], floats[j, F_B] = omega, a, b
    variance = omega / (1.0 - a - b) if a + b < 1.0 and omega > 0.0 else 0.0
    defined = 0
    for i in range(n):
        slot = _ring_index(ints, j, window, i)
        z = _standardize(series[i], variance)
        rings[RING_GARCH, j, slot] = z
        if math.isfinite(z):
            defined += 1
        variance = omega + a * series[i] * series[i] + b * variance
    floats[j, F_GARCH_VAR] = variance
    ints[j, I_N_GARCH] = defined
    ints[j, I_GARCH_FITTED] = 1
    ints[j, I_HELD_GARCH] = _rebuild_tail_nb(rings, RING_GARCH, ints, j, tails)
    symbol_outputs_nb(j, ints, floats, rings, tails, alphas, table, evt_log, params, var_out, es_out, status_out)
    return OK
