"""Per-symbol risk of the whole universe, updated in place on every bar batch (kernels/incremental.py).

The state lives in a handful of numpy arrays, one row per symbol, that grow (doubling) as symbols appear;
one kernel call updates every symbol of a batch. The GARCH and Student-t fits run on a schedule spread over
the batches: a symbol is due `refit_every` batches after its last fit, and at most
`max_refits_per_batch` of the longest-waiting due symbols are refitted per batch, so no
batch pays for the whole universe's fits at once; a universe larger than refit_every x that cap simply
refits each symbol less often (every N / cap batches).
"""

import math
from dataclasses import dataclass

import numpy as np

from qmp_kernels import incremental as inc
from qmp_kernels import status as kernel_status
from qmp_kernels.evt import evt_peaks_nb
from qmp_kernels.fhs import GARCH_MIN_OBSERVATIONS
from qmp_kernels.methods import METHOD_NAMES, N_METHODS, level_key
from qmp_kernels.threads import blocks, run_blocks
from qmp_kernels.var import TAIL_MARGIN, tail_index_nb

INITIAL_ROWS = 64
NEVER = -(2**62)


@dataclass(frozen=True)
class SymbolParams:
    window: int
    alphas: tuple[float, ...]
    ewma_lambda: float
    evt_threshold: float
    vol_window: int
    vol_average_window: int
    refit_every: int  # batches between two GARCH + Student-t fits of a symbol
    max_refits_per_batch: int  # cap: a large universe refits less often rather than in one slow batch


