"""Market-data sources: where the collector's batches come from. Each yields `BarBatch` messages, one per
timestamp for a whole universe:
- `HistorySource`: the bundled S&P 500 daily closes (see `qmp_core.datasets`);
- `SyntheticSource`: an endless GARCH(1,1) / Student-t generator with jumps, any number of symbols;
- `FileSource`: a CSV (or Parquet) file, wide (date + one price column per symbol) or long
  (ts, symbol, open, high, low, close, volume);
- `LiveAdapter`: the interface of live feeds (an async iterator of batches); `SyntheticLiveAdapter` is
  the synthetic generator run on wall time.
They read files and generate data; the engine (`engine/`) only decides what to do with a batch.
"""

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from qmp_core import subjects
from qmp_core.bar_files import event_times_ns, is_long, long_columns, numeric, parse_times, read_table
from qmp_core.clock import NS_PER_DAY, NS_PER_SECOND, Clock
from qmp_core.datasets import load_sp500_prices
from qmp_core.messages import BarBatch

# The bundled data has no volume. Assume every symbol trades the same notional each day, so that
# volume = notional / price: enough for participation-based slippage to see a plausible scale
# (large US stocks trade from a few hundred million to a few billion dollars a day).
DAILY_NOTIONAL_USD = 5e8


# ---------------------------------------------------------------- wide price tables
def wide_batches(
    prices: pd.DataFrame, venue: str, daily_notional: float = DAILY_NOTIONAL_USD
) -> Iterator[BarBatch]:
    """Yield one batch a row of a wide close-price table; missing (NaN) cells mean "no bar" and are left out.

    open = high = low = close; volume = daily_notional / close. Non-positive prices are kept so that
    validation rejects them with a reason.
    """
    times = event_times_ns(prices.index)
    values = prices.to_numpy(dtype=np.float64)
    columns = np.array([str(c) for c in prices.columns], dtype=object)
    with np.errstate(divide="ignore"):
        volumes = daily_notional / values
    for row in range(values.shape[0]):
        present = ~np.isnan(values[row])
        close = values[row, present].tolist()
        yield BarBatch(
            venue=venue, ts_event=int(times[row]), symbols=columns[present].tolist(),
            open=close, high=close, low=close, close=close, volume=volumes[row, present].tolist(),
            seq=row + 1,
        )


class HistorySource:
    """The bundled S&P 500 daily adjusted closes between `start` and `end` (inclusive), one batch a day.

    Daily closes only: open = high = low = close = the adjusted close. Volume is an assumption, not data:
    every symbol trades DAILY_NOTIONAL_USD (5e8 USD) a day, so volume = 5e8 / price. ts_event is the date
    at 21:00 UTC in int ns; seq counts trading days from 1.
    """

    def __init__(
        self, start: str | None, end: str | None, symbols: list[str] | None = None, venue: str = "sp500",
        daily_notional: float = DAILY_NOTIONAL_USD,
    ) -> None:
        self.venue = subjects.check_token(venue, "venue")
        self.prices = load_sp500_prices(start, end, symbols)
        if self.prices.empty:
            raise ValueError(f"no bundled S&P 500 data between {start} and {end} (data covers 1990-2022)")
        self.daily_notional = daily_notional

    def __len__(self) -> int:
        return len(self.prices)

    def __iter__(self) -> Iterator[BarBatch]:
        return wide_batches(self.prices, self.venue, self.daily_notional)


