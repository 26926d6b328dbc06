"""Drawdown kernels: from the running peak since inception and from the peak of a trailing event-time window.

The one home of drawdown over a series: reports, verification and `qmp risk` call these. Two other forms
exist for a reason: `stress.path_max_drawdown_nb` compounds returns inside the Monte Carlo kernel (no
equity array per path), and the risk service updates a running peak per batch (streaming state).

Input contract
- `equity`: 1-D float64 equity (or price) series, oldest first. A non-finite value is a missing
  observation: its output is NaN and it neither sets a peak nor enters a window.
- `ts`: 1-D int64 event timestamps in ns, same length, non-decreasing (else status INVALID_INPUT).
- `window_ns`: trailing window length in ns, >= 0; the window of row t holds the rows s <= t with
  ts[s] >= ts[t] - window_ns (event time, so a replayed day is a market day, not a wall-clock one).
- Drawdown is a positive fraction: dd(t) = 1 - equity(t) / peak, 0 at a new peak. It can exceed 1 when
  equity goes negative. Where the peak is not positive the drawdown is undefined: NaN and status
  INVALID_INPUT. Kernels return (array, status) and never raise.
"""

import numpy as np

from qmp_kernels.cache import njit
from qmp_kernels.status import INVALID_ARGUMENT, INVALID_INPUT, OK


@njit(cache=True)
def drawdown_nb(equity: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (drawdown from the running peak since inception at each row, status)."""
    out = np.full(equity.shape[0], np.nan)
    status = OK
    peak = -np.inf
    for t in range(equity.shape[0]):
        value = equity[t]
        if not np.isfinite(value):
            continue
        if value > peak:
            peak = value
        if peak > 0.0:
            out[t] = 1.0 - value / peak
        else:
            status = INVALID_INPUT
    return out, status


@njit(cache=True)
def running_max_drawdown_nb(equity: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (the largest drawdown seen up to each row, status); NaN until the first defined drawdown."""
    drawdown, status = drawdown_nb(equity)
    out = np.full(equity.shape[0], np.nan)
    worst = np.nan
    for t in range(equity.shape[0]):
        if np.isfinite(drawdown[t]) and not (drawdown[t] <= worst):
            worst = drawdown[t]
        out[t] = worst
    return out, status


@njit(cache=True)
def max_drawdown_nb(equity: np.ndarray) -> tuple[float, int]:
    """Return (maximum drawdown of the whole series, status)."""
    running, status = running_max_drawdown_nb(equity)
    if running.shape[0] == 0:
        return np.nan, status
    return running[-1], status


@njit(cache=True)
def trailing_drawdown_nb(ts: np.ndarray, equity: np.ndarray, window_ns: int) -> tuple[np.ndarray, int]:
    """Return (1 - equity(t) / max(equity(s) : ts[t] - window_ns <= ts[s], s <= t), status) per row.

    A monotonic deque of candidate peaks makes it O(T) whatever the window holds.
    """
    n = equity.shape[0]
    out = np.full(n, np.nan)
    if ts.shape[0] != n or window_ns < 0:
        return out, INVALID_ARGUMENT
    for t in range(1, n):
        if ts[t] < ts[t - 1]:
            return out, INVALID_INPUT
    status = OK
    # Indices of decreasing equity: the front is the window's peak, later ones are peaks-in-waiting.
    candidates = np.empty(n, dtype=np.int64)
    head = 0
    tail = 0
    for t in range(n):
        value = equity[t]
        if not np.isfinite(value):
            continue
        while tail > head and equity[candidates[tail - 1]] <= value:
            tail -= 1
        candidates[tail] = t
        tail += 1
        while ts[candidates[head]] < ts[t] - window_ns:
            head += 1
        peak = equity[candidates[head]]
        if peak > 0.0:
            out[t] = 1.0 - value / peak
        else:
            status = INVALID_INPUT
    return out, status
