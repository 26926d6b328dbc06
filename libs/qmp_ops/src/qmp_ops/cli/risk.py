"""`qmp risk var | report` and `qmp stress`: the risk service's kernels on files, positions or a running strategy.

- `qmp risk var --prices FILE.csv [--column NAME | --weights A=0.6,B=0.4] --method METHOD --level 0.99
  [--window N] [--horizon DAYS]` prints VaR and ES as JSON. The CSV has the date column first and one
  price column per instrument; returns are close-to-close; `--weights` (fractions of equity, shorts
  negative) makes a portfolio whose scenario P&L is sum_i w_i r_i (full revaluation of a book at those
  weights). METHOD is one of the seven methods or `all`.
- `qmp risk report STRATEGY` shows the running strategy's latest risk snapshot (VaR / ES by method,
  drawdowns, positions, backtests, breakers); `qmp risk report --prices FILE ...` backtests every method on
  the file: rolling one-day forecasts over the last `--days`, exceptions, Kupiec, Christoffersen, Basel
  zone, Acerbi-Szekely Z2.
- `qmp stress STRATEGY` (or `--positions FILE`): the current book under historical episodes (2008-09-15 ..
  2008-11-20 and 2020-02-19 .. 2020-03-23 from the bundled S&P 500 data; 1987-10-19 as a one-day -20.5%
  equity shock) and hypothetical shocks (index gap, correlations to 0.9, volatility x3): P&L, VaR and ES
  after each, and which breakers would trip; `--monte-carlo` adds the distribution of the 1-year maximum
  drawdown from a seeded GARCH-t-with-jumps simulation calibrated on the book's history.

Bad input (a missing file or column, a non-numeric or non-positive price, fewer rows than the window, an
unknown method) prints `error: ...` on stderr and exits with code 2; it never prints a number.
The breaker thresholds of `qmp stress` are options whose defaults are the risk service's defaults.
"""

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import nats
import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from qmp_core import subjects
from qmp_core.breakers import (
    BREAKER_DRAWDOWN,
    BREAKER_VOLATILITY,
    drawdown_trips,
    stop_loss_breaker,
    stop_loss_trips,
    volatility_trips,
)
from qmp_core.clock import NS_PER_DAY
from qmp_core.config import RISK_DEFAULTS
from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_core.messages import PortfolioSnapshot, RiskSnapshot, codec
from qmp_kernels import backtest as bt
from qmp_kernels import status as kernel_status
from qmp_kernels.drawdown import trailing_drawdown_nb
from qmp_kernels.methods import (
    INFO_N,
    METHOD_NAMES,
    N_METHODS,
    level_key,
    method_index,
    rolling_var_es,
    var_es_methods_nb,
)
from qmp_kernels.stress import calibrate_garch_t_jump_nb, path_max_drawdown_nb
from qmp_kernels.vol import vol_ratio_1d_nb
from qmp_lab.parallel import IN_PROCESS, TaskFailed, Workers, run_tasks
from qmp_lab.scenarios import EPISODES, monte_carlo_block, monte_carlo_blocks, recorrelate
from qmp_ops.cli.research import RAY_ADDRESS_HELP, WORKERS_HELP, research_workers
from qmp_ops.runtime.supervisor import Connection, StackUnavailable

EXIT_BAD_INPUT = 2
DAY_NS = NS_PER_DAY