# ---------------------------------------------------------------- synthetic
@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic market; per-bar quantities scale with bar_seconds / 86,400.

    The synthetic market trades around the clock, so a day is 86,400 s of bars.
    """

    df: float = 4.0  # Student-t degrees of freedom of the innovations: fat tails, finite variance
    alpha: float = 0.08  # GARCH(1,1) reaction to the last squared return
    beta: float = 0.90  # GARCH(1,1) persistence; alpha + beta < 1 keeps the variance stationary
    daily_vol_low: float = 0.01  # each symbol's unconditional daily volatility is drawn in [low, high]
    daily_vol_high: float = 0.03
    jumps_per_day: float = 0.02  # expected jumps per symbol per day (a Poisson rate, thinned per bar)
    jump_mean: float = -0.01  # log-return jumps: crashes more often than spikes
    jump_std: float = 0.05
    max_variance_ratio: float = 100.0  # cap on conditional / unconditional variance after a jump
    price_low: float = 20.0
    price_high: float = 200.0
    daily_notional: float = DAILY_NOTIONAL_USD


class SyntheticSource:
    """An endless fat-tailed market of `n_symbols` symbols (S0000, S0001, ...), one bar every bar_seconds.

    Log-returns r = sigma_t * z + J: sigma_t^2 follows GARCH(1,1) (omega + alpha * r^2 + beta * sigma^2),
    z is Student-t(df) scaled to unit variance, and J a rare normal jump. open = the previous close,
    close = open * exp(r); high and low extend max(open, close) and min(open, close) by half-normal
    wicks; volume = notional per bar / close * (0.5 + |z|) > 0. Everything is vectorised across symbols
    and reproducible from `seed`.
    """

    def __init__(
        self, n_symbols: int, seed: int, start_ns: int, bar_seconds: float = 60.0, venue: str = "synth",
        params: SyntheticParams | None = None,
    ) -> None:
        if n_symbols < 1:
            raise ValueError(f"n_symbols must be >= 1, got {n_symbols}")
        if bar_seconds <= 0:
            raise ValueError(f"bar_seconds must be > 0, got {bar_seconds}")
        if start_ns <= 0:
            raise ValueError(f"start_ns must be a positive int ns, got {start_ns}")
        self.venue = subjects.check_token(venue, "venue")
        self.params = p = params or SyntheticParams()
        if not p.alpha + p.beta < 1.0 or p.df <= 2.0:
            raise ValueError(f"need alpha + beta < 1 and df > 2, got {p.alpha}, {p.beta}, {p.df}")
        self.n_symbols = n_symbols
        self.bar_seconds = bar_seconds
        self.bar_ns = round(bar_seconds * NS_PER_SECOND)
        self.start_ns = start_ns
        self.symbols = [f"S{i:04d}" for i in range(n_symbols)]
        self._rng = np.random.default_rng(seed)
        day_fraction = bar_seconds * NS_PER_SECOND / NS_PER_DAY
        daily_vol = self._rng.uniform(p.daily_vol_low, p.daily_vol_high, n_symbols)
        self._long_run_var = daily_vol**2 * day_fraction
        self._omega = self._long_run_var * (1.0 - p.alpha - p.beta)
        self._max_var = self._long_run_var * p.max_variance_ratio
        self._var = self._long_run_var.copy()
        self._close = self._rng.uniform(p.price_low, p.price_high, n_symbols)
        self._t_scale = math.sqrt((p.df - 2.0) / p.df)
        self._jump_prob = -math.expm1(-p.jumps_per_day * day_fraction)
        self._notional = p.daily_notional * day_fraction
        self._seq = 0

    def __iter__(self) -> Iterator[BarBatch]:
        return self

    def __next__(self) -> BarBatch:
        return self.next_batch()

    def next_batch(self, ts_event: int | None = None) -> BarBatch:
        """Return the next bar of every symbol, at `ts_event` or else start_ns + (seq - 1) * bar_ns."""
        p, rng, n = self.params, self._rng, self.n_symbols
        sigma = np.sqrt(self._var)
        z = rng.standard_t(p.df, n) * self._t_scale
        ret = sigma * z
        jumps = rng.random(n) < self._jump_prob
        n_jumps = int(jumps.sum())
        if n_jumps:
            ret[jumps] += rng.normal(p.jump_mean, p.jump_std, n_jumps)
        self._var = np.minimum(self._omega + p.alpha * ret**2 + p.beta * self._var, self._max_var)
        open_ = self._close
        close = open_ * np.exp(ret)
        wicks = np.abs(rng.standard_normal((2, n))) * (0.5 * sigma)
        high = np.maximum(open_, close) * np.exp(wicks[0])
        low = np.minimum(open_, close) * np.exp(-wicks[1])
        volume = self._notional / close * (0.5 + np.abs(z))
        self._close = close
        self._seq += 1
        ts = self.start_ns + (self._seq - 1) * self.bar_ns if ts_event is None else ts_event
        return BarBatch(
            venue=self.venue, ts_event=ts, symbols=list(self.symbols), open=open_.tolist(),
            high=high.tolist(), low=low.tolist(), close=close.tolist(), volume=volume.tolist(),
            seq=self._seq,
        )


# ---------------------------------------------------------------- live feeds
class LiveAdapter(Protocol):
    """A live feed: an async iterator of batches in arrival order, stamped with their event time."""

    venue: str

    def __aiter__(self) -> AsyncIterator[BarBatch]: ...


class SyntheticLiveAdapter:
    """The synthetic generator as a live feed: one bar every bar_seconds, stamped `clock.now_ns()`.

    `sleep` is injected (asyncio.sleep in the service, a fake in tests), so this holds no I/O itself.
    """

    def __init__(self, source: SyntheticSource, clock: Clock, sleep: Callable[[float], Awaitable[None]]) -> None:
        self.source = source
        self.venue = source.venue
        self._clock = clock
        self._sleep = sleep

    async def __aiter__(self) -> AsyncIterator[BarBatch]:
        while True:
            await self._sleep(self.source.bar_seconds)
            yield self.source.next_batch(ts_event=self._clock.now_ns())


# ---------------------------------------------------------------- files
class FileSource:
    """Batches from a CSV (or Parquet, with pyarrow installed) file, in the file's timestamp order.

    Wide: a date/time column first, then one close-price column per symbol (the bundled file's shape);
    treated like `HistorySource` (OHLC = close, volume = DAILY_NOTIONAL_USD / close, dates at 21:00 UTC,
    empty cells = no bar). Long: columns ts, symbol, open, high, low, close, volume (`qmp_core.bar_files`).
    Timestamps are not sorted: the engine rejects out-of-order and duplicate ones, as it would from a live
    feed. A file that is neither raises ValueError.
    """

    def __init__(self, path: str | Path, venue: str, daily_notional: float = DAILY_NOTIONAL_USD) -> None:
        self.path = Path(path)
        self.venue = subjects.check_token(venue, "venue")
        self.daily_notional = daily_notional
        frame = read_table(self.path)
        if is_long(frame):
            self._batches = _long_batches(frame, self.venue, self.path)
        else:
            self._batches = _wide_file_batches(frame, self.venue, self.path, daily_notional)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[BarBatch]:
        return iter(self._batches)


def _wide_file_batches(frame: pd.DataFrame, venue: str, path: Path, daily_notional: float) -> list[BarBatch]:
    first = str(frame.columns[0])
    stamps = parse_times(frame.iloc[:, 0], path, first)
    prices = pd.DataFrame(numeric(frame.iloc[:, 1:], path), index=stamps,
                          columns=[str(c).strip() for c in frame.columns[1:]])
    return list(wide_batches(prices, venue, daily_notional))


def _long_batches(frame: pd.DataFrame, venue: str, path: Path) -> list[BarBatch]:
    bars = long_columns(frame, path)
    times, symbols, values = bars.ts, bars.symbols, bars.values
    batches: list[BarBatch] = []
    # Group by timestamp in order of first appearance, so the file's order reaches the engine.
    unique_ts, first_row, group = np.unique(times, return_index=True, return_inverse=True)
    for rank, g in enumerate(np.argsort(first_row, kind="stable")):
        rows = np.flatnonzero(group == g)
        cols = values[rows]
        batches.append(BarBatch(
            venue=venue, ts_event=int(unique_ts[g]), symbols=symbols[rows].tolist(),
            open=cols[:, 0].tolist(), high=cols[:, 1].tolist(), low=cols[:, 2].tolist(),
            close=cols[:, 3].tolist(), volume=cols[:, 4].tolist(), seq=rank + 1,
        ))
    return batches
