"""walk_forward: zero look-ahead and an honest out-of-sample record.

1. Truncation invariance at every bar: the weights at t computed from data[:t+1] equal the weights at t
   computed from all data, to 1e-12. Fast path: the full history once, then for each t the last row from
   the strategy's window data[t-lookback:t+1]; where that differs (a strategy whose window is only
   approximately enough, e.g. an EWMA) the full prefix data[:t+1] decides. A sample of full prefixes
   checks every row up to the cut as well. Every bar matters: a `bfill` leak shows only where data are
   missing, so the test runs on the history with gaps planted in it (late listings and missing closes;
   the bundled file itself has none).
2. Future perturbation sweep: scaling, crashing or erasing prices after t never changes weights at or
   before t; the cuts include every bar just before a gap ends.
3. For strategies that `fit`: purged, embargoed walk-forward and combinatorial purged CV (CPCV); every
   split is asserted to have no training label interval [t, t + horizon] that meets a test interval.
4. Out-of-sample Sharpe per fold, the deflated Sharpe ratio over every configuration tried, and the
   probability of backtest overfitting by combinatorially symmetric cross-validation (CSCV).
"""

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from qmp_core.datasets import load_sp500_prices
from qmp_core.strategy import Strategy, StrategyLoadError, check_frame, load_strategy
from qmp_kernels.special import norm_cdf_nb, norm_ppf_nb
from qmp_lab.parallel import run_tasks
from qmp_lab.verify.core import (
    TRADING_DAYS,
    Check,
    StrategyTarget,
    Table,
    TestResult,
    VerificationError,
    VerifyContext,
    has_fit,
    portfolio_returns,
    sharpe,
    verdict,
)

NAME = "walk_forward"
TOLERANCE = 1e-12
EULER_GAMMA = 0.5772156649015329
WINDOW_GIVE_UP_AFTER = 200  # window rows checked before deciding the window path does not pay
WINDOW_GIVE_UP_RATE = 0.5


class LookAheadInSplit(AssertionError):
    """A training sample's label interval meets a test interval: the split would leak the test labels."""


@dataclass(frozen=True)
class Leak:
    kind: str  # truncation | prefix | perturbation
    row: int
    date: str
    symbol: str
    difference: float  # inf where one side is NaN and the other is not
    detail: str = ""


# ---------------------------------------------------------------- data
def planted_gaps(prices: pd.DataFrame, rng: np.random.Generator, late_listed: int = 3,
                 missing_fraction: float = 0.0015) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Return prices with gaps planted (late listings, isolated missing closes) and a description of them.

    A late-listed symbol has no price before its listing row (as a stock that entered the index later);
    isolated missing closes are single cells (a halt, a feed gap). Columns that already have gaps keep
    theirs. Gaps are what make a back fill visible: it copies a later price into an earlier row.
    """
    gapped = prices.copy()
    rows, cols = gapped.shape
    values = gapped.to_numpy(copy=True)
    listings: dict[str, str] = {}
    chosen = rng.choice(cols, size=min(late_listed, cols), replace=False) if rows > 20 else []
    for col in chosen:
        first = int(rng.integers(rows // 10, max(rows // 10 + 1, rows * 2 // 5)))
        values[:first, col] = np.nan
        listings[str(gapped.columns[col])] = str(gapped.index[first].date())
    n_missing = int(missing_fraction * rows * cols)
    missing = 0
    if rows > 4:
        for _ in range(n_missing):
            r, c = int(rng.integers(1, rows - 2)), int(rng.integers(0, cols))
            if np.isfinite(values[r - 1, c]) and np.isfinite(values[r + 1, c]):
                values[r, c] = np.nan
                missing += 1
    gapped.iloc[:, :] = values
    return gapped, {"late_listed": listings, "missing_closes": missing}


def gap_end_rows(prices: pd.DataFrame) -> np.ndarray:
    """Return rows t with a missing close at t that is priced again at t + 1: where a back fill leaks."""
    missing = prices.isna().to_numpy()
    ends = missing[:-1] & ~missing[1:]
    return np.flatnonzero(ends.any(axis=1))


# ---------------------------------------------------------------- look-ahead checks
def weights_array(strategy: Strategy, prices: pd.DataFrame) -> np.ndarray:
    """Return the strategy's weights on prices as a float array, after checking shape and labels."""
    return check_frame(strategy.target_weights(prices), prices).to_numpy(dtype=np.float64)