risk_app = typer.Typer(help="VaR / ES and VaR backtests with the risk service's kernels, on files or the stack.",
                       no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()


class InputError(ValueError):
    """Input the commands refuse, with the reason in words."""


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------- input
def read_prices(path: Path) -> pd.DataFrame:
    """Return the price columns of a CSV (date column first) as float64; InputError on anything else."""
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        raw = pd.read_csv(path, index_col=0, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not a CSV of prices: {error}") from error
    if raw.shape[1] == 0:
        raise InputError(f"{path} has no price column after its date column")
    frame = pd.DataFrame(index=raw.index)
    for name in raw.columns:
        values = pd.to_numeric(raw[name].str.strip(), errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise InputError(f"{path}: column {name!r}, row {i + 2} ({raw.index[i]}): {raw[name].iloc[i]!r} is not a "
                             f"number (prices must be numeric; {bad.size} such rows)")
        non_positive = np.flatnonzero((values <= 0).to_numpy())
        if non_positive.size:
            i = int(non_positive[0])
            raise InputError(f"{path}: column {name!r}, row {i + 2} ({raw.index[i]}): price {values.iloc[i]} is not "
                             f"positive ({non_positive.size} such rows)")
        frame[str(name)] = values.astype(np.float64)
    return frame


def parse_weights(text: str, columns: list[str]) -> dict[str, float]:
    """Return {column: weight} from `A=0.6,B=-0.4` (or `0.6,-0.4` in column order)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise InputError("--weights is empty")
    weights: dict[str, float] = {}
    try:
        if all("=" in p for p in parts):
            for part in parts:
                name, value = part.split("=", 1)
                weights[name.strip()] = float(value)
        elif not any("=" in p for p in parts):
            if len(parts) != len(columns):
                raise InputError(f"--weights has {len(parts)} values for {len(columns)} columns {columns}; "
                                 f"name them (A=0.6,B=0.4) to use a subset")
            weights = {name: float(value) for name, value in zip(columns, parts, strict=True)}
        else:
            raise InputError("--weights mixes named (A=0.6) and positional values")
    except ValueError as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"--weights must be numbers, got {text!r}") from error
    missing = sorted(set(weights) - set(columns))
    if missing:
        raise InputError(f"--weights names columns not in the file: {missing}; the file has {columns}")
    if not all(math.isfinite(w) for w in weights.values()):
        raise InputError(f"--weights must be finite, got {weights}")
    return weights


def series_from(frame: pd.DataFrame, column: str | None, weights: str | None) -> tuple[np.ndarray, str]:
    """Return the return series to measure (one column's, or a weighted book's) and its label."""
    columns = list(frame.columns)
    if column is not None and weights is not None:
        raise InputError("give --column or --weights, not both")
    if weights is not None:
        parsed = parse_weights(weights, columns)
        names = list(parsed)
        prices = frame[names].to_numpy()
        returns = prices[1:] / prices[:-1] - 1.0
        return returns @ np.array([parsed[n] for n in names]), ",".join(f"{n}={parsed[n]:g}" for n in names)
    if column is None:
        if len(columns) > 1:
            raise InputError(f"the file has {len(columns)} price columns {columns[:10]}: choose one with --column "
                             f"or combine them with --weights")
        column = columns[0]
    if column not in frame.columns:
        raise InputError(f"no column {column!r} in the file; it has {columns}")
    prices = frame[column].to_numpy()
    return prices[1:] / prices[:-1] - 1.0, column


def check_window(returns: np.ndarray, window: int, rows: int) -> None:
    if window < 2:
        raise InputError(f"--window must be at least 2, got {window}")
    if returns.shape[0] < window:
        raise InputError(f"{rows} price rows give {returns.shape[0]} returns, fewer than the window of {window}")


def check_level(level: float) -> None:
    if not (0.5 < level < 1.0):
        raise InputError(f"--level must be inside (0.5, 1), e.g. 0.99, got {level}")


def methods_of(method: str) -> list[str]:
    if method == "all":
        return list(METHOD_NAMES)
    try:
        method_index(method)
    except ValueError as error:
        raise InputError(f"{error} or all") from error
    return [method]


# ---------------------------------------------------------------- qmp risk var
@risk_app.command("var")
def var_command(
    prices: Annotated[Path, typer.Option("--prices", help="CSV: date column first, then one price column each")],
    method: Annotated[str, typer.Option(help=f"{' | '.join(METHOD_NAMES)} | all")] = "historical",
    level: Annotated[float, typer.Option(help="confidence level")] = 0.99,
    window: Annotated[int, typer.Option(help="returns in the scenario window")] = 250,
    column: Annotated[str | None, typer.Option(help="price column to measure")] = None,
    weights: Annotated[str | None, typer.Option(help="portfolio weights: A=0.6,B=0.4 (or 0.6,0.4)")] = None,
    horizon: Annotated[int, typer.Option(help="days; the 1-day figures times sqrt(days)")] = 1,
) -> None:
    """Print VaR and ES (positive loss fractions) of a price file as JSON, with the service's kernels."""
    try:
        names = methods_of(method)
        check_level(level)
        if horizon < 1:
            raise InputError(f"--horizon must be at least 1 day, got {horizon}")
        frame = read_prices(prices)
        returns, label = series_from(frame, column, weights)
        check_window(returns, window, frame.shape[0])
        result = measure(returns, window, level, names)
    except InputError as error:
        fail(str(error))
    scale = math.sqrt(horizon)
    out: dict[str, Any] = {"file": str(prices), "series": label, "as_of": str(frame.index[-1]), "level": level,
                           "window": window, "horizon_days": horizon, "observations": result["observations"]}
    failures = {}
    for name in names:
        entry = result["methods"][name]
        if entry["status"] != "ok":
            failures[name] = entry["reason"]
    if failures and len(names) == 1:
        fail(f"{names[0]}: {failures[names[0]]}")
    if len(names) == 1:
        entry = result["methods"][names[0]]
        out |= {"method": names[0], "var": entry["var"] * scale, "es": entry["es"] * scale}
    else:
        out["methods"] = {name: ({"var": e["var"] * scale, "es": e["es"] * scale} if e["status"] == "ok"
                                 else {"error": e["reason"]}) for name, e in result["methods"].items()}
    typer.echo(json.dumps(out, indent=2))


def measure(returns: np.ndarray, window: int, level: float, names: list[str]) -> dict[str, Any]:
    """Run the service's all-method kernel on a series; return per-method VaR / ES or the reason there is none."""
    mask = np.zeros(N_METHODS, dtype=np.bool_)
    for name in names:
        mask[method_index(name)] = True
    var, es, codes, info = var_es_methods_nb(np.ascontiguousarray(returns, dtype=np.float64), window,
                                             np.array([level]), RISK_DEFAULTS.ewma_lambda,
                                             RISK_DEFAULTS.evt_threshold, np.full(3, np.nan), mask)
    methods: dict[str, Any] = {}
    for name in names:
        m = method_index(name)
        code = int(codes[m])
        if code == kernel_status.OK and math.isfinite(var[m, 0]) and math.isfinite(es[m, 0]):
            methods[name] = {"status": "ok", "var": float(var[m, 0]), "es": float(es[m, 0])}
        else:
            reason = kernel_status.NAMES.get(code, str(code))
            if code == kernel_status.UNBOUNDED:
                reason += ": the fitted tail has no finite mean (GPD shape >= 1)"
            methods[name] = {"status": "error", "reason": reason}
    return {"observations": int(info[INFO_N]), "methods": methods}


# ---------------------------------------------------------------- qmp risk report
@risk_app.command("report")
def report_command(
    strategy: Annotated[str | None, typer.Argument(help="a running strategy (omit with --prices)")] = None,
    prices: Annotated[Path | None, typer.Option("--prices", help="backtest a CSV of prices instead")] = None,
    column: Annotated[str | None, typer.Option(help="price column")] = None,
    weights: Annotated[str | None, typer.Option(help="portfolio weights: A=0.6,B=0.4")] = None,
    level: Annotated[float, typer.Option(help="VaR level of the backtest")] = 0.99,
    window: Annotated[int, typer.Option(help="returns in each forecast's window")] = 250,
    days: Annotated[int, typer.Option(help="forecast days backtested")] = 250,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a strategy's latest risk snapshot with its VaR backtests, or backtest every method on a file."""
    if (strategy is None) == (prices is None):
        fail("give a STRATEGY, or --prices FILE, not both")
    if strategy is not None:
        try:
            subjects.check_token(strategy, "strategy")
            snapshot = asyncio.run(_latest(Connection.read(), subjects.STREAM_RISK, subjects.snapshot(strategy),
                                           RiskSnapshot))
        except (ValueError, FileNotFoundError, StackUnavailable) as error:
            fail(str(error))
        if as_json:
            typer.echo(json.dumps(msgspec.to_builtins(snapshot), indent=2))
        else:
            print_snapshot(snapshot)
        return
    assert prices is not None
    try:
        check_level(level)
        if days < 1:
            raise InputError(f"--days must be at least 1, got {days}")
        frame = read_prices(prices)
        returns, label = series_from(frame, column, weights)
        check_window(returns, window + days, frame.shape[0])
    except InputError as error:
        fail(str(error))
    results = backtest_series(returns, window, level, days)
    out = {"file": str(prices), "series": label, "level": level, "window": window, "days": days, "methods": results}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table(title=f"VaR {level:.1%} backtest of {label}: last {days} days, window {window}")
    for name in ("method", "VaR now", "ES now", "exceptions", "expected", "Kupiec p", "Christoffersen p",
                 "cond. coverage p", "zone", "Z2 (ES)", "ES zone"):
        table.add_column(name)
    for name, r in results.items():
        table.add_row(name, _pct(r.get("var")), _pct(r.get("es")), str(r.get("exceptions", "")),
                      _num(r.get("expected")), _num(r.get("kupiec_p")), _num(r.get("christoffersen_p")),
                      _num(r.get("conditional_coverage_p")), _zone(r.get("zone")), _num(r.get("es_z2")),
                      _zone(r.get("es_zone")) if r.get("es_zone") else "")
    console.print(table)


def backtest_series(returns: np.ndarray, window: int, level: float, days: int) -> dict[str, dict[str, Any]]:
    """Return per method: the latest VaR / ES and the backtest of its one-day forecasts over the last days."""
    # forecasts for the last `days` returns need `window` before them; the FHS filters get a window more
    series = np.ascontiguousarray(returns[-(days + 2 * window):], dtype=np.float64)
    out: dict[str, dict[str, Any]] = {}
    for name in METHOD_NAMES:
        var, es, _ = rolling_var_es(series, window, level, name, RISK_DEFAULTS.ewma_lambda,
                                    RISK_DEFAULTS.evt_threshold)
        realized = series[-days:]
        fields, code = bt.backtest_nb(realized, np.ascontiguousarray(var[-days - 1:-1]),
                                      np.ascontiguousarray(es[-days - 1:-1]), level)
        entry: dict[str, Any] = {"var": _finite(var[-1]), "es": _finite(es[-1])}
        if code == kernel_status.OK:
            entry |= bt.backtest_record(fields)
        else:
            entry["error"] = kernel_status.NAMES.get(code, str(code))
        out[name] = entry
    return out


def print_snapshot(snapshot: RiskSnapshot) -> None:
    when = pd.Timestamp(snapshot.ts_event, unit="ns", tz="UTC")
    console.print(f"[bold]{snapshot.strategy}[/] at {when}: equity {snapshot.equity:,.2f}, status {snapshot.status}, "
                  f"{snapshot.observations} scenarios; drawdown 24h {snapshot.drawdown_24h:.2%}, since inception "
                  f"{snapshot.drawdown:.2%} (max {snapshot.drawdown_max:.2%}); vol ratio "
                  f"{snapshot.volatility_ratio:.2f}; breakers: {', '.join(snapshot.breakers) or 'none'}")
    levels = sorted({k.rsplit("_", 1)[1] for k in snapshot.var if k.split("_")[-1].isdigit()}, key=len)
    table = Table(title="VaR / ES (1 day, fraction of equity)")
    table.add_column("method")
    for key in levels:
        table.add_column(f"VaR {key}")
        table.add_column(f"ES {key}")
    for name in (*METHOD_NAMES, "pnl_historical"):
        cells = []
        for key in levels:
            cells += [_pct(snapshot.var.get(f"{name}_{key}")), _pct(snapshot.es.get(f"{name}_{key}"))]
        if any(c != "n/a" for c in cells):
            table.add_row(name, *cells)
    console.print(table)
    if snapshot.errors:
        console.print("missing: " + "; ".join(f"{k}: {v}" for k, v in snapshot.errors.items()))
    if snapshot.backtests:
        table = Table(title="VaR backtests")
        for name in ("forecast", "days", "exceptions", "expected", "Kupiec p", "Christoffersen p", "zone", "Z2",
                     "ES zone"):
            table.add_column(name)
        for key, b in snapshot.backtests.items():
            table.add_row(key, str(b.observations), str(b.exceptions), f"{b.expected:.2f}", _num(b.kupiec_p),
                          _num(b.christoffersen_p), _zone(b.zone), _num(b.es_z2), _zone(b.es_zone))
        console.print(table)
    if snapshot.positions:
        table = Table(title="positions")
        for name in ("symbol", "quantity", "price", "weight", "entry", "P&L from entry", "drawdown from peak",
                     "VaR 99", "stop-loss"):
            table.add_column(name)
        for p in snapshot.positions:
            table.add_row(p.symbol, f"{p.quantity:g}", f"{p.price:.4g}", f"{p.weight:.2%}", f"{p.entry_price:.4g}",
                          f"{p.pnl_from_entry:+.2%}", f"{p.drawdown_from_peak:.2%}",
                          _pct(p.var.get("historical_99")), "fired" if p.stop_loss else "")
        console.print(table)


# ---------------------------------------------------------------- qmp stress
@dataclass(frozen=True)
class Book:
    equity: float
    symbols: list[str]
    quantities: np.ndarray
    prices: np.ndarray
    source: str

    @property
    def exposure(self) -> np.ndarray:
        return self.quantities * self.prices


CRASH_1987 = -0.205


def load_book(path: Path, equity: float | None) -> Book:
    """Read positions: CSV `symbol,quantity[,price]`, or JSON {"equity": E, "positions": [{symbol, quantity,
    price}]}; a price left out is the symbol's last bundled close."""
    if not path.is_file():
        raise InputError(f"no such file: {path}")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
            rows = data["positions"]
            equity = equity if equity is not None else data.get("equity")
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{path}: expected {{\"equity\": E, \"positions\": [...]}}: {error}") from error
    else:
        try:
            rows = pd.read_csv(path).to_dict("records")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise InputError(f"{path} is not a CSV of positions: {error}") from error
    if not rows:
        raise InputError(f"{path} holds no positions")
    known = set(load_sp500_prices().columns)
    last = load_sp500_prices().iloc[-1]
    symbols, quantities, prices = [], [], []
    for i, row in enumerate(rows):
        try:
            symbol = str(row["symbol"])
            quantity = float(row["quantity"])
            price = row.get("price")
            price = float(price) if price is not None and not (isinstance(price, float) and math.isnan(price)) else (
                float(last[symbol]) if symbol in known else math.nan)
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: position {i + 1} needs symbol, quantity (and price): {row}") from error
        if not math.isfinite(quantity) or not (price > 0):
            raise InputError(f"{path}: position {symbol}: quantity must be finite and price positive "
                             f"(a symbol outside the bundled data needs a price), got {quantity}, {price}")
        symbols.append(symbol)
        quantities.append(quantity)
        prices.append(price)
    q, p = np.array(quantities), np.array(prices)
    total = float(equity) if equity is not None else float(np.sum(q * p))
    if not total > 0:
        raise InputError(f"equity must be positive, got {total} (give --equity)")
    return Book(total, symbols, q, p, str(path))


def book_from_snapshot(snapshot: PortfolioSnapshot) -> Book:
    held = [i for i, q in enumerate(snapshot.quantities) if q != 0.0]
    return Book(snapshot.equity, [snapshot.symbols[i] for i in held],
                np.array([snapshot.quantities[i] for i in held]), np.array([snapshot.prices[i] for i in held]),
                f"strategy {snapshot.strategy} at {pd.Timestamp(snapshot.ts_event, unit='ns', tz='UTC')}")


def asset_returns(book: Book, start: str | None = None, end: str | None = None) -> tuple[pd.DatetimeIndex, np.ndarray,
                                                                                          list[str]]:
    """Return (dates, daily returns (T, n) of the book's symbols, symbols proxied by the index) from bundled data."""
    stocks = load_sp500_prices()
    index = load_sp500_index()["SP500"]
    proxied = [s for s in book.symbols if s not in stocks.columns]
    frame = pd.DataFrame({s: stocks[s] if s in stocks.columns else index for s in book.symbols})
    returns = frame.pct_change(fill_method=None).iloc[1:]
    returns = returns.loc[start:end] if start or end else returns
    return pd.DatetimeIndex(returns.index), returns.to_numpy(dtype=np.float64), proxied


def betas(book: Book) -> np.ndarray:
    """Return each symbol's beta to the S&P 500 index over the bundled history (1 for proxied symbols)."""
    dates, r, _ = asset_returns(book)
    index = load_sp500_index()["SP500"].pct_change(fill_method=None).reindex(dates).to_numpy()
    out = np.ones(len(book.symbols))
    for j in range(len(book.symbols)):
        ok = np.isfinite(r[:, j]) & np.isfinite(index)
        if ok.sum() > 20:
            out[j] = np.cov(r[ok, j], index[ok])[0, 1] / np.var(index[ok], ddof=1)
    return out


def book_path(book: Book, returns: np.ndarray) -> np.ndarray:
    """Return equity after each day, quantities held (no rebalancing), from the book's equity."""
    growth = np.cumprod(1.0 + np.nan_to_num(returns), axis=0)
    return book.equity + (growth - 1.0) @ book.exposure


def var_after(book: Book, window_returns: np.ndarray, level: float, window: int) -> dict[str, dict[str, float]]:
    """VaR / ES by every method of the book revalued over a scenario window (fraction of equity)."""
    complete = window_returns[np.isfinite(window_returns).all(axis=1)]
    pnl = complete @ book.exposure / book.equity
    result = measure(pnl, min(window, pnl.shape[0]), level, list(METHOD_NAMES)) if pnl.shape[0] >= 2 else {
        "methods": {}}
    return {name: {"var": e["var"], "es": e["es"]} for name, e in result["methods"].items() if e["status"] == "ok"}


def would_trip(book: Book, dates: pd.DatetimeIndex, path: np.ndarray, pre_returns: np.ndarray,
               position_moves: np.ndarray, thresholds: dict[str, float]) -> tuple[list[str], float]:
    """Return (the breakers the risk service would trip on this equity path, its worst 24h drawdown)."""
    tripped = []
    stamps = dates.as_unit("ns").asi8.astype(np.int64)  # pandas may parse dates at second resolution
    equity = np.concatenate([[book.equity], path])
    ts = np.concatenate([[stamps[0] - DAY_NS], stamps])
    drawdown_24h, _ = trailing_drawdown_nb(ts, equity, DAY_NS)
    worst_24h = float(np.nanmax(drawdown_24h))
    if drawdown_trips(worst_24h, thresholds["drawdown_halt"]):
        tripped.append(f"{BREAKER_DRAWDOWN} ({worst_24h:.1%})")
    book_returns = np.concatenate([pre_returns, equity[1:] / equity[:-1] - 1.0])
    ratio, _ = vol_ratio_1d_nb(book_returns, RISK_DEFAULTS.vol_window, RISK_DEFAULTS.vol_average_window)
    recent = ratio[-len(path):]
    if np.isfinite(recent).any() and volatility_trips(float(np.nanmax(recent)), thresholds["vol_ratio_limit"]):
        tripped.append(f"{BREAKER_VOLATILITY} ({np.nanmax(recent):.1f}x)")
    side = np.sign(book.quantities)
    for symbol, move in zip(book.symbols, side * position_moves, strict=True):
        if stop_loss_trips(move, thresholds["stop_loss"]):
            tripped.append(f"{stop_loss_breaker(symbol)} ({move:.1%})")
    return tripped, worst_24h


def stress_report(book: Book, level: float, window: int, gap: float, thresholds: dict[str, float]) -> dict[str, Any]:
    """Return the book's P&L, VaR / ES and tripped breakers under every scenario."""
    dates, all_returns, proxied = asset_returns(book)
    beta = betas(book)
    current = all_returns[-window:]
    pre_book = (current @ book.exposure) / book.equity
    scenarios: list[dict[str, Any]] = []
    for episode in EPISODES:
        ep_dates, r, _ = asset_returns(book, episode.start, episode.end)
        path = book_path(book, r)
        before = all_returns[dates < ep_dates[0]]
        history = np.concatenate([before[-window:], r])[-window:]
        moves = np.prod(1.0 + np.nan_to_num(r), axis=0) - 1.0
        equity_path = np.concatenate([[book.equity], path])
        worst, _ = path_max_drawdown_nb(equity_path[1:] / equity_path[:-1] - 1.0)
        scenarios.append({
            "scenario": f"{episode.name} ({episode.start} .. {episode.end})", "kind": "historical",
            "days": len(ep_dates), "pnl": float(path[-1] - book.equity), "pnl_pct": float(path[-1] / book.equity - 1),
            "max_drawdown": float(worst), "risk_after": var_after(book, history, level, window)})
        scenarios[-1]["breakers"], scenarios[-1]["drawdown_24h"] = would_trip(
            book, ep_dates, path, (before[-40:] @ book.exposure) / book.equity, moves, thresholds)
    for name, shock in ((f"1987-10-19 crash ({CRASH_1987:.1%} equities x beta)", CRASH_1987),
                        (f"index gap ({-gap:.1%} x beta)", -gap)):
        moves = shock * beta
        shock_day = dates[-1] + pd.Timedelta(days=1)
        path = np.array([book.equity + float(moves @ book.exposure)])
        scenarios.append({
            "scenario": name, "kind": "hypothetical", "days": 1, "pnl": float(path[0] - book.equity),
            "pnl_pct": float(path[0] / book.equity - 1), "max_drawdown": float(max(0.0, 1 - path[0] / book.equity)),
            "risk_after": var_after(book, np.vstack([current[1:], moves]), level, window)})
        scenarios[-1]["breakers"], scenarios[-1]["drawdown_24h"] = would_trip(
            book, pd.DatetimeIndex([shock_day]), path, pre_book[-40:], moves, thresholds)
    scenarios.append({"scenario": "correlations to 0.9", "kind": "hypothetical", "days": 0, "pnl": None,
                      "pnl_pct": None, "max_drawdown": None,
                      "risk_after": var_after(book, recorrelate(current, 0.9), level, window), "breakers": []})
    # the breaker sees the shift: the last vol_window days at 3x after calm ones, where the ratio peaks
    calm, storm = pre_book[-40:-RISK_DEFAULTS.vol_window], 3.0 * pre_book[-RISK_DEFAULTS.vol_window:]
    ratio, _ = vol_ratio_1d_nb(np.ascontiguousarray(np.concatenate([calm, storm])), RISK_DEFAULTS.vol_window,
                               RISK_DEFAULTS.vol_average_window)
    peak = float(np.nanmax(ratio)) if np.isfinite(ratio).any() else math.nan
    scenarios.append({"scenario": "volatility x3", "kind": "hypothetical", "days": 0, "pnl": None, "pnl_pct": None,
                      "max_drawdown": None, "vol_ratio_peak": peak,
                      "risk_after": var_after(book, 3.0 * current, level, window),
                      "breakers": [f"{BREAKER_VOLATILITY} ({peak:.2f}x)"]
                      if volatility_trips(peak, thresholds["vol_ratio_limit"]) else []})
    return {"book": {"source": book.source, "equity": book.equity, "positions": dict(
                zip(book.symbols, book.quantities.tolist(), strict=True)), "proxied_by_index": proxied,
                     "betas": dict(zip(book.symbols, beta.round(3).tolist(), strict=True))},
            "level": level, "window": window, "now": {"as_of": str(dates[-1].date()),
                                                       "risk": var_after(book, current, level, window)},
            "scenarios": scenarios}


def monte_carlo(book: Book, paths: int, seed: int, horizon: int, workers: Workers = IN_PROCESS) -> dict[str, Any]:
    """Return the 1-year max-drawdown distribution of the book from a calibrated GARCH-t-with-jumps simulation,
    its paths in blocks (`qmp_lab.scenarios.monte_carlo_blocks`) run where `workers` says."""
    _, returns, _ = asset_returns(book)
    history = returns[-2520:]
    history = history[np.isfinite(history).all(axis=1)]
    pnl = history @ book.exposure / book.equity
    params, code = calibrate_garch_t_jump_nb(np.ascontiguousarray(pnl))
    if code != kernel_status.OK:
        raise InputError(f"cannot calibrate the Monte Carlo on {len(pnl)} days: {kernel_status.NAMES[code]}")
    try:
        blocks = run_tasks(monte_carlo_block, (params, horizon), monte_carlo_blocks(paths, seed), workers)
    except TaskFailed as error:
        raise InputError(str(error.cause)) from None
    drawdowns = np.concatenate([block[0] for block in blocks])
    totals = np.concatenate([block[1] for block in blocks])
    names = ("omega", "a", "b", "nu", "sigma2_0", "jump_intensity", "jump_mean", "jump_std")
    return {"paths": paths, "seed": seed, "horizon_days": horizon, "calibration_days": len(pnl),
            "model": dict(zip(names, [float(v) for v in params], strict=True)),
            "max_drawdown": {f"p{q}": float(np.percentile(drawdowns, q)) for q in (50, 95, 99)},
            "total_return": {f"p{q}": float(np.percentile(totals, q)) for q in (1, 50, 99)},
            "probability_drawdown_over_15pct": float(np.mean(drawdowns > 0.15))}


def stress_command(
    strategy: Annotated[str | None, typer.Argument(help="a running strategy (or --positions FILE)")] = None,
    positions: Annotated[Path | None, typer.Option(help="CSV symbol,quantity[,price] or JSON book")] = None,
    equity: Annotated[float | None, typer.Option(help="book equity for --positions (default: market value)")] = None,
    level: Annotated[float, typer.Option(help="VaR / ES level")] = 0.99,
    window: Annotated[int, typer.Option(help="scenario window (days)")] = 250,
    gap: Annotated[float, typer.Option(help="index gap of the hypothetical shock (fraction)")] = 0.10,
    monte_carlo_mode: Annotated[bool, typer.Option("--monte-carlo", help="add the GARCH-t-with-jumps simulation")] = (
        False),
    paths: Annotated[int, typer.Option(help="Monte Carlo paths")] = 10_000,
    workers: Annotated[int | None, typer.Option(min=1, envvar="QMP_RESEARCH_WORKERS", help=WORKERS_HELP)] = None,
    ray_address: Annotated[str, typer.Option(help=RAY_ADDRESS_HELP)] = "",
    seed: Annotated[int, typer.Option(help="Monte Carlo seed")] = 7,
    drawdown_halt: Annotated[float, typer.Option(help="breaker: 24h drawdown that halts")] = (
        RISK_DEFAULTS.drawdown_halt),
    stop_loss: Annotated[float, typer.Option(help="breaker: position loss that closes it")] = RISK_DEFAULTS.stop_loss,
    vol_ratio_limit: Annotated[float, typer.Option(help="breaker: vol ratio that halves size")] = (
        RISK_DEFAULTS.vol_ratio_limit),
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Stress the current book: 2008, 2020, 1987, index gap, correlations 0.9, volatility x3 (and Monte Carlo)."""
    if (strategy is None) == (positions is None):
        fail("give a STRATEGY or --positions FILE, not both")
    try:
        check_level(level)
        if not 0 < gap < 1:
            raise InputError(f"--gap must be inside (0, 1), got {gap}")
        if paths < 1:
            raise InputError(f"--paths must be at least 1, got {paths}")
        if positions is not None:
            book = load_book(positions, equity)
        else:
            assert strategy is not None
            subjects.check_token(strategy, "strategy")
            snapshot = asyncio.run(_latest(Connection.read(), subjects.STREAM_EXEC, subjects.portfolio(strategy),
                                           PortfolioSnapshot))
            book = book_from_snapshot(snapshot)
            if not book.symbols:
                raise InputError(f"{strategy} holds no positions: nothing to stress")
        thresholds = {"drawdown_halt": drawdown_halt, "stop_loss": stop_loss, "vol_ratio_limit": vol_ratio_limit}
        report = stress_report(book, level, window, gap, thresholds)
        if monte_carlo_mode:
            report["monte_carlo"] = monte_carlo(book, paths, seed, 252, research_workers(workers, ray_address))
    except (InputError, ValueError, FileNotFoundError, StackUnavailable) as error:
        fail(str(error))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_stress(report)


def print_stress(report: dict[str, Any]) -> None:
    book, key = report["book"], level_key(report["level"])
    console.print(f"[bold]{book['source']}[/]: equity {book['equity']:,.2f}, positions {book['positions']}"
                  + (f"; proxied by the S&P 500 index: {book['proxied_by_index']}" if book["proxied_by_index"] else ""))
    now = report["now"]["risk"]
    console.print(f"now ({report['now']['as_of']}): VaR {key} historical {_pct(now.get('historical', {}).get('var'))},"
                  f" ES {_pct(now.get('historical', {}).get('es'))}")
    table = Table(title=f"stress scenarios (VaR / ES {key}, after the scenario, fraction of equity)")
    for name in ("scenario", "P&L", "max drawdown", "VaR hist", "ES hist", "VaR normal", "ES EVT", "breakers"):
        table.add_column(name)
    for s in report["scenarios"]:
        risk = s["risk_after"]
        table.add_row(s["scenario"], _pct(s["pnl_pct"]), _pct(s["max_drawdown"]),
                      _pct(risk.get("historical", {}).get("var")), _pct(risk.get("historical", {}).get("es")),
                      _pct(risk.get("normal", {}).get("var")), _pct(risk.get("evt", {}).get("es")),
                      ", ".join(s["breakers"]) or "none")
    console.print(table)
    if "monte_carlo" in report:
        mc = report["monte_carlo"]
        dd = mc["max_drawdown"]
        console.print(f"Monte Carlo ({mc['paths']} paths, seed {mc['seed']}, GARCH-t with jumps, 1 year): max "
                      f"drawdown p50 {dd['p50']:.1%}, p95 {dd['p95']:.1%}, p99 {dd['p99']:.1%}; P(drawdown > 15%) "
                      f"{mc['probability_drawdown_over_15pct']:.1%}")


# ---------------------------------------------------------------- helpers
async def _latest(connection: Connection, stream: str, subject: str, type_: Any) -> Any:
    """Return the last message on a subject of a stream, decoded; ValueError if there is none or no stack."""
    try:
        nc = await connection.connect()
    except (OSError, nats.errors.Error) as error:
        raise ValueError(f"cannot reach the stack's NATS at {connection.nats_url} ({error}): is `qmp up` "
                         f"running?") from error
    try:
        try:
            message = await nc.jetstream().get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            raise ValueError(f"nothing on {subject} yet: is the strategy running?") from None
    finally:
        await nc.close()
    return codec(type_).decode(message.data)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _zone(zone: str | None) -> str:
    colour = {"green": "green", "yellow": "yellow", "red": "red"}.get(zone or "", "white")
    return f"[{colour}]{zone or 'n/a'}[/]"


def register(app: typer.Typer) -> None:
    """Add `qmp risk ...` and `qmp stress` to the main app."""
    app.add_typer(risk_app, name="risk")
    app.command("stress")(stress_command)


__all__ = ["register", "risk_app"]
