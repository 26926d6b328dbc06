"""fat_tail: VaR and ES that hold in crises, by every method the risk kernels offer.

The strategy's book is revalued as the risk service does it: on day t its weights w_t are applied to the
symbols' returns of the last `window` days (full revaluation), and each method forecasts tomorrow's loss
from that hypothetical P&L; the forecast is scored against the realized return w_t · r_{t+1}. Days on
which the book is flat are left out (a zero forecast of a zero return proves nothing). The S&P 500 index
itself is backtested the same way, as the market reference: a rolling 250-day historical VaR on the index
is in the Basel red zone in 2008, and the report shows it.

Passes when, on the strategy's book over the whole history:
- each fat-tail method (filtered HS with EWMA and GARCH, Student-t, EVT) has at most
  `MATERIAL_SHARE` (80%) of the normal method's 99% exceptions ("materially fewer");
- its 99% ES covers the realized tail: the Acerbi-Szekely Z2 statistic (which weighs how often and how
  far losses went beyond VaR against the ES forecasts) is in its green zone, above -0.70 (not rejected at
  5%). Realized tail losses over the ES forecasts on exception days are reported too; that ratio alone is
  about 1 under a correct ES, so it cannot be a pass mark;
- position sizing uses a fat-tail ES: the ES key the execution service sizes with (probed through the
  running stack, see `sizing_probe`) is a fat-tail method's, not the normal one.
"""

import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from qmp_core.config import RISK_DEFAULTS
from qmp_core.datasets import load_sp500_index, load_sp500_prices
from qmp_core.strategy import check_frame
from qmp_kernels import methods as km
from qmp_kernels.backtest import (
    BT_CC_P,
    BT_EXCEPTIONS,
    BT_EXPECTED,
    BT_IND_P,
    BT_KUPIEC_P,
    BT_N,
    BT_Z2,
    BT_ZONE,
    Z2_YELLOW_AT,
    ZONE_NAMES,
    backtest_nb,
)
from qmp_lab.verify.black_swan import probe_sizing
from qmp_lab.verify.core import Check, Table, TestResult, VerifyContext, has_fit, simple_returns, verdict

NAME = "fat_tail"
LEVELS = (0.95, 0.99)
LEVEL = 0.99
WINDOW = 250
FILTER_HISTORY = 500  # returns the FHS filters run over (EWMA 0.94 forgets in ~100 days; GARCH fits need more)
GARCH_REFIT_EVERY = 20
FAT_TAIL_METHODS = ("fhs_ewma", "fhs_garch", "student_t", "evt")
MATERIAL_SHARE = 0.80
CRISIS_YEARS = (2008, 2020)
Z2_GREEN = Z2_YELLOW_AT
MIN_YEAR_DAYS = 50  # a year with fewer forecasts (the warm-up year, a book mostly flat) gets no zone


def rolling_forecasts(returns: np.ndarray, weights: np.ndarray, window: int = WINDOW,
                      history: int = FILTER_HISTORY, levels: tuple[float, ...] = LEVELS,
                      log_every: int = 0, log: Any = None) -> dict[str, np.ndarray]:
    """Return VaR/ES forecasts (methods, levels, T) made at each t for t + 1, and the realized returns.

    `returns` (T, N) are the symbols' simple returns (NaN = none), `weights` (T, N) the book at each close.
    Row t's forecast uses only returns up to t; realized[t] is w_t · r_{t+1} (NaN on the last row).
    """
    rows = returns.shape[0]
    r = np.nan_to_num(returns, nan=0.0)
    alphas = np.array(levels, dtype=np.float64)
    var = np.full((km.N_METHODS, len(levels), rows), np.nan)
    es = np.full_like(var, np.nan)
    realized = np.full(rows, np.nan)
    realized[:-1] = np.einsum("ij,ij->i", weights[:-1], r[1:])
    gross = np.abs(weights).sum(axis=1)
    mask = km.all_methods()
    garch = np.full(3, np.nan)
    since_fit = GARCH_REFIT_EVERY
    for t in range(window, rows - 1):
        if gross[t] <= 0.0:
            continue
        pnl = r[max(1, t - history + 1):t + 1] @ weights[t]
        params = garch if since_fit < GARCH_REFIT_EVERY else np.full(3, np.nan)
        v, e, _, info = km.var_es_methods_nb(pnl, window, alphas, RISK_DEFAULTS.ewma_lambda,
                                             RISK_DEFAULTS.evt_threshold, params, mask)
        if since_fit >= GARCH_REFIT_EVERY:
            garch = np.array([info[km.INFO_OMEGA], info[km.INFO_A], info[km.INFO_B]])
            since_fit = 0
        since_fit += 1
        var[:, :, t] = v
        es[:, :, t] = e
        if log and log_every and t % log_every == 0:
            log(f"fat_tail: forecasts at row {t}/{rows}")
    return {"var": var, "es": es, "realized": realized, "gross": gross}


