"""Bounded close-price history of every symbol on one time axis, for revaluing positions over past returns."""

import numpy as np

INITIAL_COLUMNS = 64


class PriceHistory:
    """The latest `rows` bar timestamps × every symbol seen, as a float64 close matrix (NaN = no bar).

    Rows live in a buffer of twice the visible size and are compacted to its front when it fills, so a
    window is always one contiguous slice (no wrap-around copies) at an amortised O(1) per new row.
    Batches of the same timestamp (chunks, venues) share a row; a late timestamp inside the kept range
    is inserted in order, one older than the kept range is dropped.
    """

    def __init__(self, rows: int) -> None:
        if rows < 2:
            raise ValueError(f"a price history needs at least 2 rows, got {rows}")
        self.rows = rows
        self._ts = np.zeros(2 * rows, dtype=np.int64)
        self._close = np.full((2 * rows, INITIAL_COLUMNS), np.nan)
        self._start = 0
        self._end = 0
        self._columns: dict[str, int] = {}
        self._last_symbols: dict[object, tuple[list[str], np.ndarray]] = {}
        self._last_ts = np.zeros(INITIAL_COLUMNS, dtype=np.int64)  # latest bar per column (0: none)

    @property
    def symbols(self) -> int:
        return len(self._columns)

    @property
    def length(self) -> int:
        return self._end - self._start

    def timestamps(self) -> np.ndarray:
        return self._ts[self._start:self._end].copy()

    def record(self, ts: int, symbols: list[str], closes: np.ndarray, key: object = None) -> bool:
        """Store one batch's closes at ts; return False when ts is older than the kept history.

        `key` names the batch source (venue, chunk): a source that repeats its symbol list reuses the
        column lookup instead of hashing every symbol again.
        """
        row = self._row_for(ts)
        if row is None:
            return False
        columns = self._column_indices(symbols, key)  # first: it may grow (replace) the matrix
        self._close[row, columns] = closes
        self._last_ts[columns] = np.maximum(self._last_ts[columns], ts)
        return True

    def has(self, symbol: str) -> bool:
        return symbol in self._columns

    def last_bar_ts(self, symbol: str) -> int | None:
        """Return the timestamp of the symbol's latest bar, None if it never had one."""
        column = self._columns.get(symbol)
        return None if column is None else int(self._last_ts[column])

    def returns(self, symbols: list[str], through_ts: int, count: int) -> np.ndarray | None:
        """Return the simple returns of `symbols` over the last `count` row pairs with ts <= through_ts.

        Rows where any of the symbols lacks a return (a missing bar on either side) are dropped, so every
        row is a complete scenario. None when a symbol has never had a bar.
        """
        if any(symbol not in self._columns for symbol in symbols):
            return None
        scenario = self.returns_by_symbol(symbols, through_ts, count)
        return scenario[np.isfinite(scenario).all(axis=1)]

    def returns_by_symbol(self, symbols: list[str], through_ts: int, count: int) -> np.ndarray:
        """Return the simple returns of each of `symbols` (all known) over the last `count` row pairs with
        ts <= through_ts, one column each, NaN where a symbol lacks a return.

        Each column keeps its own gaps (a position is revalued over its own returns); `returns` keeps only
        the rows complete for every symbol.
        """
        columns = np.array([self._columns[s] for s in symbols], dtype=np.intp)
        hi = self._start + int(np.searchsorted(self._ts[self._start:self._end], through_ts, side="right"))
        lo = max(self._start, hi - count - 1)
        closes = self._close[lo:hi][:, columns]
        if closes.shape[0] < 2:
            return np.empty((0, len(symbols)))
        with np.errstate(invalid="ignore"):  # NaN where a bar is missing: the kernel drops those rows
            return closes[1:] / closes[:-1] - 1.0

    def _column_indices(self, symbols: list[str], key: object) -> np.ndarray:
        cached = self._last_symbols.get(key)
        if cached is not None and cached[0] == symbols:
            return cached[1]
        indices = np.empty(len(symbols), dtype=np.intp)
        for i, symbol in enumerate(symbols):
            column = self._columns.get(symbol)
            if column is None:
                column = self._add_column(symbol)
            indices[i] = column
        self._last_symbols[key] = (list(symbols), indices)
        return indices

    def _add_column(self, symbol: str) -> int:
        column = len(self._columns)
        if column == self._close.shape[1]:
            grown = np.full((self._close.shape[0], 2 * column), np.nan)
            grown[:, :column] = self._close
            self._close = grown
            last = np.zeros(2 * column, dtype=np.int64)
            last[:column] = self._last_ts
            self._last_ts = last
        self._columns[symbol] = column
        return column

    def _row_for(self, ts: int) -> int | None:
        if self._end > self._start:
            last = int(self._ts[self._end - 1])
            if ts == last:
                return self._end - 1
            if ts < last:
                return self._insert_row(ts)
        return self._append_row(ts)

    def _append_row(self, ts: int) -> int:
        if self._end == self._ts.shape[0]:
            self._compact()
        row = self._end
        self._ts[row] = ts
        self._close[row] = np.nan
        self._end += 1
        self._start = max(self._start, self._end - self.rows)
        return row

    def _insert_row(self, ts: int) -> int | None:
        position = self._start + int(np.searchsorted(self._ts[self._start:self._end], ts))
        if self._ts[position] == ts:
            return position
        if position == self._start and self.length >= self.rows:
            return None
        if self._end == self._ts.shape[0]:
            position -= self._start
            self._compact()
        self._ts[position + 1:self._end + 1] = self._ts[position:self._end].copy()
        self._close[position + 1:self._end + 1] = self._close[position:self._end].copy()
        self._ts[position] = ts
        self._close[position] = np.nan
        self._end += 1
        if self._end - self._start > self.rows:
            # The oldest row falls out; the inserted one is newer than it, so it stays.
            self._start += 1
        return position

    def _compact(self) -> None:
        n = self.length
        self._ts[:n] = self._ts[self._start:self._end]
        self._close[:n] = self._close[self._start:self._end]
        self._start, self._end = 0, n