def row_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Return (largest |a - b|, its column); inf where exactly one side is NaN; (0, -1) when equal."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    mismatch = nan_a != nan_b
    if mismatch.any():
        return math.inf, int(np.flatnonzero(mismatch)[0])
    diff = np.where(nan_a, 0.0, np.abs(a - b))
    if diff.size == 0:
        return 0.0, -1
    col = int(np.argmax(diff))
    return float(diff[col]), col


def _leak(kind: str, prices: pd.DataFrame, row: int, col: int, difference: float, detail: str = "") -> Leak:
    symbol = str(prices.columns[col]) if 0 <= col < prices.shape[1] else ""
    return Leak(kind, row, str(pd.Timestamp(prices.index[row]).date()), symbol, difference, detail)


def truncation_check(strategy: Strategy, prices: pd.DataFrame, full: np.ndarray, tolerance: float = TOLERANCE,
                     rows: np.ndarray | None = None) -> dict[str, Any]:
    """Compare, at every row t (or the given rows), the last row from data up to t with `full[t]`.

    Returns counts (rows checked, decided on the lookback window, decided on the full prefix), the
    largest window-only deviation (how much the declared lookback falls short of exact) and the leaks.
    """
    lookback = int(strategy.lookback)
    checked = window_exact = prefix_checks = window_tries = window_misses = 0
    window_deviation = 0.0
    use_window = True
    leaks: list[Leak] = []
    for t in (range(len(prices)) if rows is None else rows):
        t = int(t)
        checked += 1
        lo = max(0, t - lookback)
        if lo > 0 and use_window:
            window_tries += 1
            last = weights_array(strategy, prices.iloc[lo:t + 1])[-1]
            diff, _ = row_difference(last, full[t])
            if diff <= tolerance:
                window_exact += 1
                continue
            window_misses += 1
            window_deviation = max(window_deviation, diff)
            if window_tries >= WINDOW_GIVE_UP_AFTER and window_misses > WINDOW_GIVE_UP_RATE * window_tries:
                use_window = False  # the window is not exact for this strategy: go straight to prefixes
        prefix_checks += 1
        last = weights_array(strategy, prices.iloc[:t + 1])[-1]
        diff, col = row_difference(last, full[t])
        if diff > tolerance:
            leaks.append(_leak("truncation", prices, t, col, diff))
    return {"rows_checked": checked, "window_exact": window_exact, "prefix_checked": prefix_checks,
            "window_max_deviation": window_deviation, "window_path_dropped": not use_window, "leaks": leaks}


def prefix_sample_check(strategy: Strategy, prices: pd.DataFrame, full: np.ndarray, cuts: np.ndarray,
                        tolerance: float = TOLERANCE) -> list[Leak]:
    """For each cut t, every row s <= t of the weights from data[:t+1] must equal full[s]."""
    leaks: list[Leak] = []
    for t in cuts:
        t = int(t)
        part = weights_array(strategy, prices.iloc[:t + 1])
        for s in range(t + 1):
            diff, col = row_difference(part[s], full[s])
            if diff > tolerance:
                leaks.append(_leak("prefix", prices, s, col, diff, f"cut at {prices.index[t].date()}"))
                break
    return leaks


PERTURBATIONS = ("noise", "crash", "erase")


def perturb_after(prices: pd.DataFrame, t: int, kind: str, rng: np.random.Generator) -> pd.DataFrame:
    """Return prices with every row after t changed: lognormal noise, a 50% crash, or erased (NaN)."""
    values = prices.to_numpy(copy=True)
    tail = values[t + 1:]
    if kind == "noise":
        tail *= np.exp(rng.normal(0.0, 0.1, size=tail.shape))
    elif kind == "crash":
        tail *= 0.5
    elif kind == "erase":
        tail[:] = np.nan
    else:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {kind!r}")
    values[t + 1:] = tail
    return pd.DataFrame(values, index=prices.index, columns=prices.columns)