def backtest(realized: np.ndarray, var: np.ndarray, es: np.ndarray, alpha: float) -> dict[str, float]:
    """Return exceptions, Kupiec / Christoffersen p-values, Basel zone, Z2 and the ES coverage of one series."""
    out, _ = backtest_nb(np.ascontiguousarray(realized), np.ascontiguousarray(var), np.ascontiguousarray(es), alpha)
    keep = np.isfinite(realized) & np.isfinite(var) & np.isfinite(es)
    hit = keep & (-realized > var)
    loss, cover = float(-realized[hit].sum()), float(es[hit].sum())
    zone = out[BT_ZONE]
    return {"n": out[BT_N], "exceptions": out[BT_EXCEPTIONS], "expected": out[BT_EXPECTED],
            "kupiec_p": out[BT_KUPIEC_P], "christoffersen_p": out[BT_IND_P], "cc_p": out[BT_CC_P],
            "zone": ZONE_NAMES[int(zone)] if math.isfinite(zone) else "n/a", "z2": out[BT_Z2],
            "tail_loss": loss, "tail_es": cover, "es_coverage": loss / cover if cover > 0 else math.nan}


def evaluate(index: pd.DatetimeIndex, forecasts: dict[str, np.ndarray], alpha: float = LEVEL) -> dict[str, Any]:
    """Return the whole-history, per-year and crisis-year backtests of every method at `alpha`."""
    level = LEVELS.index(alpha)
    years = index.year.to_numpy()
    realized = forecasts["realized"]
    whole: dict[str, dict[str, float]] = {}
    per_year: dict[str, dict[int, dict[str, float]]] = {}
    for m, name in enumerate(km.METHOD_NAMES):
        var, es = forecasts["var"][m, level], forecasts["es"][m, level]
        whole[name] = backtest(realized, var, es, alpha)
        per_year[name] = {}
        for year in np.unique(years[np.isfinite(var)]):
            sel = years == year
            if np.count_nonzero(sel & np.isfinite(var) & np.isfinite(realized)) >= MIN_YEAR_DAYS:
                per_year[name][int(year)] = backtest(realized[sel], var[sel], es[sel], alpha)
    return {"whole": whole, "per_year": per_year}


def point_estimates(pnl: np.ndarray) -> dict[str, dict[str, float]]:
    """Return VaR/ES at every level by every method over a whole P&L history (one fit, all of it)."""
    x = pnl[np.isfinite(pnl)]
    v, e, codes, _ = km.var_es_methods_nb(x, max(len(x), 2), np.array(LEVELS), RISK_DEFAULTS.ewma_lambda,
                                          RISK_DEFAULTS.evt_threshold, np.full(3, np.nan),
                                          km.all_methods())
    return {name: {**{f"var_{km.level_key(a)}": v[m, i] for i, a in enumerate(LEVELS)},
                   **{f"es_{km.level_key(a)}": e[m, i] for i, a in enumerate(LEVELS)}, "status": int(codes[m])}
            for m, name in enumerate(km.METHOD_NAMES)}


def sizing_method(es_keys: list[str]) -> str | None:
    """Return the method of the ES keys (`<method>_<level>`) that sized accepted orders, the most frequent."""
    counts = Counter(key.rsplit("_", 1)[0] for key in es_keys if key)
    return counts.most_common(1)[0][0] if counts else None


