"""The price window a strategy sees, and the market statistics drawn from it (volatility, ADV)."""

from collections.abc import Sequence

import numpy as np
import pandas as pd

from qmp_core.clock import NS_PER_DAY


class PriceWindow:
    """The last `capacity` rows of closes and volumes per symbol, in ring buffers.

    A symbol missing from a batch keeps its last close (its volume that row is NaN); a symbol first seen
    later has NaN closes in the rows before it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError(f"price window capacity must be >= 2, got {capacity}")
        self.capacity = capacity
        self.symbols: list[str] = []
        self._column: dict[str, int] = {}
        self._close = np.full((capacity, 16), np.nan)
        self._volume = np.full((capacity, 16), np.nan)
        self._ts = np.zeros(capacity, dtype=np.int64)
        self._count = 0
        self._head = 0

    def __len__(self) -> int:
        return self._count

    @property
    def last_ts(self) -> int:
        return int(self._ts[(self._head - 1) % self.capacity]) if self._count else 0

    def columns(self, symbols: Sequence[str]) -> np.ndarray:
        """Return the column of each symbol (adding unknown ones)."""
        column = self._column
        for symbol in symbols:
            if symbol not in column:
                column[symbol] = len(self.symbols)
                self.symbols.append(symbol)
        width = len(self.symbols)
        if width > self._close.shape[1]:
            grow = max(width, 2 * self._close.shape[1])
            for name in ("_close", "_volume"):
                old = getattr(self, name)
                new = np.full((self.capacity, grow), np.nan)
                new[:, : old.shape[1]] = old
                setattr(self, name, new)
        return np.fromiter((column[s] for s in symbols), dtype=np.int64, count=len(symbols))

    def append(self, ts_event: int, symbols: Sequence[str], closes: np.ndarray,
               volumes: np.ndarray | None = None) -> None:
        """Add one row; ignored unless ts_event is after the last row (a replayed batch adds nothing)."""
        if self._count and ts_event <= self.last_ts:
            return
        cols = self.columns(symbols)
        row = self._head
        if self._count:
            self._close[row] = self._close[(row - 1) % self.capacity]
        else:
            self._close[row] = np.nan
        self._close[row, cols] = closes
        self._volume[row] = np.nan
        if volumes is not None:
            self._volume[row, cols] = volumes
        self._ts[row] = ts_event
        self._head = (row + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def _order(self, rows: int | None) -> np.ndarray:
        count = self._count if rows is None else min(rows, self._count)
        return (self._head - count + np.arange(count)) % self.capacity

    def closes(self, rows: int | None = None) -> np.ndarray:
        """Return the last `rows` rows of closes (oldest first), one column per symbol seen."""
        return self._close[self._order(rows), : len(self.symbols)]

    def volumes(self, rows: int | None = None) -> np.ndarray:
        return self._volume[self._order(rows), : len(self.symbols)]

    def timestamps(self, rows: int | None = None) -> np.ndarray:
        return self._ts[self._order(rows)]

    def frame(self, rows: int | None = None) -> pd.DataFrame:
        """Return the last `rows` rows (all by default) as a DataFrame: UTC timestamps × symbols."""
        index = pd.DatetimeIndex(pd.to_datetime(self.timestamps(rows), unit="ns", utc=True))
        return pd.DataFrame(self.closes(rows).copy(), index=index, columns=list(self.symbols))

    def bars_per_day(self) -> float:
        """Return how many bars make a day, from the median spacing of the window's timestamps."""
        stamps = self.timestamps()
        if stamps.size < 2:
            return 1.0
        spacing = float(np.median(np.diff(stamps)))
        return NS_PER_DAY / spacing if spacing > 0 else 1.0


def daily_vols(closes: np.ndarray, window: int) -> np.ndarray:
    """Return per column the sample std of the last `window` log returns; NaN with fewer than 2 returns."""
    tail = closes[-(window + 1) :]
    if tail.shape[0] < 3:
        return np.full(tail.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = np.diff(np.log(tail), axis=0)
    finite = np.isfinite(returns)
    count = finite.sum(axis=0)
    safe = np.where(finite, returns, 0.0)
    mean = safe.sum(axis=0) / np.maximum(count, 1)
    squares = np.where(finite, (returns - mean) ** 2, 0.0).sum(axis=0)
    return np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), np.nan)


def average_daily_volume(volumes: np.ndarray, window: int, bars_per_day: float) -> np.ndarray:
    """Return per column the mean positive bar volume of the last `window` rows × bars per day; NaN if none."""
    tail = volumes[-window:]
    known = np.isfinite(tail) & (tail > 0.0)
    count = known.sum(axis=0)
    total = np.where(known, tail, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1) * bars_per_day, np.nan)