def perturbation_check(strategy: Strategy, prices: pd.DataFrame, full: np.ndarray, cuts: np.ndarray,
                       rng: np.random.Generator, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Perturb prices after each cut t (cycling through PERTURBATIONS); weights at rows <= t must not move."""
    leaks: list[Leak] = []
    for i, t in enumerate(cuts):
        t = int(t)
        kind = PERTURBATIONS[i % len(PERTURBATIONS)]
        moved = weights_array(strategy, perturb_after(prices, t, kind, rng))[:t + 1]
        for s in range(t, -1, -1):  # the rows nearest the cut are the likeliest to move: look there first
            diff, col = row_difference(moved[s], full[s])
            if diff > tolerance:
                leaks.append(_leak("perturbation", prices, s, col, diff, f"{kind} after {prices.index[t].date()}"))
                break
    return {"cuts": len(cuts), "leaks": leaks}


def sweep_cuts(prices: pd.DataFrame, count: int, extra: np.ndarray, rng: np.random.Generator,
               cap_extra: int = 200) -> np.ndarray:
    """Return evenly spaced cuts plus (up to cap_extra of) the given rows, sorted, within [0, T - 2]."""
    rows = len(prices)
    even = np.linspace(0, rows - 2, num=min(count, max(rows - 1, 0)), dtype=np.int64)
    extra = np.asarray(extra, dtype=np.int64)
    extra = extra[(extra >= 0) & (extra <= rows - 2)]
    if extra.size > cap_extra:
        extra = np.sort(rng.choice(extra, size=cap_extra, replace=False))
    return np.unique(np.concatenate([even, extra]))


# ---------------------------------------------------------------- purged splits
def label_overlaps_test(train: np.ndarray, test_mask: np.ndarray, horizon: int) -> np.ndarray:
    """Return, per training row t, whether its label interval [t, t + horizon] meets a test row."""
    n = test_mask.shape[0]
    counts = np.concatenate([[0], np.cumsum(test_mask.astype(np.int64))])
    lo = np.clip(train, 0, n)
    hi = np.clip(train + horizon + 1, 0, n)
    return (counts[hi] - counts[lo]) > 0


def assert_purged(train: np.ndarray, test: np.ndarray, n: int, horizon: int) -> None:
    """Raise LookAheadInSplit if a training label interval [t, t + horizon] intersects a test interval."""
    test_mask = np.zeros(n, dtype=bool)
    test_mask[test] = True
    bad = label_overlaps_test(np.asarray(train, dtype=np.int64), test_mask, horizon)
    if bad.any():
        first = int(np.asarray(train)[bad][0])
        raise LookAheadInSplit(f"training row {first} has label interval [{first}, {first + horizon}] that meets "
                               f"a test row ({int(bad.sum())} such rows): expected none after purging")


def _purge(n: int, test_blocks: list[tuple[int, int]], horizon: int, embargo: int) -> tuple[np.ndarray, np.ndarray]:
    test_mask = np.zeros(n, dtype=bool)
    for lo, hi in test_blocks:
        test_mask[lo:hi] = True
    keep = ~test_mask
    candidates = np.flatnonzero(keep)
    keep[candidates[label_overlaps_test(candidates, test_mask, horizon)]] = False
    for _, hi in test_blocks:  # embargo: serial correlation carries test information just past a test block
        keep[hi:min(n, hi + embargo)] = False
    return np.flatnonzero(keep), np.flatnonzero(test_mask)


def walk_forward_splits(n: int, folds: int, horizon: int, embargo: int,
                        start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (train, test) rows of an anchored walk-forward over rows [start, n): fold 0 only trains.

    Training rows are those before the test block whose label interval stays clear of it (purged).
    """
    edges = np.linspace(start, n, folds + 1, dtype=np.int64)
    for k in range(1, folds):
        lo, hi = int(edges[k]), int(edges[k + 1])
        yield _purge(hi, [(lo, hi)], horizon, embargo)


def cpcv_splits(n: int, groups: int, test_groups: int, horizon: int, embargo: int,
                start: int = 0) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """Yield (test group ids, train rows, test rows) of combinatorial purged CV with an embargo."""
    edges = np.linspace(start, n, groups + 1, dtype=np.int64)
    for chosen in itertools.combinations(range(groups), test_groups):
        blocks = [(int(edges[g]), int(edges[g + 1])) for g in chosen]
        train, test = _purge(n, blocks, horizon, embargo)
        yield chosen, train, test


# ---------------------------------------------------------------- overfitting statistics
def deflated_sharpe(returns: np.ndarray, trial_sharpes: np.ndarray, trials: int) -> dict[str, float]:
    """Return the deflated Sharpe ratio (Bailey & López de Prado 2014) of per-period returns.

    SR* = sqrt(V[SR]) ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e))) is the Sharpe the best of N unskilled
    trials would show; DSR = Φ((SR - SR*) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1)/4 SR²)), per period.
    """
    x = np.asarray(returns, dtype=np.float64)
    x = x[np.isfinite(x)]
    t = x.size
    sd = x.std(ddof=1) if t > 1 else 0.0
    if t < 3 or sd == 0:
        return {"dsr": math.nan, "sr": math.nan, "sr0": math.nan, "trials": trials, "observations": t}
    sr = float(x.mean() / sd)
    centred = x - x.mean()
    m2 = float(np.mean(centred ** 2))
    skew = float(np.mean(centred ** 3) / m2 ** 1.5)
    kurt = float(np.mean(centred ** 4) / m2 ** 2)
    finite = np.asarray(trial_sharpes, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    variance = float(finite.var(ddof=1)) if finite.size > 1 else 0.0
    n = max(int(trials), 1)
    sr0 = 0.0
    if n > 1:
        sr0 = math.sqrt(variance) * ((1 - EULER_GAMMA) * norm_ppf_nb(1 - 1 / n)
                                     + EULER_GAMMA * norm_ppf_nb(1 - 1 / (n * math.e)))
    denominator = 1 - skew * sr + (kurt - 1) / 4 * sr * sr
    dsr = norm_cdf_nb((sr - sr0) * math.sqrt(t - 1) / math.sqrt(denominator)) if denominator > 0 else math.nan
    return {"dsr": float(dsr), "sr": sr * math.sqrt(TRADING_DAYS), "sr0": sr0 * math.sqrt(TRADING_DAYS),
            "trials": n, "trial_sharpe_std": math.sqrt(variance) * math.sqrt(TRADING_DAYS),
            "skew": skew, "kurtosis": kurt, "observations": t}


def probability_of_overfitting(performance: np.ndarray, blocks: int = 16) -> dict[str, Any]:
    """Return the PBO by CSCV (Bailey, Borwein, López de Prado & Zhu 2017) of a (T, N configs) return matrix.

    The rows are cut into `blocks` equal parts; for every half of them as in-sample, the configuration with
    the best in-sample Sharpe is ranked out of sample; PBO is the share of halves where it ranks at or
    below the median (logit <= 0).
    """
    m = np.asarray(performance, dtype=np.float64)
    rows, configs = m.shape
    if configs < 2 or rows < 2 * blocks:
        return {"pbo": math.nan, "configs": configs, "combinations": 0, "logits": []}
    size = rows // blocks
    m = np.nan_to_num(m[:size * blocks]).reshape(blocks, size, configs)
    sums = m.sum(axis=1)
    squares = (m ** 2).sum(axis=1)
    combos = np.array(list(itertools.combinations(range(blocks), blocks // 2)), dtype=np.int64)
    chosen = np.zeros((len(combos), blocks))
    np.put_along_axis(chosen, combos, 1.0, axis=1)

    def block_sharpe(selection: np.ndarray) -> np.ndarray:
        count = selection.sum(axis=1, keepdims=True) * size
        mean = selection @ sums / count
        variance = np.maximum(selection @ squares / count - mean ** 2, 1e-300)
        return mean / np.sqrt(variance)

    in_sample, out_sample = block_sharpe(chosen), block_sharpe(1.0 - chosen)
    best = np.argmax(in_sample, axis=1)
    best_oos = out_sample[np.arange(len(combos)), best]
    rank = (out_sample < best_oos[:, None]).sum(axis=1) + 1  # 1 = worst out of sample
    share = rank / (configs + 1.0)
    logits = np.log(share / (1.0 - share))
    return {"pbo": float(np.mean(logits <= 0.0)), "configs": configs, "combinations": len(combos),
            "logits": logits.tolist()}


def config_grid(target: StrategyTarget, strategy: Strategy, grid: Mapping[str, list[Any]] | None = None,
                limit: int = 64) -> list[dict[str, Any]]:
    """Return the configurations tried: the given grid, else the strategy's `param_grid`, else a neighbourhood.

    The neighbourhood varies each numeric setting of the configuration alone by ×0.5 and ×2 (a researcher
    trying nearby values); values the strategy rejects are left out. The first entry is the config under test.
    """
    base = config_dict(strategy.config)
    spec = grid or getattr(strategy, "param_grid", None)
    candidates: list[dict[str, Any]] = [base]
    if spec:
        names = list(spec)
        for values in itertools.product(*(spec[name] for name in names)):
            candidates.append(base | dict(zip(names, values, strict=True)))
    else:
        for name, value in base.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value == 0:
                continue
            for factor in (0.5, 2.0):
                changed = type(value)(round(value * factor)) if isinstance(value, int) else value * factor
                candidates.append(base | {name: changed})
    unique: list[dict[str, Any]] = []
    for candidate in candidates:
        if candidate in unique:
            continue
        try:
            _build(target, candidate, base)
        except StrategyLoadError:
            continue
        unique.append(candidate)
        if len(unique) >= limit:
            break
    if not unique:
        raise VerificationError(f"{target.path}: not even the configuration under test ({base}) builds; "
                                "a strategy's constructor must accept no arguments or `config=`")
    return unique


def _build(target: StrategyTarget, config: dict[str, Any], base: dict[str, Any]) -> Strategy:
    """Build a configuration the way the strategy under test was built: `Class()` when it was given none.

    A strategy whose constructor takes no `config=` is valid (the Strategy API allows it); it has one
    configuration, its own, and the grid leaves it alone.
    """
    if config == base and target.config is None:
        return load_strategy(target.path, None)
    return load_strategy(target.path, config)


def config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, msgspec.Struct):
        return msgspec.structs.asdict(config)
    return dict(config or {})


# ---------------------------------------------------------------- the test
def load_prices(ctx: VerifyContext) -> pd.DataFrame:
    """Return the history the test runs on: `prices` given in options, else the bundled S&P 500 file."""
    prices = ctx.option("prices", None)
    if prices is None:
        prices = load_sp500_prices(ctx.option("start", None), ctx.option("end", None))
    return prices


def run(ctx: VerifyContext) -> TestResult:
    prices = load_prices(ctx)
    rng = ctx.rng(1)
    gapped, gaps = planted_gaps(prices, rng)
    strategy = ctx.target.build()
    fits = has_fit(strategy)
    if fits:  # look-ahead in target_weights is checked with the model fitted once on the first third
        strategy.fit(gapped.iloc[: max(len(gapped) // 3, strategy.lookback + 1)])
    ctx.log(f"walk_forward: weights on {gapped.shape[0]} rows × {gapped.shape[1]} symbols (gaps planted)")
    full = weights_array(strategy, gapped)
    every_bar = truncation_check(strategy, gapped, full)
    ctx.log(f"walk_forward: truncation checked at {every_bar['rows_checked']} bars")
    n_sample = int(ctx.option("prefix_samples", 8 if ctx.quick else 25))
    ends = gap_end_rows(gapped)
    sample = np.unique(np.concatenate([
        rng.choice(len(gapped), size=min(n_sample, len(gapped)), replace=False),
        rng.choice(ends, size=min(n_sample, ends.size), replace=False) if ends.size else np.array([], np.int64)]))
    prefix_leaks = prefix_sample_check(strategy, gapped, full, sample)
    cuts = sweep_cuts(gapped, int(ctx.option("perturbation_cuts", 30 if ctx.quick else 120)), ends, rng)
    sweep = perturbation_check(strategy, gapped, full, cuts, rng)
    ctx.log(f"walk_forward: perturbation sweep over {len(cuts)} cuts")

    truncation_leaks: list[Leak] = every_bar["leaks"] + prefix_leaks
    checks = [
        Check("truncation invariance at every bar", not truncation_leaks,
              f"{every_bar['rows_checked']} bars: {every_bar['window_exact']} decided on the lookback window, "
              f"{every_bar['prefix_checked']} on the full prefix; {len(sample)} full prefixes compared row by row; "
              f"{len(truncation_leaks)} rows differ by more than {TOLERANCE:g}" + _first(truncation_leaks)),
        Check("future perturbation sweep", not sweep["leaks"],
              f"{sweep['cuts']} cuts × ({'/'.join(PERTURBATIONS)}) after t: {len(sweep['leaks'])} cuts moved weights "
              f"at or before t" + _first(sweep["leaks"])),
    ]
    if every_bar["window_max_deviation"] > TOLERANCE:
        checks.append(Check("lookback window is exact", None,
                            f"the last row from data[t-lookback:t+1] deviates up to "
                            f"{every_bar['window_max_deviation']:.3g} from the full history (lookback "
                            f"{strategy.lookback}); execution trades on that window"))

    performance = out_of_sample(ctx, prices, fits, checks)
    status = verdict(checks)
    leaks_table = Table("Look-ahead found (first 20)", ["kind", "date", "symbol", "difference", "detail"],
                        [[lk.kind, lk.date, lk.symbol, lk.difference, lk.detail]
                         for lk in (truncation_leaks + sweep["leaks"])[:20]])
    metrics = {
        "rows": len(gapped), "symbols": gapped.shape[1], "gaps": gaps, "tolerance": TOLERANCE,
        "truncation": {k: v for k, v in every_bar.items() if k != "leaks"} | {
            "leaks": len(truncation_leaks), "prefix_samples": len(sample)},
        "perturbation": {"cuts": sweep["cuts"], "leaks": len(sweep["leaks"])},
        "fits": fits,
    } | performance["metrics"]
    result = TestResult(
        name=NAME, status=status,
        summary=(f"{'no look-ahead found' if status == 'pass' else 'LOOK-AHEAD FOUND'}; OOS Sharpe per fold "
                 f"{_fmt_list(performance['metrics']['fold_sharpe'])}; DSR {performance['metrics']['dsr']['dsr']:.3f} "
                 f"over {performance['metrics']['dsr']['trials']} configurations; "
                 f"PBO {performance['metrics']['pbo']['pbo']:.2f}"),
        checks=checks, metrics=metrics, tables=[performance["table"]] + ([leaks_table] if leaks_table.rows else []),
    )
    result.charts = [_chart(ctx, performance)]
    return result


def out_of_sample(ctx: VerifyContext, prices: pd.DataFrame, fits: bool, checks: list[Check]) -> dict[str, Any]:
    """Return the OOS record: Sharpe per fold (purged walk-forward / CPCV when the strategy fits), DSR, PBO."""
    strategy = ctx.target.build()
    n = len(prices)
    start = min(strategy.lookback, n - 1)
    folds = int(ctx.option("folds", 6))
    horizon = int(getattr(strategy, "label_horizon", 1))
    embargo = int(ctx.option("embargo", max(horizon, n // 100)))
    fold_rows: list[list[Any]] = []
    fold_sharpe: list[float] = []
    oos = pd.Series(np.nan, index=prices.index)
    purge_violations = 0
    splits = 0
    if fits:
        groups, test_groups = int(ctx.option("cpcv_groups", 6)), int(ctx.option("cpcv_test_groups", 2))
        forward = list(walk_forward_splits(n, folds, horizon, embargo, start))
        combinatorial = list(cpcv_splits(n, groups, test_groups, horizon, embargo, start))
        # Every split is fitted on its own: the independent pieces, run where ctx.workers says.
        fitted = run_tasks(split_returns, (ctx.target, prices),
                           [(train, test, True) for train, test in forward]
                           + [(train, test, False) for _, train, test in combinatorial], ctx.workers)
        for k, ((train, test), returns) in enumerate(zip(forward, fitted, strict=False), start=1):
            splits += 1
            purge_violations += _purge_violation(train, test, n, horizon)
            oos.iloc[test] = returns
            fold_sharpe.append(sharpe(returns))
            fold_rows.append([f"fold {k}", str(prices.index[test[0]].date()), str(prices.index[test[-1]].date()),
                              len(train), len(test), fold_sharpe[-1]])
        cpcv = []
        for (chosen, train, test), returns in zip(combinatorial, fitted[len(forward):], strict=True):
            splits += 1
            purge_violations += _purge_violation(train, test, n, horizon)
            cpcv.append(sharpe(returns))
            fold_rows.append([f"CPCV test groups {chosen}", str(prices.index[test[0]].date()),
                              str(prices.index[test[-1]].date()), len(train), len(test), cpcv[-1]])
        checks.append(Check("purged splits: no training label interval meets a test interval",
                            purge_violations == 0,
                            f"{splits} splits (walk-forward {folds - 1}, CPCV C({groups},{test_groups})), label "
                            f"horizon {horizon}, embargo {embargo} rows: {purge_violations} violations"))
    else:
        weights = check_frame(strategy.target_weights(prices), prices)
        daily = portfolio_returns(weights, prices).to_numpy()
        edges = np.linspace(start, n, folds + 1, dtype=np.int64)
        for k in range(folds):
            lo, hi = int(edges[k]), int(edges[k + 1])
            fold_sharpe.append(sharpe(daily[lo + 1:hi]))
            fold_rows.append([f"fold {k + 1}", str(prices.index[lo].date()), str(prices.index[hi - 1].date()),
                              0, hi - lo, fold_sharpe[-1]])
        oos.iloc[start + 1:] = daily[start + 1:]
        checks.append(Check("purged walk-forward", None,
                            "the strategy has no fit: every row is out of sample, folds are consecutive slices"))

    grid = config_grid(ctx.target, strategy, ctx.option("grid", None))
    base = config_dict(strategy.config)
    matrix = np.column_stack([returns[start + 1:] for returns in
                              run_tasks(config_returns, (ctx.target, base, prices), grid, ctx.workers)])
    trials = max(len(grid), int(ctx.option("trials", 0)))
    trial_sharpes = np.array([sharpe(matrix[:, j]) for j in range(matrix.shape[1])]) / math.sqrt(TRADING_DAYS)
    chosen_returns = oos.to_numpy()[start + 1:] if fits else matrix[:, 0]
    dsr = deflated_sharpe(chosen_returns, trial_sharpes, trials)
    pbo = probability_of_overfitting(matrix, int(ctx.option("cscv_blocks", 16)))
    checks.append(Check("deflated Sharpe ratio", None,
                        f"DSR {dsr['dsr']:.3f} (P[true Sharpe > 0] after {dsr['trials']} configurations; annual "
                        f"Sharpe {dsr['sr']:.2f} vs {dsr['sr0']:.2f} expected from the best of unskilled trials)"))
    checks.append(Check("probability of backtest overfitting (CSCV)", None,
                        f"PBO {pbo['pbo']:.2f} over {pbo['configs']} configurations, {pbo['combinations']} "
                        f"in/out-of-sample splits"))
    table = Table("Out-of-sample Sharpe per fold", ["fold", "from", "to", "train rows", "test rows", "Sharpe"],
                  fold_rows)
    return {
        "metrics": {"fold_sharpe": fold_sharpe, "folds": folds, "embargo": embargo, "label_horizon": horizon,
                    "purge_violations": purge_violations, "dsr": dsr,
                    "pbo": {k: v for k, v in pbo.items() if k != "logits"},
                    "configurations": grid, "overall_oos_sharpe": sharpe(chosen_returns)},
        "table": table, "oos": oos, "logits": pbo["logits"], "prices_index": prices.index,
    }


def _purge_violation(train: np.ndarray, test: np.ndarray, n: int, horizon: int) -> int:
    try:
        assert_purged(train, test, n, horizon)
    except LookAheadInSplit:
        return 1
    return 0


def _fitted_test_returns(target: StrategyTarget, prices: pd.DataFrame, train: np.ndarray, test: np.ndarray,
                         contiguous: bool) -> np.ndarray:
    """Fit a fresh strategy on the training rows, return its daily returns over the test rows.

    A contiguous training set is passed as its rows; a combinatorial one as the whole index with every
    row outside it blanked (NaN), so that no return is computed across a removed stretch.
    """
    model = target.build()
    if contiguous:
        model.fit(prices.iloc[train[0]:train[-1] + 1])
    else:
        blanked = prices.copy()
        outside = np.ones(len(prices), dtype=bool)
        outside[train] = False
        blanked.iloc[outside] = np.nan
        model.fit(blanked)
    end = int(test[-1]) + 1
    part = prices.iloc[:end]
    weights = check_frame(model.target_weights(part), part)
    daily = portfolio_returns(weights, part).to_numpy()
    return daily[test[test > 0]]


def split_returns(shared: tuple[StrategyTarget, pd.DataFrame], split: tuple[np.ndarray, np.ndarray, bool]
                  ) -> np.ndarray:
    """One split's test returns (a piece `run_tasks` runs): shared = (target, prices), split = (train, test,
    contiguous)."""
    target, prices = shared
    train, test, contiguous = split
    return _fitted_test_returns(target, prices, train, test, contiguous)


def config_returns(shared: tuple[StrategyTarget, dict[str, Any], pd.DataFrame], config: dict[str, Any]) -> np.ndarray:
    """One configuration's daily returns over the whole history (a piece `run_tasks` runs): shared = (target,
    the base config, prices)."""
    target, base, prices = shared
    return _config_returns(target, config, base, prices)


def _config_returns(target: StrategyTarget, config: dict[str, Any], base: dict[str, Any],
                    prices: pd.DataFrame) -> np.ndarray:
    strategy = _build(target, config, base)
    if has_fit(strategy):
        strategy.fit(prices.iloc[: max(len(prices) // 3, strategy.lookback + 1)])
    return portfolio_returns(check_frame(strategy.target_weights(prices), prices), prices).to_numpy()


def _first(leaks: list[Leak]) -> str:
    if not leaks:
        return ""
    lk = leaks[0]
    return f"; first at {lk.date} ({lk.symbol}, difference {lk.difference:.3g}{', ' + lk.detail if lk.detail else ''})"


def _fmt_list(values: list[float]) -> str:
    return "[" + ", ".join("n/a" if not math.isfinite(v) else f"{v:.2f}" for v in values) + "]"


def _chart(ctx: VerifyContext, performance: dict[str, Any]) -> str:
    from qmp_lab.verify.report import pyplot

    plt = pyplot()
    name = f"{NAME}.png"
    figure, axes = plt.subplots(3, 1, figsize=(10, 9))
    oos: pd.Series = performance["oos"]
    equity = (1.0 + oos.fillna(0.0)).cumprod()
    axes[0].plot(equity.index, equity.values, color="tab:blue")
    axes[0].set_title("out-of-sample equity (growth of 1)")
    sharpes = performance["metrics"]["fold_sharpe"]
    axes[1].bar(range(1, len(sharpes) + 1), [0.0 if not math.isfinite(s) else s for s in sharpes],
                color=["tab:green" if math.isfinite(s) and s > 0 else "tab:red" for s in sharpes])
    axes[1].axhline(0.0, color="black", linewidth=0.8)
    axes[1].set_title("out-of-sample Sharpe per fold")
    axes[1].set_xlabel("fold")
    logits = performance["logits"]
    if logits:
        axes[2].hist(logits, bins=40, color="tab:gray")
        axes[2].axvline(0.0, color="tab:red")
    axes[2].set_title(f"CSCV logits of the in-sample best (PBO = share ≤ 0: "
                      f"{performance['metrics']['pbo']['pbo']:.2f})")
    figure.tight_layout()
    figure.savefig(ctx.out_dir / name, dpi=100)
    plt.close(figure)
    return name


__all__ = [
    "NAME", "PERTURBATIONS", "TOLERANCE", "Leak", "LookAheadInSplit", "assert_purged", "config_grid", "cpcv_splits",
    "deflated_sharpe", "gap_end_rows", "label_overlaps_test", "perturb_after", "perturbation_check",
    "planted_gaps", "prefix_sample_check", "probability_of_overfitting", "run", "sweep_cuts", "truncation_check",
    "walk_forward_splits", "weights_array",
]
