"""`qmp slippage calibrate`: re-fit the impact model's coefficients from the fills execution recorded.

Every fill is stored with its realized slippage against the arrival price (`slippage_bps`), the symbol's
daily volatility and its participation (fill size / (ADV × execution time)); fills without a known
volume (ADV 0) are left out. The fit solves

    cost − ½·permanent = half_spread + eta · sigma · participation^beta

by least squares (`qmp_kernels.impact.fit_impact_nb`), where the permanent impact is held at the
Almgren et al. (2005) coefficients unless `--no-permanent`. `--apply` stores the result in
`slippage_calibrations`; execution started with `QMP_SLIPPAGE_CALIBRATED=true` prices its paper fills
with the latest one.
"""

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from qmp_kernels import impact
from qmp_kernels.status import NAMES, OK
from qmp_ops.runtime.supervisor import Connection

BPS = 1e-4
console = Console()
app = typer.Typer(help="Slippage model: calibrate its coefficients from recorded fills.", no_args_is_help=True)

RECORDS = (
    "SELECT slippage_bps, daily_vol, participation, quantity, adv FROM fills "
    "WHERE participation > 0 AND daily_vol > 0 AND adv > 0 AND ($1 = '' OR strategy = $1) "
    "AND ($2::timestamptz IS NULL OR ts >= $2) ORDER BY ts DESC LIMIT $3"
)
STORE = (
    "INSERT INTO slippage_calibrations (strategy, model, half_spread_bps, eta, beta, r2, records, params) "
    "VALUES ($1, 'almgren', $2, $3, $4, $5, $6, $7::jsonb)"
)


@dataclass(frozen=True)
class Calibration:
    """A fitted model: coefficients, goodness of fit, and what it was fitted with."""

    records: int
    half_spread_bps: float
    eta: float
    beta: float
    r2: float
    status: str
    gamma: float
    alpha: float
    delta: float
    turnover_inverse: float
    mean_abs_error_bps: float


def calibrate(slippage_bps: np.ndarray, daily_vol: np.ndarray, participation: np.ndarray, quantity: np.ndarray,
              adv: np.ndarray, *, fit_spread: bool = True, half_spread_bps: float = 2.0,
              gamma: float = impact.GAMMA, alpha: float = impact.ALPHA, delta: float = impact.DELTA,
              turnover_inverse: float = 100.0, beta_bounds: tuple[float, float] = (0.2, 1.2)) -> Calibration:
    """Fit half-spread, eta and beta to realized costs; the permanent part is held at (gamma, alpha, delta)."""
    cost = np.asarray(slippage_bps, dtype=np.float64) * BPS
    sigma = np.asarray(daily_vol, dtype=np.float64)
    rate = np.asarray(participation, dtype=np.float64)
    volume = np.asarray(adv, dtype=np.float64)
    share = np.where(volume > 0, np.abs(np.asarray(quantity, dtype=np.float64)) / np.where(volume > 0, volume, 1.0),
                     0.0)
    fixed = 0.5 * gamma * sigma * share**alpha * turnover_inverse**delta
    spread, eta, beta, r2, used, code = impact.fit_impact_nb(cost, sigma, rate, fixed, beta_bounds[0],
                                                             beta_bounds[1], fit_spread, half_spread_bps * BPS)
    error = float("nan")
    if code == OK:
        fitted = spread + eta * sigma * np.where(rate > 0, rate, np.nan) ** beta + fixed
        error = float(np.nanmean(np.abs(fitted - cost))) / BPS
    return Calibration(records=int(used), half_spread_bps=float(spread) / BPS, eta=float(eta), beta=float(beta),
                       r2=float(r2), status=NAMES.get(code, str(code)), gamma=gamma, alpha=alpha, delta=delta,
                       turnover_inverse=turnover_inverse, mean_abs_error_bps=error)


