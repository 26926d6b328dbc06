"""The bundled S&P 500 data: daily adjusted closes of 20 large stocks and the index, 1990-2022.

Both files ship inside the package (`qmp_core/data/*.csv.gz`, see LICENSE.skfolio there) and are read
through importlib.resources, so they work from a wheel as well as from the source tree. Prices only:
there is no volume, open, high or low in them.
"""

from functools import cache
from importlib import resources

import pandas as pd

PRICES_FILE = "sp500_prices.csv.gz"
INDEX_FILE = "sp500_index.csv.gz"


def load_sp500_prices(
    start: str | None = None, end: str | None = None, symbols: list[str] | None = None
) -> pd.DataFrame:
    """Return daily adjusted closes: DatetimeIndex (dates, inclusive range), one float64 column a symbol."""
    return _select(_read(PRICES_FILE), start, end, symbols)


def load_sp500_index(
    start: str | None = None, end: str | None = None, symbols: list[str] | None = None
) -> pd.DataFrame:
    """Return the S&P 500 index level (column `SP500`) like `load_sp500_prices`."""
    return _select(_read(INDEX_FILE), start, end, symbols)


def sp500_symbols() -> list[str]:
    """Return the tickers in the bundled price file, in file order."""
    return list(_read(PRICES_FILE).columns)


@cache
def _read(name: str) -> pd.DataFrame:
    # Parsed once per process; callers get copies from `_select`, so the cached frame is never mutated.
    with resources.as_file(resources.files("qmp_core") / "data" / name) as path:
        frame = pd.read_csv(path, index_col=0, parse_dates=True, compression="gzip")
    frame.index = pd.DatetimeIndex(frame.index, name="date")
    frame.columns = [str(column) for column in frame.columns]
    return frame.astype("float64")


def _select(frame: pd.DataFrame, start: str | None, end: str | None, symbols: list[str] | None) -> pd.DataFrame:
    if symbols is not None:
        unknown = sorted(set(symbols) - set(frame.columns))
        if unknown:
            raise ValueError(f"unknown symbols {unknown}; expected some of {list(frame.columns)}")
        frame = frame[list(symbols)]
    lo = pd.Timestamp(start) if start else None
    hi = pd.Timestamp(end) if end else None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"start must not be after end, got start={start} end={end}")
    return frame.loc[lo:hi].copy()