def run(ctx: VerifyContext) -> TestResult:
    start, end = ctx.option("start", None), ctx.option("end", None)
    prices = ctx.option("prices", None)
    if prices is None:
        prices = load_sp500_prices(start, end)
    index_prices = ctx.option("index_prices", None)
    if index_prices is None:
        index_prices = load_sp500_index(str(prices.index[0].date()), str(prices.index[-1].date()))
    strategy = ctx.target.build()
    if has_fit(strategy):  # a model trades what it learnt from the first third, as in walk_forward
        strategy.fit(prices.iloc[: max(len(prices) // 3, strategy.lookback + 1)])
    weights = check_frame(strategy.target_weights(prices), prices).to_numpy(dtype=np.float64)
    returns = simple_returns(prices).to_numpy()
    ctx.log(f"fat_tail: rolling forecasts by {len(km.METHOD_NAMES)} methods over {len(prices)} days (strategy)")
    book = rolling_forecasts(returns, np.nan_to_num(weights), log=ctx.log, log_every=2000)
    ctx.log("fat_tail: rolling forecasts on the S&P 500 index")
    market_returns = simple_returns(index_prices).to_numpy()
    market = rolling_forecasts(market_returns, np.ones_like(market_returns))
    strategy_bt = evaluate(prices.index, book)
    market_bt = evaluate(index_prices.index, market)
    held = np.flatnonzero(book["gross"] > 0)
    pnl = np.full(len(prices), np.nan)
    pnl[1:] = np.einsum("ij,ij->i", np.nan_to_num(weights[:-1]), np.nan_to_num(returns[1:]))
    estimates = {"strategy": point_estimates(pnl[held[held > 0]] if held.size else pnl),
                 "sp500": point_estimates(market_returns[1:, 0])}

    checks = _criteria(ctx, strategy_bt["whole"])
    result = TestResult(name=NAME, status=verdict(checks), summary=_summary(strategy_bt, market_bt), checks=checks)
    result.metrics = {
        "window": WINDOW, "level": LEVEL, "material_share": MATERIAL_SHARE, "days": len(prices),
        "days_invested": int((book["gross"] > 0).sum()), "point_estimates": estimates,
        "strategy": strategy_bt, "sp500": market_bt,
    }
    result.tables = [
        _estimates_table(estimates),
        _whole_table("Strategy: 99% VaR/ES backtest, whole history", strategy_bt["whole"]),
        _whole_table("S&P 500 index: 99% VaR/ES backtest, whole history", market_bt["whole"]),
        *[_crisis_table(f"{year} apart", year, strategy_bt, market_bt) for year in CRISIS_YEARS],
        _zones_table("Basel zone per year, 99% VaR (exceptions / zone): S&P 500 index", market_bt["per_year"]),
        _zones_table("Basel zone per year, 99% VaR (exceptions / zone): strategy", strategy_bt["per_year"]),
    ]
    result.charts = [_chart(ctx, prices.index, book, index_prices.index, market, market_bt)]
    return result


def _criteria(ctx: VerifyContext, whole: dict[str, dict[str, float]]) -> list[Check]:
    checks: list[Check] = []
    normal = whole["normal"]["exceptions"]
    for name in FAT_TAIL_METHODS:
        if name not in whole:
            checks.append(Check(f"{name} present", False, f"the risk kernels have no {name} method"))
            continue
        x = whole[name]["exceptions"]
        share = x / normal if normal else math.nan
        checks.append(Check(f"{name}: materially fewer 99% exceptions than normal",
                            bool(normal > 0 and share <= MATERIAL_SHARE),
                            f"{x:.0f} vs normal {normal:.0f} ({share:.0%} of normal; at most "
                            f"{MATERIAL_SHARE:.0%} required; {whole[name]['expected']:.1f} expected)"))
        z2 = whole[name]["z2"]
        covered = bool(math.isfinite(z2) and z2 > Z2_GREEN)
        checks.append(Check(f"{name}: 99% ES covers the realized tail losses", covered,
                            f"Acerbi-Szekely Z2 {z2:.2f} (above {Z2_GREEN} required: ES not rejected at 5%); "
                            f"losses on exception days {whole[name]['tail_loss']:.1%} vs ES forecasts "
                            f"{whole[name]['tail_es']:.1%} (ratio {whole[name]['es_coverage']:.2f})"))
    key = ctx.option("sizing_method", None)
    if key is None and ctx.option("sizing_probe", not ctx.quick):
        key = sizing_method(probe_sizing(ctx))
        if key is None:
            return [*checks, Check("position sizing uses a fat-tail ES", False,
                                   "the probe saw no order that execution sized by an ES with a 0.01% ES budget")]
    if key is None:
        checks.append(Check("position sizing uses a fat-tail ES", None,
                            "not probed in this run (the CLI probes the services; quick runs do not)"))
    else:
        checks.append(Check("position sizing uses a fat-tail ES", key in FAT_TAIL_METHODS,
                            f"execution sized with ES {key!r}; one of {', '.join(FAT_TAIL_METHODS)} required"))
    return checks


def _summary(strategy_bt: dict[str, Any], market_bt: dict[str, Any]) -> str:
    w = strategy_bt["whole"]
    parts = ", ".join(f"{name} {w[name]['exceptions']:.0f}" for name in ("normal", "historical", *FAT_TAIL_METHODS)
                      if name in w)
    red = market_bt["per_year"].get("historical", {}).get(2008, {})
    return (f"99% exceptions on the strategy ({w['normal']['n']:.0f} invested days, {w['normal']['expected']:.0f} "
            f"expected): {parts}; S&P 500 historical VaR in 2008: {red.get('exceptions', math.nan):.0f} "
            f"exceptions, {red.get('zone', 'n/a')} zone")


def _estimates_table(estimates: dict[str, dict[str, dict[str, float]]]) -> Table:
    rows = []
    for series, by_method in estimates.items():
        for name, values in by_method.items():
            rows.append([series, name, values["var_95"], values["es_95"], values["var_99"], values["es_99"]])
    return Table("VaR / ES over the whole history (1-day, fraction of equity)",
                 ["series", "method", "VaR 95%", "ES 95%", "VaR 99%", "ES 99%"], rows)


def _whole_table(title: str, whole: dict[str, dict[str, float]]) -> Table:
    return Table(title, ["method", "days", "exceptions", "expected", "Kupiec p", "Christoffersen p", "zone", "Z2",
                         "ES coverage"],
                 [[name, b["n"], b["exceptions"], b["expected"], b["kupiec_p"], b["christoffersen_p"], b["zone"],
                   b["z2"], b["es_coverage"]] for name, b in whole.items()])


def _crisis_table(title: str, year: int, strategy_bt: dict[str, Any], market_bt: dict[str, Any]) -> Table:
    rows = []
    for series, bt in (("strategy", strategy_bt), ("S&P 500", market_bt)):
        for name, years in bt["per_year"].items():
            b = years.get(year)
            if b:
                rows.append([series, name, b["n"], b["exceptions"], b["expected"], b["kupiec_p"], b["zone"], b["z2"]])
    return Table(title, ["series", "method", "days", "exceptions", "expected", "Kupiec p", "zone", "Z2"], rows)


def _zones_table(title: str, per_year: dict[str, dict[int, dict[str, float]]]) -> Table:
    names = list(per_year)
    years = sorted({y for by_year in per_year.values() for y in by_year})
    rows = [[year] + [f"{per_year[n][year]['exceptions']:.0f} {per_year[n][year]['zone']}" if year in per_year[n]
                      else "" for n in names] for year in years]
    return Table(title, ["year", *names], rows)


def _chart(ctx: VerifyContext, dates: pd.DatetimeIndex, book: dict[str, np.ndarray], market_dates: pd.DatetimeIndex,
           market: dict[str, np.ndarray], market_bt: dict[str, Any]) -> str:
    from qmp_lab.verify.report import pyplot

    plt = pyplot()
    level = LEVELS.index(LEVEL)
    figure, axes = plt.subplots(3, 1, figsize=(11, 11))
    for ax, title, index, data in ((axes[0], "S&P 500 index", market_dates, market),
                                   (axes[1], "strategy book", dates, book)):
        realized = np.roll(data["realized"], 1)  # plot each return on its own day
        ax.plot(index, -realized, color="black", linewidth=0.4, label="realized loss")
        for name, colour in (("normal", "tab:red"), ("historical", "tab:orange"), ("fhs_garch", "tab:blue"),
                             ("evt", "tab:green")):
            m = km.METHOD_NAMES.index(name)
            ax.plot(index, np.roll(data["var"][m, level], 1), color=colour, linewidth=0.7, label=f"VaR 99% {name}")
        ax.set_title(f"{title}: 99% VaR forecasts and realized losses")
        ax.legend(fontsize=7, ncol=5)
    per_year = market_bt["per_year"]
    colours = {"green": "tab:green", "yellow": "gold", "red": "tab:red", "n/a": "white"}
    names = list(per_year)
    years = sorted({y for by_year in per_year.values() for y in by_year})
    for row, name in enumerate(names):
        for year in years:
            b = per_year[name].get(year)
            if b:
                axes[2].add_patch(plt.Rectangle((year - 0.5, row - 0.5), 1, 1, color=colours[b["zone"]]))
                axes[2].text(year, row, f"{b['exceptions']:.0f}", ha="center", va="center", fontsize=6)
    axes[2].set_xlim(years[0] - 0.5, years[-1] + 0.5)
    axes[2].set_ylim(-0.5, len(names) - 0.5)
    axes[2].set_yticks(range(len(names)), names)
    axes[2].set_title("S&P 500: Basel zone per year of the rolling 250-day 99% VaR (number = exceptions)")
    figure.tight_layout()
    name = f"{NAME}.png"
    figure.savefig(ctx.out_dir / name, dpi=100)
    plt.close(figure)
    return name