class SymbolRisk:
    """VaR / ES by every method, realized vol and its ratio, for every symbol seen, after every batch."""

    def __init__(self, params: SymbolParams) -> None:
        if params.vol_window > params.window:
            raise ValueError(f"vol_window must not exceed the window, got {params.vol_window} > {params.window}")
        self.params = params
        self.alphas = np.array(params.alphas, dtype=np.float64)
        # Method-major, level-minor: the order of a symbol's row of `var` and `es`.
        self.keys = [f"{name}_{level_key(alpha)}" for name in METHOD_NAMES for alpha in params.alphas]
        self.es_keys = [f"es_{key}" for key in self.keys]
        self._table = inc.t_table_nb(self.alphas, inc.T_TABLE_NODES)
        self._evt_log = inc.evt_log_table_nb(params.window, self.alphas, params.evt_threshold)
        self._kernel_params = np.zeros(inc.P_FIELDS)
        self._kernel_params[inc.P_LAMBDA] = params.ewma_lambda
        self._kernel_params[inc.P_EVT_THRESHOLD] = params.evt_threshold
        self._kernel_params[inc.P_VOL_WINDOW] = params.vol_window
        self._kernel_params[inc.P_VOL_AVERAGE] = params.vol_average_window
        k = max(tail_index_nb(params.window, 1.0 - min(params.alphas)),
                evt_peaks_nb(params.window, params.evt_threshold))
        self._capacity = min(params.window, 2 * (k + 1) + TAIL_MARGIN)
        self._columns: dict[str, int] = {}
        self._last_symbols: dict[object, tuple[list[str], np.ndarray]] = {}
        self._batches = 0
        self.refits = 0
        self._allocate(INITIAL_ROWS)

    def _allocate(self, rows: int) -> None:
        p = self.params
        levels = len(p.alphas)
        old = getattr(self, "ints", None)
        used = len(self._columns)
        ints = np.zeros((rows, inc.I_FIELDS), dtype=np.int64)
        floats = np.zeros((rows, inc.F_FIELDS))
        rings = np.full((3, rows, p.window), np.nan)
        tails = np.zeros((3, rows, self._capacity))
        vol_ring = np.zeros((rows, p.vol_average_window))
        var = np.full((rows, N_METHODS, levels), np.nan)
        es = np.full((rows, N_METHODS, levels), np.nan)
        codes = np.full((rows, N_METHODS), kernel_status.INSUFFICIENT_DATA, dtype=np.int64)
        vol = np.full((rows, 2), np.nan)
        last_refit = np.full(rows, NEVER, dtype=np.int64)
        last_close = np.full(rows, np.nan)
        if old is not None:
            last_refit[:used] = self.last_refit[:used]
            last_close[:used] = self.last_close[:used]
            ints[:used], floats[:used] = self.ints[:used], self.floats[:used]
            rings[:, :used], tails[:, :used] = self.rings[:, :used], self.tails[:, :used]
            vol_ring[:used], vol[:used] = self.vol_ring[:used], self.vol[:used]
            var[:used], es[:used], codes[:used] = self.var[:used], self.es[:used], self.codes[:used]
        self.ints, self.floats, self.rings, self.tails, self.vol_ring = ints, floats, rings, tails, vol_ring
        self.var, self.es, self.codes, self.vol = var, es, codes, vol
        self.last_refit = last_refit
        self.last_close = last_close

    @property
    def symbols(self) -> int:
        return len(self._columns)

    def column(self, symbol: str) -> int:
        """Return the state row of a symbol, adding it (and growing the arrays) if new."""
        index = self._columns.get(symbol)
        if index is None:
            index = len(self._columns)
            if index == self.ints.shape[0]:
                self._allocate(2 * index)
            self._columns[symbol] = index
        return index

    def columns(self, symbols: list[str], key: object = None) -> np.ndarray:
        """Return the state rows of symbols; a source (`key`) that repeats its list reuses the lookup."""
        cached = self._last_symbols.get(key) if key is not None else None
        if cached is not None and cached[0] == symbols:
            return cached[1]
        cols = np.array([self.column(symbol) for symbol in symbols], dtype=np.int64)
        if key is not None:
            self._last_symbols[key] = (list(symbols), cols)
        return cols

    def on_closes(self, ts: int, symbols: list[str], closes: np.ndarray, key: object = None) -> None:
        """Turn a batch's closes into returns against each symbol's previous close, and update."""
        cols = self.columns(symbols, key)
        prices = np.asarray(closes, dtype=np.float64)
        returns = prices / self.last_close[cols] - 1.0  # NaN for a symbol's first close: no return yet
        self.last_close[cols] = prices
        self.update(cols, returns)

    def update(self, cols: np.ndarray, returns: np.ndarray) -> None:
        """Add one return per symbol (NaN: none this batch), then run this batch's share of GARCH + t refits."""
        values = np.ascontiguousarray(returns, dtype=np.float64)
        if len(cols) != len(values):
            raise ValueError(f"one return per symbol expected, got {len(values)} for {len(cols)} symbols")
        codes = run_blocks(
            lambda first, last: inc.symbol_update_nb(cols, values, first, last, self.ints, self.floats, self.rings,
                                                     self.tails, self.vol_ring, self.alphas, self._table,
                                                     self._evt_log, self._kernel_params, self.var, self.es,
                                                     self.codes, self.vol),
            blocks(len(cols), inc.PARALLEL_MIN_SYMBOLS))
        code = max(codes)
        if code != kernel_status.OK:
            raise ValueError(f"symbol risk update rejected its arguments: {kernel_status.NAMES[code]}")
        self._batches += 1
        self._refit_due()

    def _refit_due(self) -> None:
        """Refit the longest-waiting symbols whose last fit is `refit_every` batches old (or never)."""
        used = len(self._columns)
        cap = self.params.max_refits_per_batch
        if used == 0 or cap <= 0:
            return
        waited = self._batches - self.last_refit[:used]
        due = np.flatnonzero((waited >= self.params.refit_every)
                             & (self.ints[:used, inc.I_FILLED] >= GARCH_MIN_OBSERVATIONS))
        if due.size > cap:
            due = due[np.argsort(self.last_refit[due], kind="stable")[:cap]]
        if due.size:
            self.refit(due.astype(np.int64))

    def refit(self, rows: np.ndarray) -> np.ndarray:
        """Refit the GARCH and Student-t of these symbol rows now; return each row's kernel status."""
        codes = np.zeros(rows.shape[0], dtype=np.int64)
        inc.symbol_refit_many_nb(rows, self.ints, self.floats, self.rings, self.tails, self.alphas,
                                 self._table, self._evt_log, self._kernel_params, self.var, self.es,
                                 self.codes, codes)
        self.last_refit[rows] = self._batches
        self.refits += int(rows.shape[0])
        return codes

    def measures(self, symbol: str, with_es: bool = True) -> dict[str, float]:
        """Return a symbol's VaR keys (`<method>_<level>`), `es_<key>` (unless not `with_es`), `vol` and
        `vol_ratio`; {} if unknown. Non-finite values are left out."""
        j = self._columns.get(symbol)
        if j is None:
            return {}
        # One conversion of the symbol's row, then plain floats: a snapshot asks this for many positions.
        out = {key: value for key, value in zip(self.keys, self.var[j].ravel().tolist(), strict=True)
               if math.isfinite(value)}
        if with_es:
            out |= {key: value for key, value in zip(self.es_keys, self.es[j].ravel().tolist(), strict=True)
                    if math.isfinite(value)}
        vol, vol_ratio = self.vol[j, :2].tolist()
        if math.isfinite(vol):
            out["vol"] = vol
        if math.isfinite(vol_ratio):
            out["vol_ratio"] = vol_ratio
        return out

    def riskiest(self, count: int, method: int = 0, level: int = -1) -> list[tuple[str, float]]:
        """Return up to `count` (symbol, VaR) with the largest VaR of one method and level."""
        used = len(self._columns)
        if used == 0:
            return []
        values = self.var[:used, method, level]
        order = np.argsort(np.where(np.isfinite(values), -values, np.inf))[:count]
        names = list(self._columns)
        return [(names[i], float(values[i])) for i in order if math.isfinite(values[i])]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ints, self.floats, self.rings, self.tails, self.vol_ring, self.var,
                                      self.es, self.codes, self.vol))