async def load_records(database_url: str, strategy: str = "", since: datetime | None = None,
                       limit: int = 1_000_000) -> dict[str, np.ndarray]:
    """Return the recorded fills' cost columns as arrays (newest `limit` first)."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(RECORDS, strategy, since, limit)
    finally:
        await connection.close()
    names = ("slippage_bps", "daily_vol", "participation", "quantity", "adv")
    return {name: np.array([float(r[name] or 0.0) for r in rows]) for name in names}


async def store(database_url: str, strategy: str, calibration: Calibration) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(STORE, strategy, calibration.half_spread_bps, calibration.eta, calibration.beta,
                                 calibration.r2 if np.isfinite(calibration.r2) else None, calibration.records,
                                 json.dumps(asdict(calibration)))
    finally:
        await connection.close()


def _database_url(explicit: str) -> str:
    if explicit:
        return explicit
    if os.environ.get("QMP_DATABASE_URL"):
        return os.environ["QMP_DATABASE_URL"]
    return Connection.read().database_url


@app.command("calibrate")
def calibrate_command(
    strategy: Annotated[str, typer.Option(help="only this strategy's fills (default: all)")] = "",
    since: Annotated[str, typer.Option(help="only fills from this date/time on (ISO 8601)")] = "",
    limit: Annotated[int, typer.Option(help="use at most the newest N fills")] = 1_000_000,
    fit_spread: Annotated[bool, typer.Option("--fit-spread/--hold-spread",
                                             help="fit the half-spread too, or hold it")] = True,
    half_spread_bps: Annotated[float, typer.Option(help="the half-spread held with --hold-spread")] = 2.0,
    permanent: Annotated[bool, typer.Option("--permanent/--no-permanent",
                                            help="hold half the permanent impact at the 2005 coefficients")] = True,
    turnover_inverse: Annotated[float, typer.Option(help="shares outstanding / ADV for the permanent part")] = 100.0,
    min_records: Annotated[int, typer.Option(help="refuse to fit on fewer fills")] = 30,
    apply: Annotated[bool, typer.Option("--apply", help="store it for execution (QMP_SLIPPAGE_CALIBRATED)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    database_url: Annotated[str, typer.Option(help="default: QMP_DATABASE_URL or the running stack's")] = "",
) -> None:
    """Re-fit half-spread, eta and beta from the fills' realized slippage against arrival prices."""
    url = _database_url(database_url)
    start = datetime.fromisoformat(since) if since else None
    records = asyncio.run(load_records(url, strategy, start, limit))
    result = calibrate(**records, fit_spread=fit_spread, half_spread_bps=half_spread_bps,
                       gamma=impact.GAMMA if permanent else 0.0, turnover_inverse=turnover_inverse)
    if as_json:
        console.print_json(json.dumps(asdict(result)))
    else:
        _print(result, strategy)
    if result.status != "ok" or result.records < min_records:
        console.print(f"[red]not calibrated[/]: {result.records} usable fills (need {min_records}), "
                      f"status {result.status}")
        raise typer.Exit(1)
    if apply:
        asyncio.run(store(url, strategy, result))
        console.print("[green]stored[/]: execution started with QMP_SLIPPAGE_CALIBRATED=true uses it")


def _print(result: Calibration, strategy: str) -> None:
    table = Table(title=f"slippage calibration ({strategy or 'all strategies'}, {result.records} fills)")
    for column in ("coefficient", "fitted", "Almgren et al. 2005"):
        table.add_column(column)
    published: dict[str, Any] = {"half_spread_bps": "-", "eta": impact.ETA, "beta": impact.BETA}
    for name in ("half_spread_bps", "eta", "beta"):
        table.add_row(name, f"{getattr(result, name):.4g}", str(published[name]))
    table.add_row("R²", f"{result.r2:.3f}", "")
    table.add_row("mean |error| (bps)", f"{result.mean_abs_error_bps:.3g}", "")
    console.print(table)
