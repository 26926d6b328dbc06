"""Bar tables on disk: the one reader of market-data files, for the collector's file source and `qmp import`.

A file is CSV (optionally gzip-compressed) or Parquet (with pyarrow installed). Its columns, in any order
and any case:
- long: ts, symbol, open, high, low, close, volume — one row a bar;
- one symbol per file: ts, open, high, low, close, volume, the symbol being the file's name (`AAPL.csv`),
  the shape most vendors export.
`ts` may also be called timestamp, datetime, date or time. It is int ns, or a date/time (UTC when naive);
dates alone (every row at midnight) move to the 21:00 UTC close, so a day's bar is never seen before the day
is over. The collector's wide close-price tables (`sources.wide_batches`) are a shape of their own.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qmp_core.clock import NS_PER_DAY, NS_PER_HOUR

# Daily data carries closes only. A bar stands for the whole session, stamped at 21:00 UTC (16:00 New
# York in winter: the close, so that a day's bar is never seen before the day is over).
CLOSE_HOUR_UTC = 21
VALUE_COLUMNS = ("open", "high", "low", "close", "volume")
LONG_COLUMNS = ("ts", "symbol", *VALUE_COLUMNS)
TIME_NAMES = ("ts", "timestamp", "datetime", "date", "time")
NAT = np.iinfo(np.int64).min  # an unreadable timestamp, where coercion is asked


@dataclass(frozen=True)
class BarColumns:
    """A file's bars as columns, in the file's row order."""

    ts: np.ndarray  # int64 ns UTC; NAT where unreadable (only when coerced)
    symbols: np.ndarray  # object (str)
    values: np.ndarray  # float64 (rows, 5): open, high, low, close, volume; NaN where unreadable (coerced)

    def __len__(self) -> int:
        return len(self.ts)


def read_table(path: Path) -> pd.DataFrame:
    """Return the file's table; raise ValueError saying why it cannot be read."""
    if not path.is_file():
        raise ValueError(f"market-data file not found: {path}")
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path)
    except ImportError as error:
        raise ValueError(f"cannot read {path}: {error} (Parquet needs pyarrow installed)") from error
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as error:
        raise ValueError(f"cannot parse {path} as a table: {error}") from error
    if frame.shape[0] == 0 or frame.shape[1] < 2:
        raise ValueError(f"{path}: expected a header and at least one data row with >= 2 columns, "
                         f"got shape {frame.shape}")
    return frame


def parse_times(values: pd.Series, path: Path, column: str) -> pd.DatetimeIndex:
    try:
        return pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: column {column!r} must hold dates or times: {error}") from error


def numeric(frame: pd.DataFrame, path: Path) -> np.ndarray:
    try:
        return frame.apply(pd.to_numeric).to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: price and volume columns must be numeric: {error}") from error


def event_times_ns(index: pd.Index) -> np.ndarray:
    """Return int ns UTC timestamps (naive ones taken as UTC): dates (all at midnight) move to the 21:00 UTC
    close; times stay. NaT stays NAT."""
    return close_stamped(np.asarray(pd.DatetimeIndex(index).as_unit("ns").asi8, dtype=np.int64))


def close_stamped(ns: np.ndarray) -> np.ndarray:
    """Move int ns UTC timestamps that are all dates (midnight) to the day's close, 21:00 UTC."""
    readable = ns != NAT
    if readable.any() and bool((ns[readable] % NS_PER_DAY == 0).all()):
        return np.where(readable, ns + CLOSE_HOUR_UTC * NS_PER_HOUR, ns)
    return ns


def _coerced_times(raw: pd.Series) -> pd.DatetimeIndex:
    """Parse times, NaT where unreadable: ISO 8601 first (fast), then each other value on its own."""
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    retry = parsed.isna() & raw.notna()
    if retry.any():
        parsed[retry] = pd.to_datetime(raw[retry], utc=True, errors="coerce", format="mixed")
    return pd.DatetimeIndex(parsed)


def is_long(frame: pd.DataFrame) -> bool:
    return "symbol" in {str(c).strip().lower() for c in frame.columns}


def long_columns(frame: pd.DataFrame, path: Path, symbol: str | None = None, coerce: bool = False) -> BarColumns:
    """Return the bars of a long table (or of one symbol's table, `symbol` naming it).

    Without `coerce`, a cell that is not a number or a time raises ValueError for the whole file (a feed
    the collector replays must be sound); with it, such a cell becomes NaN or NAT, for row-by-row
    validation to reject with its reason.
    """
    names = [str(c).strip().lower() for c in frame.columns]
    frame = frame.set_axis(names, axis=1)
    time_column = next((name for name in TIME_NAMES if name in names), None)
    needed = [c for c in VALUE_COLUMNS if c not in names] + ([] if symbol is not None or "symbol" in names
                                                             else ["symbol"])
    if time_column is None or needed:
        raise ValueError(f"{path}: needs columns {list(LONG_COLUMNS)} (or a file per symbol without `symbol`; "
                         f"ts may be called {', '.join(TIME_NAMES[1:])}), missing "
                         f"{(['ts'] if time_column is None else []) + needed}")
    raw_ts = frame[time_column]
    if pd.api.types.is_integer_dtype(raw_ts.dtype):
        times = raw_ts.to_numpy(dtype=np.int64)
    elif coerce:
        times = event_times_ns(_coerced_times(raw_ts))
    else:
        times = event_times_ns(parse_times(raw_ts, path, time_column))
    values_frame = frame[list(VALUE_COLUMNS)]
    if all(pd.api.types.is_numeric_dtype(dtype) for dtype in values_frame.dtypes):  # the usual, parsed already
        values = values_frame.to_numpy(dtype=np.float64)
    elif coerce:
        values = values_frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    else:
        values = numeric(values_frame, path)
    if symbol is not None:
        symbols = np.full(len(frame), symbol, dtype=object)
    else:
        symbols = frame["symbol"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
    return BarColumns(ts=times, symbols=symbols, values=values)
